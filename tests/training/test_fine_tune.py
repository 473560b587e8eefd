"""Fine-tuning a preset on other identities: --init_from takes a preset's name, every
weight but the identity classifiers is restored (the classifiers start fresh, one
warning names them), another architecture or input mode is still refused; and the
README's fine-tuning command runs as written on the shared data."""

import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import mgcam_tf
from mgcam_tf import presets
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling import models
from mgcam_tf.training import run_dir
from harness import REPO

NAME = "mgcam_siamese_cuhk03"
CLASSIFIERS = {f"{s}_stream/classifier/{w}" for s in ("full", "body", "bgd")
               for w in ("kernel", "bias")}


def by_name(model) -> dict:
    return {v.path.split("/", 1)[1]: v.numpy() for v in model.weights}


@pytest.fixture(scope="module")
def preset_weights():
    return by_name(mgcam_tf.load_preset(NAME))


def test_a_preset_name_resolves_to_its_folder_and_a_folder_wins(tmp_path, monkeypatch):
    assert presets.model_dir_or_preset(NAME) == presets.preset_dir(NAME)
    assert presets.model_dir_or_preset("runs/nothing") == pathlib.Path("runs/nothing")
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    assert presets.model_dir_or_preset(NAME) == pathlib.Path(NAME)


def test_other_identities_restore_everything_but_the_classifiers(preset_weights, caplog):
    model = models.model_from_config(models.model_config(12),
                                     mixed_precision="mixed_bfloat16")
    untrained = by_name(model)
    with caplog.at_level(logging.WARNING, logger="mgcam_tf"):
        run_dir.initialise_from(model, presets.preset_dir(NAME))
    restored = by_name(model)
    assert set(restored) == set(preset_weights)
    for name, value in restored.items():
        if name in CLASSIFIERS:
            # Fresh: this run's shape, its own initial values.
            assert value.shape[-1] == 12 and preset_weights[name].shape[-1] == 643, name
            np.testing.assert_array_equal(value, untrained[name])
        else:  # BatchNorm statistics included
            np.testing.assert_array_equal(value, preset_weights[name], err_msg=name)
    (line,) = [r.getMessage() for r in caplog.records if "--init_from" in r.getMessage()]
    for fragment in ("full_stream/classifier", "body_stream/classifier",
                     "bgd_stream/classifier", "643 identities", "this run's data 12"):
        assert fragment in line, line


@pytest.mark.parametrize("other", [dict(input_mode="rgb"), dict(architecture="mscan"),
                                   dict(feature_dim=64)])
def test_another_network_is_still_refused(other):
    model = models.model_from_config(models.model_config(12, **other))
    with pytest.raises(ConfigError, match="holds another model"):
        run_dir.initialise_from(model, presets.preset_dir(NAME))


def readme_commands(section: str) -> list[str]:
    """The shell lines of a README section's code blocks, continuation lines joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        lines += [c.strip() for c in block.replace("\\\n", " ").splitlines()
                  if c.strip() and not c.strip().startswith("#")]
    return lines


def test_readme_fine_tuning_command_runs_as_written(shared_data, preset_weights, tmp_path):
    commands = readme_commands("Fine-tune on your own cameras")
    train = next(c for c in commands if c.startswith("mgcam-train") and "market1501_mini" in c)
    args = train.split()[1:]
    assert f"--init_from={NAME}" in args or "--flagfile=flags/finetune.flags" in args
    # The README's command, from the checkout; one step at a vanishing learning
    # rate in a temporary folder, so that the weights it saves are the ones it
    # started from.
    model_dir = tmp_path / "finetuned"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mgcam_tf.cli.train", *args, f"--model_dir={model_dir}",
         "--total_steps=1", "--checkpoint_every=1", "--base_lr=1e-30", "--noevaluate",
         "--noprogress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "start fresh" in line]
    assert len(warnings) == 1 and "643 identities" in warnings[0], proc.stderr[-3000:]
    trained = by_name(run_dir.load_trained_model(model_dir))
    ids = mgcam_tf.load_dataset(
        str(shared_data / "market1501_mini")).train.pids.max() + 1
    for name, value in trained.items():
        if name in CLASSIFIERS:
            assert value.shape[-1] == ids, name
        elif "moving_" not in name:  # one training step moves BatchNorm's statistics
            np.testing.assert_allclose(value, preset_weights[name], rtol=0, atol=1e-12,
                                       err_msg=name)
