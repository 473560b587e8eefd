"""The results-table flagfiles parse, share one budget, and tools/results_table.py builds
the table from mgcam-eval JSONs (docs/RESULTS.md, tools/reproduce.sh)."""

import json
import pathlib
import subprocess
import sys

import pytest

from harness import REPO
from mgcam_tf.training import experiments

sys.path.insert(0, str(REPO / "tools"))

import results_table  # noqa: E402

ALL_FLAGFILES = sorted((REPO / "flags").glob("cuhk03_pair1_*.flags"))
# The paper's table (tools/reproduce.sh); the recipe's have budgets of their own.
FLAGFILES = [p for p in ALL_FLAGFILES if not p.stem.startswith("cuhk03_pair1_recipe_")]


def _flags(path: pathlib.Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("--"):
            name, _, value = line[2:].partition("=")
            values[name] = value
    return values


def test_one_flagfile_per_row_and_one_budget():
    rows = {p.name[len("cuhk03_pair1_"):-len(".flags")] for p in FLAGFILES}
    assert rows == {row for row, _ in results_table.ROWS}
    stage1 = [_flags(p) for p in FLAGFILES if _flags(p)["stage"] == "1"]
    assert len(stage1) == 5
    for key in ("total_steps", "batch_size", "lr_step", "base_lr", "data_dir"):
        assert len({f[key] for f in stage1}) == 1, key
    siamese = _flags(REPO / "flags" / "cuhk03_pair1_mgcam_siamese_rgbm.flags")
    assert siamese["init_from"] == _flags(
        REPO / "flags" / "cuhk03_pair1_mgcam_rgbm.flags")["model_dir"]
    for path in FLAGFILES:
        flags = _flags(path)
        # Seed 0's folder; tools/reproduce.sh sets --seed and --model_dir per seed.
        assert flags["model_dir"] == "runs/cuhk03_pair1/" + path.name[13:-6] + "_s0"
        assert flags["evaluate"] == "false"
        assert int(flags["total_steps"]) >= (3000 if flags["stage"] == "1" else 1)
        assert flags["eval_every"] == "250"


@pytest.mark.parametrize("flagfile", ALL_FLAGFILES, ids=lambda p: p.stem)
def test_flagfile_dry_run(flagfile):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), f"--flagfile={flagfile}",
         "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "flags are valid" in proc.stdout
    assert f"total_steps={_flags(flagfile)['total_steps']}" in proc.stdout


def _eval_json(path, rank1, ap, first_match, aps):
    path.write_text(json.dumps({"rank1": rank1, "mAP": ap, "rank5": 0.9,
                                "per_query": {"ap": aps, "first_match": first_match}}))


def test_results_table_from_json(tmp_path):
    runs = tmp_path / "runs"
    # Two seeds of MSCAN-body RGB-M, one of MGCAM RGB-M.
    for row, seed, r1 in (("mscan_rgbm", 0, 0.25), ("mscan_rgbm", 1, 0.35), ("mgcam_rgbm", 0, 0.5)):
        folder = runs / f"{row}_s{seed}"
        folder.mkdir(parents=True)
        for metric in ("euclidean", "xqda+rerank"):
            for protocol in ("single_query", "all_queries"):
                first = [0, 1, 0, 2] if row == "mgcam_rgbm" else [1, 1, 0, 2]
                _eval_json(folder / f"eval_{metric}_{protocol}.json", r1, r1 / 2, first,
                           [1.0, 0.5, 1.0, 0.3])
    out = tmp_path / "docs"
    assert results_table.main([f"--runs_dir={runs}", f"--out_dir={out}", "--no-figures"]) == 0
    text = (out / "results_table.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "**single query (200 queries)**"
    by_label = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines
                if line.startswith("| M")}
    # mean +- sample std over the two seeds, then the seed count.
    assert by_label["MSCAN-body, RGB-M"][0] == "30.00 ± 7.07 / 15.00 ± 3.54 (2)"
    assert by_label["MGCAM, RGB-M"][0] == "50.00 / 25.00 (1)"
    assert by_label["MGCAM, RGB-M"][1] == "-"          # xqda JSON missing
    assert set(by_label["MSCAN-body, RGB"][:-1]) == {"-"}
    # MGCAM vs MSCAN-body on seed 0: query 0 is a hit for MGCAM only (+25 rank-1 points).
    row = next(line for line in lines if line.startswith("| MGCAM vs MSCAN-body (RGB-M) | single"))
    assert "| 0 | +25.00 [" in row and "| +0.00 [+0.00, +0.00] |" in row
    assert "not run yet" in text


def test_line_plot_draws_series():
    image = results_table.line_plot({"a": [(0, 1.0), (10, 2.0)], "b": [(5, 1.5)]},
                                    "ITERATION", "LOSS")
    assert image.dtype.name == "uint8" and image.shape == (420, 720, 3)
    assert (image != 255).any(axis=2).sum() > 500


def test_results_table_custom_rows(tmp_path):
    (tmp_path / "try_a_s0").mkdir()
    (tmp_path / "try_a_s0" / "eval_xqda_single_query.json").write_text(
        json.dumps({"rank1": 0.1, "mAP": 0.2}))
    assert results_table.main([f"--runs_dir={tmp_path}", f"--out_dir={tmp_path}",
                                "--no-figures", "--rows=try_a,try_b"]) == 0
    lines = (tmp_path / "results_table.md").read_text().splitlines()
    assert lines[4] == "| try_a | - | 10.00 / 20.00 (1) | - | - | - |"
    assert lines[5].startswith("| try_b | - |")


def test_results_table_ablation_rows_from_several_folders(tmp_path):
    """--rows compares each row with the row before; --runs_dir may list folders (the paper
    rows' records beside the recipe's); --metrics picks the evaluations to tabulate."""
    paper, recipe = tmp_path / "paper", tmp_path / "recipe"
    for folder, row, first in ((paper, "mgcam_rgbm", [1, 1, 0, 2]),
                               (recipe, "recipe_1_optimizer", [0, 1, 0, 2]),
                               (recipe, "recipe_mgcam_rgbm", [0, 0, 0, 2])):
        (folder / f"{row}_s0").mkdir(parents=True)
        _eval_json(folder / f"{row}_s0" / "eval_euclidean_single_query.json", 0.5, 0.4,
                   first, [1.0, 0.5, 1.0, 0.3])
        _eval_json(folder / f"{row}_s0" / "eval_mars_mini_euclidean_single_query.json", 0.2,
                   0.1, first, [1.0, 0.5, 1.0, 0.3])
    assert results_table.main([f"--runs_dir={recipe},{paper}", f"--out_dir={tmp_path}",
                               "--no-figures", "--metrics=euclidean,mars_mini_euclidean",
                               "--rows=mgcam_rgbm,recipe_1_optimizer,recipe_mgcam_rgbm"]) == 0
    text = (tmp_path / "results_table.md").read_text()
    assert "| mgcam_rgbm | 50.00 / 40.00 (1) | 20.00 / 10.00 (1) |" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| recipe_1_optimizer vs mgcam_rgbm | single"))
    assert "| 0 | +25.00 [" in row                 # query 0 becomes a hit
    assert "| recipe_mgcam_rgbm vs recipe_1_optimizer | single_query | 0 | +25.00 [" in text
    # --pairs names the comparisons instead: here both against the paper's row.
    assert results_table.main([f"--runs_dir={recipe},{paper}", f"--out_dir={tmp_path}",
                               "--no-figures", "--metrics=euclidean",
                               "--rows=mgcam_rgbm,recipe_1_optimizer,recipe_mgcam_rgbm",
                               "--pairs=mgcam_rgbm:recipe_1_optimizer,"
                               "mgcam_rgbm:recipe_mgcam_rgbm"]) == 0
    text = (tmp_path / "results_table.md").read_text()
    assert "| recipe_1_optimizer vs mgcam_rgbm | single_query | 0 | +25.00 [" in text
    assert "| recipe_mgcam_rgbm vs mgcam_rgbm | single_query | 0 | +50.00 [" in text
    assert "vs recipe_1_optimizer" not in text
    # Each run's training time (its record's scalars.json) is tabulated too.
    record = recipe / "recipe_mgcam_rgbm_s0"
    (record / "scalars.json").write_text(json.dumps(
        {"loss/total": [[50, 7.0, 1000.0], [4000, 2.0, 1000.0 + 22.5 * 60]]}))
    (record / "config.json").write_text(json.dumps(
        {"experiment": experiments.get_experiment("cuhk03_pair1_recipe_mgcam_rgbm").to_dict()}))
    assert results_table.main([f"--runs_dir={recipe},{paper}", f"--out_dir={tmp_path}",
                               "--no-figures", "--metrics=euclidean",
                               "--rows=mgcam_rgbm,recipe_mgcam_rgbm"]) == 0
    text = (tmp_path / "results_table.md").read_text()
    assert "| recipe_mgcam_rgbm_s0 | 4000 |" in text and text.rstrip().endswith("| 22.5 | - |")
    with pytest.raises(SystemExit):
        results_table.main([f"--runs_dir={recipe}", f"--out_dir={tmp_path}", "--no-figures",
                            "--rows=recipe_1_optimizer", "--pairs=recipe_1_optimizer:other"])


def _fake_run(folder: pathlib.Path, init_from: str = "", stage: str = "1"):
    """A run folder as mgcam-train and tools/reproduce.sh leave it (no checkpoints)."""
    import tensorflow as tf

    folder.mkdir(parents=True)
    settings = {"total_steps": 20, "mixed_precision": "float32", "stage": stage,
                "init_from": init_from}
    (folder / "config.json").write_text(json.dumps({"config": {}, "settings": settings}))
    (folder / "eval_history.json").write_text(json.dumps(
        {"points": [{"step": 0, "rank1": 0.0, "mAP": 0.01}, {"step": 20, "rank1": 0.3,
                                                             "mAP": 0.2}]}))
    _eval_json(folder / "eval_euclidean_single_query.json", 0.3, 0.2, [0, 3],
               [0.123456789, 0.5])
    writer = tf.summary.create_file_writer(str(folder / "logs"))
    with writer.as_default():
        for step in range(0, 21, 10):
            tf.summary.scalar("loss/total", 5.0 - step / 10, step=step)
            tf.summary.scalar("loss/identity", 4.0 - step / 10, step=step)
            tf.summary.image("attention/phi", tf.zeros([1, 8, 4, 1]), step=step)
    writer.close()


def test_record_of_a_run_makes_the_same_table(tmp_path):
    """tools/run_record.py keeps what the table needs; the table from the records
    equals the table from the run folders, and a rerun replaces a record whole."""
    import run_record

    runs, records = tmp_path / "runs", tmp_path / "records"
    _fake_run(runs / "mgcam_rgbm_s0")
    _fake_run(runs / "mgcam_siamese_rgbm_s0", init_from=str(runs / "mgcam_rgbm_s0"), stage="2")
    for name in ("mgcam_rgbm_s0", "mgcam_siamese_rgbm_s0"):
        run_record.write_record(str(runs / name), str(records))
    record = records / "mgcam_rgbm_s0"
    assert sorted(p.name for p in record.iterdir()) == [
        "config.json", "eval_euclidean_single_query.json", "eval_history.json", "scalars.json"]
    scalars = json.loads((record / "scalars.json").read_text())
    assert [p[:2] for p in scalars["loss/total"]] == [[0, 5.0], [10, 4.0], [20, 3.0]]
    assert "attention/phi" not in scalars                     # images stay behind
    saved = json.loads((record / "eval_euclidean_single_query.json").read_text())
    assert saved["per_query"]["ap"] == [0.123457, 0.5] and saved["rank1"] == 0.3

    tables = {}
    for source in (runs, records):
        out = tmp_path / f"out_{source.name}"
        assert results_table.main([f"--runs_dir={source}", f"--out_dir={out}"]) == 0
        tables[source.name] = (out / "results_table.md").read_text()
        assert (out / "figures" / "rank1_curve.png").is_file()
        assert (out / "figures" / "training_loss.png").is_file()
    assert tables["runs"] == tables["records"]
    assert "| mgcam_rgbm_s0 | 20 | float32 |" in tables["records"]
    # The Siamese curve continues its stage-1 run's 20 steps, found beside it.
    assert results_table._stage1_steps(str(records / "mgcam_siamese_rgbm_s0")) == 20

    (runs / "mgcam_rgbm_s0" / "eval_euclidean_single_query.json").unlink()
    run_record.write_record(str(runs / "mgcam_rgbm_s0"), str(records))
    assert not (record / "eval_euclidean_single_query.json").exists()
    assert not [p for p in records.iterdir() if p.name.startswith(".")]   # no leftovers


def test_check_runs_read_the_float32_and_repeat_runs(tmp_path):
    """The check runs (`<row>_s0_float32`, `<row>_s0_repeat`) are kept out of the table's
    rows and compared with seed 0 of the table, beside the spread over the table's seeds."""
    runs = tmp_path / "runs"
    cases = (("mgcam_rgbm_s0", "mixed_bfloat16", 0.5, [0, 0, 1, 0]),
             ("mgcam_rgbm_s1", "mixed_bfloat16", 0.3, [0, 1, 1, 0]),
             ("mgcam_rgbm_s0_float32", "float32", 0.25, [1, 0, 1, 0]),
             ("mgcam_rgbm_s0_repeat", "mixed_bfloat16", 0.75, [0, 0, 0, 1]))
    for name, precision, r1, first in cases:
        folder = runs / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(
            {"settings": {"mixed_precision": precision, "total_steps": 20}}))
        for protocol in ("single_query", "all_queries"):
            _eval_json(folder / f"eval_euclidean_{protocol}.json", r1, r1, first,
                       [0.5, 0.5, 0.5, 0.5])
    out = tmp_path / "docs"
    assert results_table.main([f"--runs_dir={runs}", f"--out_dir={out}", "--no-figures"]) == 0
    text = (out / "results_table.md").read_text()
    # The table's MGCAM RGB-M row holds the two bfloat16 seeds only.
    assert "| MGCAM, RGB-M | 40.00 ± 14.14 / 40.00 ± 14.14 (2) |" in text
    lines = [x for x in text.splitlines() if x.startswith("| mgcam_rgbm | ")]
    by_check = {x.split(" | ")[1]: x for x in lines if "| single_query |" in x}
    # Query 0 is a hit in bfloat16 only, query 1 in neither: +25 rank-1 points, mAP equal;
    # the seed spread is that of the JSONs' rank-1 and mAP over seeds 0 and 1.
    line = by_check["float32"]
    assert ("| float32 → mixed_bfloat16 | +25.00 [" in line
            and "| +0.00 [+0.00, +0.00] | 14.14 / 14.14 (2) |" in line), line
    # The repeat hits queries 0, 1 and 2, seed 0 queries 0, 1 and 3: rank-1 equal.
    line = by_check["trained again"]
    assert "| mixed_bfloat16 → mixed_bfloat16 | +0.00 [" in line, line
    assert "| mgcam_siamese_rgbm | float32 | all_queries | - | not run yet |" in text


def _fake_python(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A stand-in for $PYTHON that logs each command line and succeeds."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    return fake, log


def test_reproduce_recipe_queue_folders_and_the_controls_init_from(tmp_path):
    import os
    import subprocess

    fake, log = _fake_python(tmp_path)
    repo = pathlib.Path(__file__).resolve().parents[2]
    queue = ("cuhk03_pair1_mgcam_rgbm:0 cuhk03_pair1_mgcam_continued_rgbm:0 "
             "cuhk03_pair1_mgcam_siamese_rgbm:0 cuhk03_pair1_recipe_mgcam_rgbm:1 "
             "cuhk03_pair1_recipe_sgd_siamese_rgbm:1 cuhk03_pair1_recipe_sgd_whole_siamese_rgbm:0 "
             "cuhk03_pair1_recipe_sgd_whole_8k_siamese_rgbm:1 "
             "cuhk03_pair1_recipe_sgd_whole_8k_labeled_siamese_rgbm:0")
    env = {**os.environ, "PYTHON": str(fake), "RUNS": str(tmp_path / "runs"),
           "QUEUE": queue, "PHASE": "train"}
    proc = subprocess.run(["bash", str(repo / "tools" / "reproduce_recipe.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    runs = tmp_path / "runs"
    assert len(calls) == 8
    assert f"--model_dir={runs}/control_mgcam_rgbm_s0" in calls[0] and "init_from" not in calls[0]
    for call, row in zip(calls[1:3], ("mgcam_continued_rgbm", "mgcam_siamese_rgbm")):
        assert f"--model_dir={runs}/control_{row}_s0" in call
        assert call.endswith(f"--init_from={runs}/control_mgcam_rgbm_s0")
    assert f"--model_dir={runs}/recipe_mgcam_rgbm_s1" in calls[3] and "--seed=1" in calls[3]
    assert "init_from" not in calls[3]
    # The SGD recipe's Siamese stage starts from the SGD recipe's run of its own seed.
    assert f"--model_dir={runs}/recipe_sgd_siamese_rgbm_s1" in calls[4]
    assert calls[4].endswith(f"--init_from={runs}/recipe_sgd_mgcam_rgbm_s1")
    assert calls[5].endswith(f"--init_from={runs}/recipe_sgd_whole_mgcam_rgbm_s0")
    assert f"--model_dir={runs}/recipe_sgd_whole_8k_siamese_rgbm_s1" in calls[6]
    assert calls[6].endswith(f"--init_from={runs}/recipe_sgd_whole_8k_mgcam_rgbm_s1")
    assert f"--model_dir={runs}/recipe_sgd_whole_8k_labeled_siamese_rgbm_s0" in calls[7]
    assert calls[7].endswith(f"--init_from={runs}/recipe_sgd_whole_8k_labeled_mgcam_rgbm_s0")


def test_reproduce_recipe_preset_phase_trains_then_makes_the_preset(tmp_path):
    import os
    import subprocess

    fake, log = _fake_python(tmp_path)
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHON": str(fake), "RUNS": str(tmp_path / "runs"),
           "RECORDS": str(tmp_path / "records"), "PHASE": "preset"}
    proc = subprocess.run(["bash", str(repo / "tools" / "reproduce_recipe.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    runs = tmp_path / "runs"
    assert "--flagfile=flags/cuhk03_pair1_recipe_preset.flags" in calls[0]
    assert f"--model_dir={runs}/preset_s0" in calls[0]
    # The Siamese stage starts from stage 1, and its run is what becomes the preset.
    assert "--flagfile=flags/cuhk03_pair1_recipe_preset_siamese.flags" in calls[1]
    assert f"--model_dir={runs}/preset_siamese_s0" in calls[1]
    assert f"--init_from={runs}/preset_s0" in calls[1]
    assert calls[2].startswith("tools/make_preset.py") and \
        f"--model_dir={runs}/preset_siamese_s0" in calls[2] and \
        "--name=mgcam_recipe_cuhk03" in calls[2] and "In-sample" in calls[2] and \
        "--recipe=" in calls[2]


def test_reproduce_recipe_default_queue_names_only_registered_experiments(tmp_path):
    """A misspelt name in the script's default queue would fail hours into a run."""
    import os
    fake, log = _fake_python(tmp_path)
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "QUEUE"}
    env.update(PYTHON=str(fake), RUNS=str(tmp_path / "runs"), PHASE="train")
    proc = subprocess.run(["bash", str(repo / "tools" / "reproduce_recipe.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names = [call.split("--experiment=")[1].split()[0] for call in log.read_text().splitlines()]
    assert "cuhk03_pair1_recipe_sgd_4_bnneck" in names
    assert set(names) <= set(experiments.experiment_names())


def test_results_table_curves_print_each_runs_rank1_at_the_steps_asked(tmp_path):
    """--curves: a line per run and seed from eval_history.json, blank where a run did not
    evaluate; a bad step list is refused in one line."""
    for folder, points in (("long_s0", [(0, 0.0), (500, 0.25), (1000, 0.4)]),
                           ("long_s1", [(0, 0.0), (500, 0.3125)]),
                           ("short_s0", [(0, 0.0), (250, 0.1), (500, 0.2)])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "eval_history.json").write_text(json.dumps(
            {"metric": "euclidean", "ap": [], "points": [
                {"step": s, "rank1": r, "mAP": r, "mINP": r} for s, r in points]}))
    out = tmp_path / "out"
    assert results_table.main([f"--runs_dir={tmp_path}", f"--out_dir={out}", "--no-figures",
                               "--rows=short,long", "--curves=all"]) == 0
    text = (out / "results_table.md").read_text()
    assert "| run | 0 | 250 | 500 | 1000 |" in text
    assert "| short_s0 | 0.0 | 10.0 | 20.0 |  |" in text
    assert "| long_s1 | 0.0 |  | 31.2 |  |" in text
    assert results_table.main([f"--runs_dir={tmp_path}", f"--out_dir={out}", "--no-figures",
                               "--rows=short,long", "--curves=500,1000"]) == 0
    text = (out / "results_table.md").read_text()
    assert "| long_s0 | 25.0 | 40.0 |" in text and "| short_s0 | 20.0 |  |" in text
    with pytest.raises(SystemExit):
        results_table.main([f"--runs_dir={tmp_path}", "--rows=long", "--curves=5x"])


def test_training_minutes_leave_out_the_time_a_run_was_stopped():
    """A kill and a resume (or a pause) between two logged steps is not training time:
    that interval counts its steps at the run's median pace; a repeated step counts 0."""
    steady = [(s, 2.0 * s) for s in range(0, 500, 50)]          # 2 s a step
    assert results_table.training_minutes(steady) == (pytest.approx(900 / 60), 0.0)
    # Stopped for an hour between steps 450 and 500, then a resume that logs 500 twice.
    resumed = steady + [(500, 900.0 + 3700.0), (500, 900.0 + 3750.0), (550, 4750.0)]
    minutes, stopped = results_table.training_minutes(resumed)
    assert minutes == pytest.approx((900 + 100 + 100) / 60)
    assert stopped == pytest.approx((3700 - 100 + 50) / 60)
    assert results_table.training_minutes([(0, 5.0)]) == (0.0, 0.0)
