"""mgcam-train end to end: a few real steps on the built-in data, flagfiles, bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

from mgcam_tf.training import precision


REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def mgcam_train(*args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args],
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines()
              if line.startswith(("error:", "FATAL Flags parsing error"))]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_every_flagfile_parses():
    flagfiles = sorted(str(p) for p in (REPO / "flags").glob("*.flags"))
    assert len(flagfiles) >= 9
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "parse_flagfiles.py"),
                           *flagfiles], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = dict(line.rsplit(" ", 1) if line.endswith(" ok") else (line, "failed")
                   for line in proc.stdout.splitlines())
    assert results == {f: "ok" for f in flagfiles}, proc.stdout


def test_trains_a_few_steps_on_the_builtin_data_and_reports_rank1_and_map(tmp_path):
    model_dir = tmp_path / "demo"
    proc = mgcam_train(f"--model_dir={model_dir}", "--synthetic_ids=12", "--batch_size=8",
                       "--total_steps=4", "--checkpoint_every=2", "--eval_batch_size=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 4 steps" in proc.stdout
    assert "Rank-1" in proc.stdout and "mAP" in proc.stdout
    assert (model_dir / "checkpoints" / "checkpoint").is_file()
    # No --mixed_precision: `auto`, what the hardware computes natively, is recorded.
    settings = json.loads((model_dir / "config.json").read_text())["settings"]
    assert settings["mixed_precision"] == precision.resolve_precision("auto")
    # The same command again resumes, finds the run finished, and only evaluates.
    again = mgcam_train(f"--model_dir={model_dir}", "--synthetic_ids=12", "--batch_size=8",
                        "--total_steps=4", "--checkpoint_every=2", "--evaluate=false")
    assert again.returncode == 0 and "trained 4 steps" in again.stdout


def test_unknown_flag_value_is_one_line(tmp_path):
    proc = mgcam_train(f"--model_dir={tmp_path}", "--input_mode=depth")
    assert_one_line_error(proc, "--input_mode=depth")


def test_data_dir_without_images_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = mgcam_train(f"--model_dir={tmp_path / 'run'}", f"--data_dir={empty}")
    assert_one_line_error(proc, "error:", str(empty))


def test_missing_mask_folder_is_one_line(tmp_path, shared_data):
    data = tmp_path / "market"
    shutil.copytree(shared_data / "market1501_mini", data)
    shutil.rmtree(data / "bounding_box_train_seg")
    proc = mgcam_train(f"--model_dir={tmp_path / 'run'}", f"--data_dir={data}")
    assert_one_line_error(proc, "error:", "mask")


def test_stage2_without_a_stage1_model_is_one_line(tmp_path):
    proc = mgcam_train(f"--model_dir={tmp_path / 'run'}", "--stage=2")
    assert_one_line_error(proc, "error:", "--init_from")


def test_corrupt_image_found_mid_training_is_one_line_naming_the_file(tmp_path, shared_data):
    data = tmp_path / "market"
    shutil.copytree(shared_data / "market1501_mini", data)
    bad = sorted((data / "bounding_box_train").glob("*.jpg"))[3]
    bad.write_bytes(bad.read_bytes()[:200])  # cut short: not decodable
    proc = mgcam_train(f"--model_dir={tmp_path / 'run'}", f"--data_dir={data}",
                       "--batch_size=8", "--total_steps=8", "--checkpoint_every=8")
    assert_one_line_error(proc, "error:", bad.name)
