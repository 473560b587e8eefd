"""tools/compare_runs.py: where two runs of one command part (losses, then weights)."""

import pathlib
import sys

import keras
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import compare_runs  # noqa: E402


def _run(folder: pathlib.Path, losses, nudge: float = 0.0):
    """A model directory as mgcam-train leaves it: a checkpoint of the network and its
    optimizer (the same object paths), and the total loss in TensorBoard."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                            keras.layers.BatchNormalization()])
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(net.trainable_variables)
    net.layers[0].kernel.assign_add(tf.fill([3, 2], nudge))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=net, optimizer=optimizer),
                               str(folder / "checkpoints"), max_to_keep=1).save()
    writer = tf.summary.create_file_writer(str(folder / "logs"))
    with writer.as_default():
        for step, loss in enumerate(losses, 1):
            tf.summary.scalar("loss/total", loss, step=step)
    writer.close()


def test_same_runs_agree_and_a_nudged_run_is_found(tmp_path, capsys):
    _run(tmp_path / "a", [3.0, 2.5, 2.0])
    _run(tmp_path / "b", [3.0, 2.5, 2.0])
    _run(tmp_path / "c", [3.0, 2.25, 2.0], nudge=0.125)
    assert compare_runs.first_loss_difference(str(tmp_path / "a"), str(tmp_path / "b")) is None
    assert compare_runs.first_loss_difference(
        str(tmp_path / "a"), str(tmp_path / "c")) == (2, 2.5, 2.25)
    same = compare_runs.weight_differences(str(tmp_path / "a"), str(tmp_path / "b"))
    # Dense kernel and bias, BatchNorm's gamma, beta and both moving statistics.
    assert len(same) == 6 and not any(same.values())
    nudged = compare_runs.weight_differences(str(tmp_path / "a"), str(tmp_path / "c"))
    assert sorted(nudged.values())[-1] == 0.125 and sum(v > 0 for v in nudged.values()) == 1
    assert compare_runs.seconds_per_step(str(tmp_path / "a")) >= 0.0
    assert compare_runs.seconds_per_step(str(tmp_path / "empty")) is None
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "first differs at step 2: 2.5 against 2.25" in out
    assert "1 of 6 variables differ; largest absolute difference 0.125" in out


def test_a_folder_without_checkpoint_is_one_line(tmp_path, capsys):
    _run(tmp_path / "a", [1.0])
    (tmp_path / "empty").mkdir()
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'empty'}: no checkpoint in {tmp_path / 'empty'}/checkpoints"]
