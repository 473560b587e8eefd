"""The experiment configuration: defaults, overrides, files, named experiments."""

import json

import pytest

from mgcam_tf.errors import ConfigError
from mgcam_tf.training import config, experiments


def test_field_names_are_unique_across_sections():
    names = config.all_fields()
    assert len(names) == len(set(names))


def test_every_named_experiment_builds_and_round_trips():
    for name in experiments.experiment_names():
        experiment = experiments.get_experiment(name)
        assert config.ExperimentConfig.from_dict(experiment.to_dict()) == experiment, name
        # A config.json holds exactly to_dict(): JSON and back gives the same experiment.
        again = config.ExperimentConfig.from_dict(json.loads(json.dumps(experiment.to_dict())))
        assert again == experiment, name


def test_the_paper_stages_are_the_official_solvers():
    one, two = experiments.get_experiment("paper_stage1"), experiments.get_experiment("paper_stage2")
    assert (one.schedule.total_steps, one.optimizer.base_lr, one.optimizer.lr_step) == \
        (75000, 0.01, 15000)
    assert (two.schedule.total_steps, two.optimizer.base_lr, two.optimizer.lr_step) == \
        (20000, 0.001, 10000)
    assert one.objective().siamese_weight == 0 and two.objective().siamese_weight == 0.01
    # The recipe's options are all off in the paper's experiments.
    assert not one.augmentation.changes_pixels and not one.model.bnneck
    assert one.losses.label_smoothing == 0 and one.losses.batch_hard_weight == 0


def _differences(a: dict, b: dict, prefix: str = "") -> set:
    keys = set(a) | set(b)
    out = set()
    for key in keys:
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out |= _differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            out.add(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("paper, sgd", [
    ("cuhk03_pair1_mgcam_rgbm", "cuhk03_pair1_recipe_sgd_mgcam_rgbm"),
    ("cuhk03_pair1_mgcam_siamese_rgbm", "cuhk03_pair1_recipe_sgd_siamese_rgbm")])
def test_the_sgd_recipe_is_the_paper_row_plus_smoothing_and_erasing(paper, sgd):
    """The SGD recipe keeps the paper's solver and budget: only its two options differ."""
    a = experiments.get_experiment(paper).to_dict()
    b = experiments.get_experiment(sgd)
    assert _differences(a, b.to_dict()) == {"losses.label_smoothing",
                                           "augmentation.random_erasing"}
    assert b.losses.label_smoothing == 0.1 and b.augmentation.random_erasing == 0.5
    assert b.augmentation.erasing_scope == "image"


def test_the_whole_recipe_on_sgd_is_the_paper_row_plus_steps_2_to_6():
    paper = experiments.get_experiment("cuhk03_pair1_mgcam_rgbm")
    whole = experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_mgcam_rgbm")
    recipe = experiments.get_experiment("cuhk03_pair1_recipe_mgcam_rgbm")
    assert whole.optimizer == paper.optimizer and whole.schedule == paper.schedule
    # Everything else is the whole recipe's.
    for section in ("data", "augmentation", "model", "losses"):
        assert getattr(whole, section) == getattr(recipe, section), section
    # Its Siamese stage: the paper's stage 2 with the same options and network.
    siamese = experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_siamese_rgbm")
    paper_siamese = experiments.get_experiment("cuhk03_pair1_mgcam_siamese_rgbm")
    assert siamese.optimizer == paper_siamese.optimizer
    assert siamese.schedule == paper_siamese.schedule
    assert siamese.model == whole.model and siamese.losses == whole.losses
    # And on MSCAN-body: the same recipe, only the architecture differs.
    mscan = experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_mscan_rgbm")
    assert _differences(whole.to_dict(), mscan.to_dict()) == {"model.architecture"}
    assert mscan.model.architecture == "mscan"
    # And at twice the budget: only the schedule's length, its step and the eval spacing.
    long = experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm")
    assert _differences(whole.to_dict(), long.to_dict()) == {
        "schedule.total_steps", "optimizer.lr_step", "evaluation.eval_every"}
    assert (long.schedule.total_steps, long.optimizer.lr_step) == (8000, 6000)


def test_the_sgd_ablation_adds_one_step_at_a_time_from_the_paper_row_to_the_whole():
    """At the 8,000-iteration budget, each step of the ablation on the paper's solver
    differs from the one before in exactly its own fields: from the paper's recipe at that
    budget, through the two options, to the whole recipe."""
    chain = ["cuhk03_pair1_mgcam_8k_rgbm",
             *(f"cuhk03_pair1_recipe_sgd_{n}_{step}"
               for n, (step, _) in enumerate(experiments.SGD_RECIPE_STEPS[:-1], 1)),
             "cuhk03_pair1_recipe_sgd_whole_8k_mgcam_rgbm"]
    assert chain[1:-1] == ["cuhk03_pair1_recipe_sgd_1_two_options",
                           "cuhk03_pair1_recipe_sgd_2_batch_hard",
                           "cuhk03_pair1_recipe_sgd_3_pad_crop",
                           "cuhk03_pair1_recipe_sgd_4_bnneck"]
    # (pk_k 4 and margin 0.3 are the defaults, so the P x K step changes two fields.)
    added = [{"losses.label_smoothing", "augmentation.random_erasing"},
             {"data.sampler", "losses.batch_hard_weight"},
             {"augmentation.pad_crop"},
             {"model.bnneck", "model.dropout"},
             {"model.ibn_stages"}]
    for before, after, fields in zip(chain, chain[1:], added):
        a = experiments.get_experiment(before).to_dict()
        b = experiments.get_experiment(after).to_dict()
        assert _differences(a, b) == fields, (before, after)
    # The budget is the only difference from the 4,000-iteration rows.
    for long, short in (("cuhk03_pair1_mgcam_8k_rgbm", "cuhk03_pair1_mgcam_rgbm"),
                        ("cuhk03_pair1_recipe_sgd_1_two_options",
                         "cuhk03_pair1_recipe_sgd_mgcam_rgbm")):
        assert _differences(experiments.get_experiment(short).to_dict(),
                            experiments.get_experiment(long).to_dict()) == {
            "schedule.total_steps", "optimizer.lr_step", "evaluation.eval_every"}
    # The Siamese stage on the 8,000-iteration run is the 4,000-iteration one's stage.
    assert experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm") == \
        experiments.get_experiment("cuhk03_pair1_recipe_sgd_whole_siamese_rgbm")
    # The preset's data on the dev split: only the extra (hand-drawn) box set differs.
    for stage in ("mgcam", "siamese"):
        plain = experiments.get_experiment(f"cuhk03_pair1_recipe_sgd_whole_8k_{stage}_rgbm")
        boxes = experiments.get_experiment(
            f"cuhk03_pair1_recipe_sgd_whole_8k_labeled_{stage}_rgbm")
        assert _differences(plain.to_dict(), boxes.to_dict()) == {"data.extra_train_dirs"}
        assert boxes.data.extra_train_dirs == (experiments.CUHK03_PAIR1_LABELED,)
        assert not boxes.data.train_on_test_ids


def test_overrides_replace_fields_and_are_checked():
    experiment = experiments.get_experiment("paper_stage1").override(
        {"batch_size": 64, "random_erasing": 0.5, "ibn_stages": "stage1,stage2"})
    assert experiment.data.batch_size == 64 and experiment.augmentation.random_erasing == 0.5
    assert experiment.model.ibn_stages == ("stage1", "stage2")
    with pytest.raises(ConfigError, match="random_erasing"):
        experiment.override({"random_erasing": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        experiment.override({"batchsize": 3})


def test_unknown_keys_in_a_file_are_named(tmp_path):
    good = experiments.get_experiment("demo").to_dict()
    for bad, fragment in [({**good, "trainer": {}}, "unknown section 'trainer'"),
                          ({**good, "data": {**good["data"], "batchsize": 8}},
                           "unknown key data.batchsize"),
                          ([1, 2], "JSON object")]:
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"experiment": bad}))
        with pytest.raises(ConfigError, match=fragment):
            experiments.experiment_from_run_file(path)


def test_first_format_config_json_still_reads(tmp_path):
    """config.json of the earlier format: a flat object of mgcam-train's flags."""
    settings = {"stage": "2", "total_steps": 1000, "base_lr": 0.001, "lr_step": 500,
                "batch_size": 64, "progress": False, "dry_run": False, "model_dir": "x",
                "mixed_precision": "mixed_bfloat16", "init_from": "runs/s1"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {}, "settings": settings}))
    experiment = experiments.experiment_from_run_file(path)
    assert experiment.schedule.stage == "2" and experiment.schedule.total_steps == 1000
    assert experiment.runtime.mixed_precision == "mixed_bfloat16"
    assert config.run_settings({"settings": settings})["total_steps"] == 1000
    assert config.run_settings({"experiment": experiment.to_dict()})["total_steps"] == 1000


def test_committed_records_still_read():
    """Every run record of docs/results (the first format) reads as an experiment."""
    import pathlib

    records = sorted(pathlib.Path(__file__).resolve().parents[2].glob(
        "docs/results/*/*/config.json"))
    assert records
    for path in records:
        experiments.experiment_from_run_file(path)


def test_cross_field_rules():
    base = experiments.get_experiment("paper_stage1")
    with pytest.raises(ConfigError, match="sampler 'pk'"):
        base.override({"batch_hard_weight": 1.0})
    with pytest.raises(ConfigError, match="warmup_steps"):
        base.override({"warmup_steps": 75000})
    with pytest.raises(ConfigError, match="listed twice"):
        base.override({"data_dir": "/a", "extra_train_dirs": ("/b", "/a/")})
    with pytest.raises(ConfigError, match="train_on_test_ids needs a data_dir"):
        base.override({"train_on_test_ids": True})


def test_train_on_test_ids_trains_on_every_person_of_each_folder(shared_data, tmp_path):
    from mgcam_tf.training.trainer import training_data

    data = str(shared_data / "market1501_mini")
    plain = experiments.get_experiment("paper_stage1").override({"data_dir": data})
    dataset, split, num_ids = training_data(plain, tmp_path)
    everyone = plain.override({"train_on_test_ids": True})
    _, all_split, all_ids = training_data(everyone, tmp_path)
    people = {int(p) for s in (dataset.query, dataset.gallery) for p in s.pids if p > 0}
    assert all_ids == num_ids + len(people)
    assert len(all_split) == len(split) + sum(
        int((s.pids > 0).sum()) for s in (dataset.query, dataset.gallery))


def test_each_results_flagfile_is_its_named_experiment():
    """flags/cuhk03_pair1_<row>.flags and the experiment cuhk03_pair1_<row> say the same."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[2]
    flagfiles = sorted(str(p) for p in (repo / "flags").glob("cuhk03_pair1_*.flags"))
    proc = subprocess.run([sys.executable, str(repo / "tests" / "scripts" /
                                               "flagfile_experiments.py"), *flagfiles],
                          env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.splitlines():
        path, text = line.split(" ", 1)
        name = pathlib.Path(path).stem
        expected = experiments.get_experiment(name).to_dict()
        got = json.loads(text)
        # The flagfiles name a run folder to start from; the experiment leaves it to the user.
        got["schedule"]["init_from"] = expected["schedule"]["init_from"]
        assert got == expected, name
