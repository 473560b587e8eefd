"""mgcam_tf.training: checkpoints, kill -9 and resume, NaN, model-dir checks, TensorBoard."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling import models

from mgcam_tf.training import run_dir
from mgcam_tf.errors import ConfigError
from mgcam_tf import atomic_files
from harness import ENV, REPO

SCRIPT = REPO / "tests" / "scripts" / "train_steps.py"


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
    expected = {"loss/total", "loss/identity", "loss/triplet", "loss/attention", "lr",
                "accuracy/full", "accuracy/body", "accuracy/bgd", "attention/crop|mask|phi_plus"}
    assert expected <= tags
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["config"]["num_ids"] == 3


def test_nan_loss_stops_with_a_clear_error_and_keeps_no_bad_checkpoint(tmp_path):
    proc = run_script(tmp_path / "run", 4, "nan", check=False)
    assert proc.returncode != 0
    assert "TrainingError" in proc.stderr and "loss became nan" in proc.stderr
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is None


def test_model_dir_of_another_model_is_refused(tmp_path):
    run_dir.prepare_model_dir(tmp_path, models.model_config(3), {})
    with pytest.raises(ConfigError, match="num_ids"):
        run_dir.prepare_model_dir(tmp_path, models.model_config(4), {})
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_dir.load_trained_model(tmp_path)
    with pytest.raises(ConfigError, match="not a model directory"):
        run_dir.load_trained_model(tmp_path / "elsewhere")


def test_run_config_must_tile_into_checkpoint_intervals():
    with pytest.raises(ConfigError, match="multiple of checkpoint_every"):
        run_dir.RunConfig(total_steps=10, checkpoint_every=3)


def test_json_is_written_atomically(tmp_path):
    target = tmp_path / "config.json"
    atomic_files.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_files.write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


@pytest.mark.parametrize("architecture", ["mgcam", "mscan"])
def test_checkpoint_holds_every_weight(tmp_path, architecture):
    config = models.model_config(3, architecture)
    saved = models.model_from_config(config)
    rng = np.random.RandomState(5)
    saved.set_weights([rng.randn(*w.shape).astype(w.dtype) for w in saved.get_weights()])
    run_dir.prepare_model_dir(tmp_path, config, {})
    run_dir.checkpoint_manager(tmp_path, saved).save()
    restored = run_dir.load_trained_model(tmp_path)
    assert len(restored.weights) == len(saved.weights)
    for a, b in zip(saved.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_bnneck_run_evaluates_with_either_feature(tmp_path):
    """load_trained_model(retrieval_feature=) (mgcam-eval --retrieval_feature): the same
    weights, h or its BNNeck-normalised copy; a model without BNNeck refuses bnneck."""
    from mgcam_tf.errors import ConfigError

    config = models.model_config(3, bnneck=True)
    saved = models.model_from_config(config)
    rng = np.random.RandomState(6)
    saved.set_weights([rng.randn(*w.shape).astype(w.dtype) for w in saved.get_weights()])
    run_dir.prepare_model_dir(tmp_path, config, {})
    run_dir.checkpoint_manager(tmp_path, saved).save()
    rgbm = rng.randn(2, 160, 64, 4).astype("float32")
    h = run_dir.load_trained_model(tmp_path).embed(rgbm).numpy()
    neck = run_dir.load_trained_model(tmp_path, retrieval_feature="bnneck")
    np.testing.assert_allclose(neck.embed(rgbm).numpy(),
                               neck.full_stream.neck(h, training=False).numpy(), rtol=1e-4,
                               atol=1e-5)
    plain = tmp_path / "plain"
    run_dir.prepare_model_dir(plain, models.model_config(3), {})
    run_dir.checkpoint_manager(plain, models.model_from_config(models.model_config(3))).save()
    with pytest.raises(ConfigError, match="needs bnneck"):
        run_dir.load_trained_model(plain, retrieval_feature="bnneck")


def test_periodic_evaluation_leaves_training_unchanged(tmp_path):
    script = REPO / "tests" / "scripts" / "eval_callback_run.py"
    # oneDNN's CPU kernels do not sum in a fixed order, so one seed trained twice parts
    # after a step or two at full size (docs/RESULTS.md); TensorFlow's own kernels do.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    for mode in ("without", "with"):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path), mode], env=env,
                              capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "with" / "eval_history.json").read_text())
    assert [p["step"] for p in history["points"]] == [0, 2, 4]
    assert all(0.0 <= p["rank1"] <= 1.0 and 0.0 <= p["mAP"] <= 1.0 for p in history["points"])
    a = np.load(tmp_path / "without" / "weights.npz")
    b = np.load(tmp_path / "with" / "weights.npz")
    assert len(a.files) == len(b.files) > 100
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _tiny_run(model_dir, total_steps, checkpoint_every, base_lr=0.01):
    from mgcam_tf.modeling.objective import MGCAMObjective
    from mgcam_tf.training import solver, trainer

    rng = np.random.RandomState(0)
    x = {"rgbm": rng.randn(4, 160, 64, 4).astype("float32")}
    y = {"pid": np.array([0, 1, 2, 0], "int32"),
         "attention_target": rng.rand(4, 40, 16, 1).astype("float32")}
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    return trainer.train(model_dir, dataset, models.model_config(3),
                         solver.SolverConfig(base_lr=base_lr), MGCAMObjective(),
                         run_dir.RunConfig(total_steps=total_steps,
                                           checkpoint_every=checkpoint_every,
                                           log_every=1, image_every=100))


def test_resume_with_another_checkpoint_interval_trains_exactly_to_the_total(tmp_path):
    _tiny_run(tmp_path, 2, 2)
    resumed = _tiny_run(tmp_path, 3, 3)
    assert int(resumed.optimizer.iterations.numpy()) == 3
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")
    again = _tiny_run(tmp_path, 6, 3)
    assert int(again.optimizer.iterations.numpy()) == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.index")) == [
        "ckpt-2.index", "ckpt-3.index", "ckpt-6.index"]


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    from mgcam_tf.errors import TrainingError
    from mgcam_tf.training import solver

    _tiny_run(tmp_path, 2, 2)
    good = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    # A learning rate that turns the weights to inf/nan in one step, past the
    # solver's own finiteness check.
    monkeypatch.setattr(solver.SolverConfig, "__post_init__", lambda self: None)
    with pytest.raises(TrainingError, match="not finite|became"):
        _tiny_run(tmp_path, 4, 2, base_lr=float("inf"))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == good
    restored = run_dir.load_trained_model(tmp_path)
    assert all(np.all(np.isfinite(w)) for w in restored.get_weights())


def test_one_trainer_per_model_dir_and_stale_locks_are_taken_over(tmp_path, caplog):
    from mgcam_tf.errors import ConfigError

    with run_dir.trainer_lock(tmp_path):
        with pytest.raises(ConfigError, match="in use by another trainer"):
            with run_dir.trainer_lock(tmp_path):
                pass
    assert not (tmp_path / run_dir.LOCK_FILE).exists()
    # A lock of a process that is gone (kill -9) is taken over with a warning.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / run_dir.LOCK_FILE).write_text(json.dumps(
        {"pid": dead.pid, "host": __import__("socket").gethostname()}))
    with caplog.at_level("WARNING", logger="mgcam_tf"):
        with run_dir.trainer_lock(tmp_path):
            pass
    assert "no longer running" in caplog.text


def test_init_from_another_architecture_is_refused(tmp_path):
    from mgcam_tf.errors import ConfigError

    config = models.model_config(3, "mscan")
    saved = models.model_from_config(config)
    run_dir.prepare_model_dir(tmp_path / "stage1", config, {})
    run_dir.checkpoint_manager(tmp_path / "stage1", saved).save()
    with pytest.raises(ConfigError, match="holds another model"):
        run_dir.initialise_from(models.model_from_config(models.model_config(3)),
                                tmp_path / "stage1")


def test_restores_are_complete_or_fail(tmp_path):
    from mgcam_tf.errors import ConfigError

    # A checkpoint of the baseline under a directory that claims MGCAM (config.json
    # lost and rewritten): 56 of 117 variables would restore; it must fail instead.
    saved = models.model_from_config(models.model_config(3, "mscan"))
    run_dir.prepare_model_dir(tmp_path, models.model_config(3), {})
    run_dir.checkpoint_manager(tmp_path, saved).save()
    with pytest.raises(ConfigError, match="does not hold every weight"):
        run_dir.load_trained_model(tmp_path)
