"""mgcam-train end to end: a few real steps on the built-in data, flagfiles, bad input."""

import json
import shutil
import subprocess
import sys

from harness import ENV, REPO, assert_one_line_error, run_tool
from mgcam_tf.training import precision




def mgcam_train(*args, timeout=600):
    return run_tool("train", *args, timeout=timeout)


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
    recorded = json.loads((model_dir / "config.json").read_text())
    assert set(recorded) == {"model", "experiment"}       # no progress, dry_run, verbose
    assert recorded["experiment"]["runtime"]["mixed_precision"] == \
        precision.resolve_precision("auto")
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


def test_all_recipe_options_train_a_few_steps_and_the_config_trains_again(tmp_path):
    """The end-to-end run of issue 22: every recipe option on at once, a few real steps;
    then `--config=RUN/config.json` trains the same experiment into a new folder."""
    import numpy as np
    import tensorflow as tf

    model_dir = tmp_path / "recipe"
    options = ["--sampler=pk", "--pk_k=2", "--optimizer=adamw", "--base_lr=3.5e-4",
               "--lr_schedule=cosine", "--warmup_steps=2", "--random_erasing=0.5",
               "--erasing_scope=image_and_mask", "--pad_crop=4", "--color_jitter=0.3",
               "--hue_jitter=0.1", "--grayscale=0.2", "--label_smoothing=0.1",
               "--batch_hard_weight=1", "--bnneck", "--ibn_stages=stage1,stage2",
               "--retrieval_feature=bnneck", "--dropout=0", "--centre_weight=0.0005"]
    proc = mgcam_train(f"--model_dir={model_dir}", "--synthetic_ids=12", "--batch_size=8",
                       "--total_steps=4", "--checkpoint_every=2", "--eval_batch_size=64",
                       *options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 4 steps" in proc.stdout and "Rank-1" in proc.stdout
    experiment = json.loads((model_dir / "config.json").read_text())["experiment"]
    assert experiment["model"]["ibn_stages"] == ["stage1", "stage2"]
    assert experiment["augmentation"]["erasing_scope"] == "image_and_mask"
    assert experiment["optimizer"]["optimizer"] == "adamw"
    # The centre loss's centres are training state: checkpointed (a resume needs them).
    saved = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    centres = [k for k in saved.get_variable_to_shape_map() if k.startswith("centres/")]
    assert centres and np.any(saved.get_tensor(centres[0]))
    again = mgcam_train(f"--config={model_dir / 'config.json'}",
                        f"--model_dir={tmp_path / 'again'}", "--evaluate=false")
    assert again.returncode == 0, again.stderr[-3000:]
    experiment["evaluation"]["evaluate"] = False       # the one field the rerun overrode
    assert json.loads((tmp_path / "again" / "config.json").read_text())["experiment"] == \
        experiment


def test_out_of_range_recipe_settings_are_one_line(tmp_path):
    for flag, fragment in [("--random_erasing=1.5", "--random_erasing"),
                           ("--label_smoothing=-0.1", "--label_smoothing"),
                           ("--batch_hard_margin=-1", "--batch_hard_margin"),
                           ("--warmup_steps=400", "--warmup_steps"),
                           ("--ibn_stages=stage7", "--ibn_stages"),
                           (f"--extra_train_dirs={tmp_path}", "listed twice")]:
        proc = mgcam_train(f"--model_dir={tmp_path / 'run'}", f"--data_dir={tmp_path}",
                           "--total_steps=300", "--checkpoint_every=50", "--dry_run", flag)
        assert_one_line_error(proc, fragment)


def test_a_misspelt_key_in_a_config_file_is_one_line(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"experiment": {"data": {"batchsize": 8}}}))
    proc = mgcam_train(f"--config={config}", f"--model_dir={tmp_path / 'run'}", "--dry_run")
    assert_one_line_error(proc, "batchsize", "batch_size")
