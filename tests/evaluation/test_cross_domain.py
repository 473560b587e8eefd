"""Cross-domain evaluation: test-only target sets, a separate training set, several targets."""

import json
import pathlib
import shutil

import pytest

from mgcam_tf.data import layouts
from mgcam_tf.errors import DataError
from harness import REPO, run_tool

TEST_FOLDERS = ("query", "query_seg", "bounding_box_test", "bounding_box_test_seg")


def run_cli(*args):
    return run_tool("evaluate", *args, "--noprogress", cwd=REPO)


def make_test_only_copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """query/ and bounding_box_test/ (with their masks) of `source`: no training split."""
    for folder in TEST_FOLDERS:
        shutil.copytree(source / folder, target / folder)
    return target


@pytest.fixture(scope="module")
def targets(shared_data, tmp_path_factory):
    import tensorflow as tf

    from mgcam_tf.modeling import models
    from mgcam_tf.training import run_dir

    root = tmp_path_factory.mktemp("cross_domain")
    sets = {name: make_test_only_copy(shared_data / name, root / f"{name}_test")
            for name in ("market1501_mini", "cuhk03_pair1")}
    config = models.model_config(16, "mscan")
    model = models.model_from_config(config)
    model(tf.zeros([1, 160, 64, 4]), training=False)
    run_dir.prepare_model_dir(root / "run", config, {})
    run_dir.checkpoint_manager(root / "run", model).save()
    return {"root": root, "sets": sets, "model_dir": root / "run",
            "train": shared_data / "market1501_mini"}


def test_a_test_only_folder_reads_with_an_empty_training_split(targets):
    data = layouts.load_dataset(str(targets["sets"]["cuhk03_pair1"]))
    assert not data.has_train and data.num_train_ids == 0 and len(data.train) == 0
    assert len(data.query) == 200 and len(data.gallery) == 775
    with pytest.raises(DataError, match="no training split"):
        data.require_train("training")


def test_several_targets_one_table_with_learned_metric_and_reranking(targets):
    sets = targets["sets"]
    out_json = targets["root"] / "cross.json"
    proc = run_cli(f"--model_dir={targets['model_dir']}",
                   f"--data_dir={sets['market1501_mini']},{sets['cuhk03_pair1']}",
                   f"--train_data_dir={targets['train']}", "--metric=kissme+rerank",
                   "--batch_size=64", f"--json_out={out_json}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    assert "data set" in table and "market1501_mini_test" in table and "cuhk03_pair1_test" in table
    assert table.count("| Rank-1 ") == 1  # one table
    result = json.loads(out_json.read_text())
    assert set(result["targets"]) == {"market1501_mini_test", "cuhk03_pair1_test"}
    assert result["targets"]["cuhk03_pair1_test"]["num_query"] == 200
    assert result["settings"]["train_data_dir"] == str(targets["train"])
    for target in result["targets"].values():
        assert 0.0 <= target["mAP"] <= 1.0


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_repeated_data_dir_flags_with_plain_metrics(targets, metric):
    sets = targets["sets"]
    proc = run_cli(f"--model_dir={targets['model_dir']}", f"--data_dir={sets['market1501_mini']}",
                   f"--data_dir={sets['cuhk03_pair1']}", f"--metric={metric}", "--batch_size=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "market1501_mini_test" in proc.stdout and "cuhk03_pair1_test" in proc.stdout


def test_learned_metric_on_a_test_only_set_needs_train_data_dir(targets):
    proc = run_cli(f"--model_dir={targets['model_dir']}",
                   f"--data_dir={targets['sets']['cuhk03_pair1']}", "--metric=xqda",
                   "--batch_size=64")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no training split" in errors[0] and "--train_data_dir" in errors[0]
