"""kill -9 of the long commands at random points: every output stays complete, the rerun
finishes with the result of an uninterrupted run (issue 12).

Each test kills its command at seeded random points: one by default, all of
KILL_POINTS with `pytest --crash-full` (marker `slow_crash`). After each kill
every file the command left must load (nothing half-written under a final
name); the rerun (resume) must finish and match a run that was never killed.
Also: a truncated extraction part is embedded again, a killed export's
temporary folder is removed by the next export, and tf.data's cache lockfile
left by a killed run is taken over.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from harness import ENV, REPO

KILL_POINTS = 3          # per command with --crash-full


def kill_points(request, name: str) -> list[float]:
    """Seeded random fractions in (0, 1): where in the run each kill falls."""
    rng = random.Random(name)
    n = KILL_POINTS if request.config.getoption("--crash-full") else 1
    return [rng.uniform(0.1, 0.9) for _ in range(n)]


def tool(name: str, *args) -> list[str]:
    return [sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)]


def run_to_end(argv, timeout=600):
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when(argv, started, fraction: float, timeout=300) -> int:
    """Starts `argv`, waits until `started()` (its work has begun), then
    `fraction` of `progress_span` more seconds, and kills it with SIGKILL.
    Returns the return code (-9, or 0 when it finished first)."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not started():
        time.sleep(0.02)
    time.sleep(fraction * 1.5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from serving_standins import shared_export
    from mgcam_tf.data import synthetic
    from mgcam_tf.modeling import models
    from mgcam_tf.training import run_dir

    tmp = tmp_path_factory.mktemp("crashes")
    market = synthetic.write_synthetic_market(tmp / "market", num_train_ids=4, num_test_ids=2,
                                              num_cameras=2, images_per_camera=2, height=64,
                                              width=32)
    model, version = shared_export()
    model_dir = tmp / "run"
    run_dir.prepare_model_dir(model_dir, models.model_config(5), {})
    run_dir.checkpoint_manager(model_dir, model).save()
    return {"tmp": tmp, "market": market, "export": version, "model": model,
            "model_dir": model_dir}


# ------------------------------------------------------------------ mgcam-extract -----

@pytest.mark.slow_crash
def test_extract_killed_then_resumed(world, request):
    from mgcam_tf.retrieval import extraction
    from mgcam_tf.serving.loader import SavedModelEmbedder

    images = world["market"] / "bounding_box_train"
    reference = extraction.extract_folder(SavedModelEmbedder(world["export"]), str(images),
                                          str(world["tmp"] / "ref_feats"), mask_policy="files",
                                          chunk_size=2, batch_size=1)
    out = world["tmp"] / "killed_feats"
    argv = tool("extract", f"--saved_model={world['export']}", f"--image_dir={images}",
                f"--output_dir={out}", "--mask_policy=files", "--chunk_size=2",
                "--batch_size=1", "--noprogress")
    parts = out / extraction.PARTS_DIR
    codes = []
    for fraction in kill_points(request, "extract"):
        codes += [kill_when(argv, lambda: parts.is_dir() and any(parts.glob("part-*.npz")), fraction)]
        for part in parts.glob("part-*.npz") if parts.is_dir() else []:
            with np.load(part) as loaded:   # every part under its final name is whole
                assert loaded["features"].shape[0] == len(loaded["paths"])
        assert not (out / extraction.INFO_FILE).exists() or extraction.is_feature_folder(str(out))
    assert -signal.SIGKILL in codes, "every run finished before its kill"
    run_to_end(argv)
    got = extraction.load_features(str(out))
    assert got.paths == reference.paths
    np.testing.assert_allclose(got.features, reference.features, atol=1e-5)
    assert not parts.exists()


def test_truncated_part_is_embedded_again(world, tmp_path):
    """A part file cut short (a kill mid-write outside atomic_files, a full disk)."""
    from mgcam_tf.retrieval import extraction
    from mgcam_tf.serving.loader import SavedModelEmbedder

    embedder = SavedModelEmbedder(world["export"])
    images = world["market"] / "query"
    out = tmp_path / "feats"
    first = extraction.extract_folder(embedder, str(images), str(out), mask_policy="files",
                                      chunk_size=2)
    # Leave a finished run's parts behind, the first one truncated.
    (out / extraction.INFO_FILE).unlink()
    parts = out / extraction.PARTS_DIR
    parts.mkdir()
    import io
    buffer = io.BytesIO()
    np.savez(buffer, features=first.features[:2], paths=np.array(first.paths[:2]),
             fingerprint=np.array(embedder.fingerprint))
    (parts / "part-00000.npz").write_bytes(buffer.getvalue()[:100])
    calls = []
    embed = embedder.embed_files

    def counting(paths, *args, **kwargs):
        calls.append(list(paths))
        return embed(paths, *args, **kwargs)

    embedder.embed_files = counting
    again = extraction.extract_folder(embedder, str(images), str(out), mask_policy="files",
                                      chunk_size=2)
    assert list(first.paths[:2]) in calls
    np.testing.assert_allclose(again.features, first.features, atol=1e-6)


# ------------------------------------------------------------------ mgcam-export ------

def _embeddings(version_dir, batch):
    from mgcam_tf.serving.loader import SavedModelEmbedder

    return SavedModelEmbedder(version_dir).embed_rgbm(batch)


@pytest.mark.slow_crash
def test_export_killed_then_rerun(world, request):
    from mgcam_tf.serving import export

    base = world["tmp"] / "killed_export"
    argv = tool("export", f"--model_dir={world['model_dir']}", f"--export_dir={base}",
                "--mask_in_graph=false")
    codes = []
    for fraction in kill_points(request, "export"):
        codes.append(kill_when(argv, lambda: base.is_dir() and any(base.glob(".*.tmp-*")),
                               fraction))
        for version in base.iterdir():
            if version.name.isdigit():     # a numbered folder is a whole export
                assert (version / "saved_model.pb").is_file()
                export.read_metadata(version)
    assert -signal.SIGKILL in codes, "every export finished before its kill"
    run_to_end(argv)
    assert not list(base.glob(".*.tmp-*")), "a killed export's temporary folder remains"
    # Inside the preprocessed range (serving_rgbm refuses values no image gives).
    batch = np.random.default_rng(0).uniform(-0.4, 0.4, (2, 160, 64, 4)).astype("float32")
    np.testing.assert_allclose(_embeddings(export.resolve_export(base), batch),
                               _embeddings(world["export"], batch), atol=1e-5)


def test_stale_export_folder_removed(tmp_path, world):
    from mgcam_tf.serving import export

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".1.tmp-{dead.pid}-abc"
    (stale / "variables").mkdir(parents=True)
    live = tmp_path / f".1.tmp-{os.getppid()}-def"   # a running process: kept
    live.mkdir()
    assert export.remove_stale_exports(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


# ------------------------------------------------------------------ mgcam-masks -------

def _mask_model():
    from mgcam_tf.errors import DataError
    from mgcam_tf.segmentation import model_file

    try:
        return model_file.resolve_model_path()
    except DataError as err:
        pytest.skip(f"BlazePose-full model not available ({err}); set "
                    f"{model_file.ENV_MODEL} to pose_landmark_full.tflite")


@pytest.mark.slow_crash
def test_masks_killed_then_rerun(world, request):
    import tensorflow as tf

    model = _mask_model()

    def fresh(name):
        root = world["tmp"] / name
        shutil.copytree(world["market"] / "bounding_box_train", root / "bounding_box_train")
        return root

    ref, killed = fresh("masks_ref"), fresh("masks_killed")
    run_to_end(tool("make_masks", f"--data_dir={ref}", f"--model_path={model}", "--noprogress"))
    argv = tool("make_masks", f"--data_dir={killed}", f"--model_path={model}", "--noprogress",
                "--num_workers=1")
    seg = killed / "bounding_box_train_seg"
    codes = []
    for fraction in kill_points(request, "masks"):
        codes.append(kill_when(argv, lambda: seg.is_dir() and any(seg.glob("*.png")),
                               fraction * 0.3))
        for mask in seg.glob("*.png") if seg.is_dir() else []:
            tf.io.decode_png(mask.read_bytes())     # every mask written is whole
    assert -signal.SIGKILL in codes, "every run finished before its kill"
    run_to_end(argv)
    want = sorted((ref / "bounding_box_train_seg").glob("*.png"))
    assert [p.name for p in sorted(seg.glob("*.png"))] == [p.name for p in want]
    for p in want:
        assert (seg / p.name).read_bytes() == p.read_bytes(), p.name
    assert not [p for p in seg.iterdir() if p.name.startswith(".")], "temporary files remain"


# ------------------------------------------------------------------ mgcam-train -------

@pytest.mark.slow_crash
def test_train_killed_mid_save_then_resumed(world, request, tmp_path):
    """tests/scripts/train_steps.py (a slow-step trainer), killed while a checkpoint
    is being written when the kill lands there (`ckpt-N_temp*` present)."""
    import tensorflow as tf

    script = REPO / "tests" / "scripts" / "train_steps.py"
    model_dir, total = tmp_path / "run", 12
    ckpts = model_dir / "checkpoints"
    for fraction in kill_points(request, "train"):
        proc = subprocess.Popen([sys.executable, str(script), str(model_dir), str(total)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        # Kill inside a save when one is seen, else `fraction` seconds after the first.
        seen_checkpoint = None
        while time.time() < deadline and proc.poll() is None:
            if ckpts.is_dir() and any(ckpts.glob("*_temp*")):
                break
            if seen_checkpoint is None and ckpts.is_dir() and any(ckpts.glob("ckpt-*.index")):
                seen_checkpoint = time.time()
            if seen_checkpoint is not None and time.time() - seen_checkpoint > fraction * 2:
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "training finished before its kill"
        state = tf.train.get_checkpoint_state(str(ckpts))
        for path in state.all_model_checkpoint_paths if state else []:
            tf.train.load_checkpoint(path).get_tensor(
                "model/stem_conv/_kernel/.ATTRIBUTES/VARIABLE_VALUE")   # complete
    proc = run_to_end([sys.executable, str(script), str(model_dir), str(total)])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["end_step"] == total
    assert not list(ckpts.glob("*_temp*")), "a killed save's temporary files remain"


# ------------------------------------------------------------------ --cache lockfile --

CACHE_WRITER = """
import sys, time
from mgcam_tf.data import layouts, pipeline
split = layouts.load_dataset(sys.argv[1]).train
ds = pipeline.train_dataset(split, 1, seed=0, cache=sys.argv[2], repeat=False, shuffle=False)
for _ in ds:
    print("step", flush=True)
    time.sleep(0.5)
"""


def test_cache_lockfile_of_a_killed_run_is_taken_over(world, tmp_path):
    from mgcam_tf.data import layouts, pipeline

    prefix = tmp_path / "cache" / "train"
    prefix.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CACHE_WRITER, str(world["market"]),
                             str(prefix)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "step"
    lockfiles = list(prefix.parent.glob("*.lockfile"))
    assert lockfiles, "tf.data wrote no lockfile while caching"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(prefix.parent.glob("*.lockfile")) == lockfiles   # left behind
    split = layouts.load_dataset(str(world["market"])).train
    ds = pipeline.train_dataset(split, 4, seed=0, cache=str(prefix), repeat=False)
    assert sum(int(y["pid"].shape[0]) for _, y in ds) == len(split.image_paths)
    assert not list(prefix.parent.glob("*.lockfile"))
    assert any(prefix.parent.glob("*.index")), "the cache was not completed"


# ------------------------------------------------------------------ damaged checkpoints --

def _two_checkpoints(folder: pathlib.Path, model) -> pathlib.Path:
    """A model directory with ckpt-3 (the model's weights) and ckpt-4 (other weights),
    ckpt-4's data file then cut to 1000 bytes (a full disk, a copy cut short)."""
    from mgcam_tf.modeling import models
    from mgcam_tf.training import run_dir

    run_dir.prepare_model_dir(folder, models.model_config(5), {})
    manager = run_dir.checkpoint_manager(folder, model)
    manager.save(3)
    kept = [v.numpy() for v in model.weights]
    for v in model.weights:
        v.assign(v + 1.0)
    manager.save(4)
    for v, value in zip(model.weights, kept):
        v.assign(value)
    os.truncate(folder / "checkpoints" / "ckpt-4.data-00000-of-00001", 1000)
    return folder


def test_truncated_checkpoint_falls_back_with_a_warning_and_export_refuses(world, tmp_path,
                                                                          caplog):
    from mgcam_tf.training import run_dir

    model = world["model"]
    folder = _two_checkpoints(tmp_path / "run", model)
    damaged = str(folder / "checkpoints" / "ckpt-4.data-00000-of-00001")
    with caplog.at_level("WARNING", logger="mgcam_tf"):
        restored = run_dir.load_trained_model(folder)
    assert damaged in caplog.text and "ckpt-3" in caplog.text
    for got, want in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(run_dir.UnreadableCheckpoint, match="refusing to use an older"):
        run_dir.load_trained_model(folder, allow_older=False)
    out = subprocess.run(tool("export", f"--model_dir={folder}", f"--export_dir={tmp_path / 'e'}",
                              "--mask_in_graph=false"),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and damaged in last, out.stderr[-2000:]
    assert not (tmp_path / "e").exists() or not list((tmp_path / "e").iterdir())
    # Evaluation goes on from ckpt-3, saying which checkpoint it skipped.
    out = subprocess.run(tool("evaluate", f"--model_dir={folder}", f"--data_dir={world['market']}",
                              "--batch_size=4", "--metric=euclidean", "--noprogress"),
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert damaged in out.stderr and "skipping it" in out.stderr


def test_truncated_latest_checkpoint_training_resumes_from_the_intact_one(tmp_path):
    script = REPO / "tests" / "scripts" / "train_steps.py"
    model_dir = tmp_path / "run"
    run_to_end([sys.executable, str(script), str(model_dir), "4"])
    os.truncate(model_dir / "checkpoints" / "ckpt-4.data-00000-of-00001", 1000)
    proc = run_to_end([sys.executable, str(script), str(model_dir), "6"])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["start_step"] == 2 and report["end_step"] == 6
    assert "ckpt-4.data-00000-of-00001 cannot be read" in proc.stderr
