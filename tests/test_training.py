"""mgcam_tf.training: checkpoints, kill -9 and resume, NaN, model-dir checks, TensorBoard."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf import training
from mgcam_tf.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "train_steps.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_script(*args, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def report_of(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kill_9_then_resume_keeps_step_and_weights(tmp_path):
    model_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(model_dir), "200"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt_dir = model_dir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not list(ckpt_dir.glob("ckpt-4.index")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    assert latest is not None, "no checkpoint was written before the kill"
    step = int(latest.rsplit("-", 1)[1])
    assert step >= 4 and step % 2 == 0
    saved_kernel = tf.train.load_checkpoint(latest).get_tensor(
        "model/stem_conv/_kernel/.ATTRIBUTES/VARIABLE_VALUE")

    report = report_of(run_script(model_dir, step + 4))
    assert report["start_step"] == step
    np.testing.assert_allclose(report["start_kernel_sum"], float(np.sum(saved_kernel)),
                               rtol=1e-6)
    assert report["end_step"] == step + 4
    # A finished run started again does nothing more.
    again = report_of(run_script(model_dir, step + 4))
    assert "start_step" not in again and again["end_step"] == step + 4


def test_init_from_copies_weights_but_starts_a_fresh_schedule(tmp_path):
    stage1 = tmp_path / "stage1"
    run_script(stage1, 6)
    stage1_kernel = tf.train.load_checkpoint(str(stage1 / "checkpoints")).get_tensor(
        "model/stem_conv/_kernel/.ATTRIBUTES/VARIABLE_VALUE")
    # Stage 2 is shorter than the 6 steps stage 1 ran: it must still train them all.
    report = report_of(run_script(tmp_path / "stage2", 4, f"init={stage1}"))
    assert report["start_step"] == 0 and report["end_step"] == 4
    assert report["start_momentum_abs_sum"] == 0.0
    np.testing.assert_allclose(report["start_kernel_sum"], float(np.sum(stage1_kernel)),
                               rtol=1e-6)


def test_tensorboard_logs_losses_learning_rate_accuracies_and_attention_images(tmp_path):
    run_script(tmp_path / "run", 2)
    tags = set()
    for event_file in (tmp_path / "run" / "logs").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    expected = {"loss", "identity_loss", "triplet_loss", "attention_loss", "learning_rate",
                "accuracy_full", "accuracy_body", "accuracy_bgd", "attention_vs_mask"}
    assert expected <= tags
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["num_ids"] == 3


def test_nan_loss_stops_with_a_clear_error_and_keeps_no_bad_checkpoint(tmp_path):
    proc = run_script(tmp_path / "run", 4, "nan", check=False)
    assert proc.returncode != 0
    assert "TrainingError" in proc.stderr and "loss became nan" in proc.stderr
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is None


def test_model_dir_of_another_model_is_refused(tmp_path):
    training.prepare_model_dir(tmp_path, training.ModelConfig(num_ids=3), {})
    with pytest.raises(ConfigError, match="num_ids"):
        training.prepare_model_dir(tmp_path, training.ModelConfig(num_ids=4), {})
    with pytest.raises(ConfigError, match="no checkpoint"):
        training.load_trained_model(tmp_path)
    with pytest.raises(ConfigError, match="not a model directory"):
        training.load_trained_model(tmp_path / "elsewhere")


def test_run_config_must_tile_into_checkpoint_intervals():
    with pytest.raises(ConfigError, match="multiple of checkpoint_every"):
        training.RunConfig(total_steps=10, checkpoint_every=3)


def test_json_is_written_atomically(tmp_path):
    target = tmp_path / "config.json"
    training.write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        training.write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("architecture", ["mgcam", "mscan"])
def test_checkpoint_holds_every_weight(tmp_path, architecture):
    config = training.ModelConfig(num_ids=3, architecture=architecture)
    saved = config.build()
    rng = np.random.RandomState(5)
    saved.set_weights([rng.randn(*w.shape).astype(w.dtype) for w in saved.get_weights()])
    training.prepare_model_dir(tmp_path, config, {})
    training.checkpoint_manager(tmp_path, saved).save()
    restored = training.load_trained_model(tmp_path)
    assert len(restored.weights) == len(saved.weights)
    for a, b in zip(saved.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
