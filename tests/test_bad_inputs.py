"""Every command, given a bad file or a bad number, ends in exactly one `error:` line.

A matrix (issue 12, "never a silently wrong answer"): each command (mgcam-train,
-eval, -masks, -export, -extract, -search, -verify) x each bad file (corrupt,
empty, missing mask, wrong-size mask, empty folder, unknown naming,
non-ASCII path), each numeric flag x each bad value (nan, inf, negative,
zero where invalid), and the file-level failures (truncated or non-npz
--features, a --model_dir that is a file, outputs that cannot be written,
features of another model). Each case must exit with status 1 and print one
stderr line, nothing filtered, that names the culprit.

Cost: a command line spends most of its time importing TensorFlow, so the
cases of one command run in one `tests/scripts/cli_cases.py` process, each
case in a child forked after the imports (the same `run()` as the console
script: absl parsing, one-line errors). One case per command also runs as a
plain `python tools/<tool>.py` subprocess, so TensorFlow's start-up output
is covered too. The eight processes run concurrently, once per session.

Combinations that are not errors are left out of the matrix on purpose:
mgcam-masks makes missing masks (that is its job) and leaves existing ones
alone (so a wrong-size mask is not read) and takes any file name;
mgcam-extract/-search/-verify resize a mask of another size on their own
(documented) and take any file name (ids are -1 then).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from harness import REPO

TOOLS = {"train": "train", "eval": "evaluate", "masks": "make_masks", "export": "export",
         "extract": "extract", "search": "search", "verify": "verify"}
Q_BAD = "0001_c1s9_000001_01"      # the bad file placed in query/ (id 1 is a test id)
T_BAD = "0002_c1s9_000001_01"      # ... and in bounding_box_train/ (id 2 is a train id)
NON_ASCII = "données_ü"
KINDS = ("corrupt", "empty", "missing_mask", "wrong_mask", "empty_folder", "unknown_naming",
         "non_ascii")


# ------------------------------------------------------------------ the data ---------

def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
    import tensorflow as tf

    path.write_bytes(tf.io.encode_png(array).numpy())


def _put_bad(folder: pathlib.Path, stem: str, kind: str, good: pathlib.Path) -> None:
    """Puts the bad file of `kind` into image folder `folder` (masks in folder_seg)."""
    seg = folder.parent / (folder.name + "_seg")
    some_mask = next(seg.glob("*.png"))
    if kind in ("corrupt", "non_ascii", "corrupt_nomask"):
        (folder / f"{stem}.jpg").write_bytes(b"this is not a JPEG image\n" * 4)
        if kind != "corrupt_nomask":
            shutil.copy(some_mask, seg / f"{stem}.png")
    elif kind == "empty":
        (folder / f"{stem}.jpg").write_bytes(b"")
        shutil.copy(some_mask, seg / f"{stem}.png")
    elif kind == "missing_mask":
        shutil.copy(good, folder / f"{stem}.jpg")
    elif kind == "wrong_mask":
        shutil.copy(good, folder / f"{stem}.jpg")
        _write_png(seg / f"{stem}.png", np.full((10, 7, 1), 255, np.uint8))
    elif kind == "empty_folder":
        for f in list(folder.iterdir()) + list(seg.iterdir()):
            f.unlink()
    elif kind == "unknown_naming":
        shutil.copy(good, folder / "holiday.jpg")
        shutil.copy(some_mask, seg / "holiday.png")


def _dataset(root: pathlib.Path, market: pathlib.Path, kind: str) -> pathlib.Path:
    shutil.copytree(market, root)
    for split, stem in (("query", Q_BAD), ("bounding_box_train", T_BAD)):
        good = next((root / split).glob("*.jpg"))
        _put_bad(root / split, stem, kind, good)
    return root


def _other_version(version_dir: pathlib.Path, target: pathlib.Path) -> None:
    """A copy of an export that loads the same but has another fingerprint
    (what a re-export of retrained weights is to the fingerprint check)."""
    from tensorflow.core.protobuf import saved_model_pb2

    shutil.copytree(version_dir, target)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((target / "saved_model.pb").read_bytes())
    proto.meta_graphs[0].meta_info_def.meta_graph_version = "re-exported"
    (target / "saved_model.pb").write_bytes(proto.SerializeToString())


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Small data made in tmp: a synthetic Market-1501 (3 train ids, 2 test ids),
    its bad copies, an untrained model directory, an export and a re-export."""
    sys.path.insert(0, str(REPO / "tests"))
    from serving_standins import shared_export
    from mgcam_tf.data import synthetic
    from mgcam_tf.modeling import models
    from mgcam_tf.retrieval import extraction
    from mgcam_tf.serving.loader import SavedModelEmbedder
    from mgcam_tf.training import run_dir

    tmp = tmp_path_factory.mktemp("bad_inputs")
    market = synthetic.write_synthetic_market(tmp / "market", num_train_ids=3, num_test_ids=2,
                                              num_cameras=2, images_per_camera=2, height=64,
                                              width=32)
    w = {"tmp": tmp, "market": market, "bad": {}}
    for kind in KINDS:
        root = tmp / NON_ASCII / "market" if kind == "non_ascii" else tmp / f"market_{kind}"
        w["bad"][kind] = _dataset(root, market, kind)
    # mgcam-masks regenerates only missing masks: bad images without one.
    w["bad"]["corrupt_nomask"] = _dataset(tmp / "market_corrupt_nomask", market,
                                          "corrupt_nomask")
    w["bad"]["non_ascii_nomask"] = _dataset(tmp / NON_ASCII / "market_nomask", market,
                                            "corrupt_nomask")
    model, version = shared_export()
    w["model_dir"] = tmp / "run"
    run_dir.prepare_model_dir(w["model_dir"], models.model_config(5), {})
    run_dir.checkpoint_manager(w["model_dir"], model).save()
    w["export"] = version
    # BASE/1 extracted the gallery; BASE/2 (newest) is another model.
    w["base"] = tmp / "reexport"
    shutil.copytree(version, w["base"] / "1")
    _other_version(version, w["base"] / "2")
    old = SavedModelEmbedder(w["base"] / "1")
    w["old_fingerprint"] = old.fingerprint
    w["gallery_feats"] = tmp / "gallery_feats"
    extraction.extract_folder(old, str(market / "bounding_box_test"), str(w["gallery_feats"]),
                              mask_policy="files")
    # Feature files for mgcam-eval --features.
    rng = np.random.default_rng(0)
    arrays = {"query_features": rng.standard_normal((4, 8)), "query_pids": np.arange(4),
              "query_camids": np.ones(4, int), "gallery_features": rng.standard_normal((6, 8)),
              "gallery_pids": np.arange(6) % 4, "gallery_camids": np.full(6, 2)}
    np.savez(tmp / "old_model.npz", model_fingerprint=np.array(old.fingerprint), **arrays)
    whole = tmp / "whole.npz"
    np.savez(whole, **arrays)
    data = whole.read_bytes()
    (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp / "cut_header.npz").write_bytes(data[:20])
    np.save(tmp / "single.npy", np.zeros(3))
    (tmp / "text.npz").write_text("query_features,1,2\n")
    (tmp / "a_file").write_text("not a folder\n")
    # Issue 27: string features, a truncated latest checkpoint, a gallery with a NaN
    # row, a mask of another size than its image.
    np.savez(tmp / "strings.npz", **{**arrays, "query_features": np.array([["a", "b"]] * 4)})
    w["truncated_run"] = tmp / "truncated_run"
    run_dir.prepare_model_dir(w["truncated_run"], models.model_config(5), {})
    manager = run_dir.checkpoint_manager(w["truncated_run"], model)
    manager.save(3)
    manager.save(4)
    os.truncate(w["truncated_run"] / "checkpoints" / "ckpt-4.data-00000-of-00001", 1000)
    w["nan_gallery"] = tmp / "nan_gallery"
    shutil.copytree(w["gallery_feats"], w["nan_gallery"])
    feats = np.load(w["nan_gallery"] / extraction.FEATURES_FILE)
    feats[2] = np.nan
    np.save(w["nan_gallery"] / extraction.FEATURES_FILE, feats)
    _write_png(tmp / "small_mask.png", np.full((10, 7, 1), 255, np.uint8))
    sys.path.insert(0, str(REPO))
    from benchmarks.hostile_images import jpeg_claiming

    (tmp / "bomb.jpg").write_bytes(jpeg_claiming(30000, 30000))
    ro = tmp / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    w["read_only"] = ro
    return w


# ------------------------------------------------------------------ the cases ---------

def _q(w, kind):
    return w["bad"][kind] / "query"


def _bad_query(w, kind):
    return str(_q(w, kind) / f"{Q_BAD}.jpg")


def _train_argv(w, kind):
    return [f"--model_dir={w['tmp'] / ('train_' + kind)}", f"--data_dir={w['bad'][kind]}",
            # 16 samples: one epoch of the 13 training images reaches the bad one.
            "--total_steps=4", "--checkpoint_every=4", "--batch_size=4", "--noevaluate",
            "--noprogress"]


def _culprit_of(kind, stem):
    if kind == "empty_folder":
        return "market_empty_folder/"
    if kind == "unknown_naming":
        return "holiday"
    if kind == "non_ascii":
        return f"{NON_ASCII}/market/{'query' if stem == Q_BAD else 'bounding_box_train'}/{stem}"
    return stem


def _data_cases():
    """(tool, case id, argv(w), culprit(w)) of the bad-file matrix."""
    cases = []
    for kind in KINDS:
        cases.append(("train", f"file-{kind}", lambda w, k=kind: _train_argv(w, k),
                      lambda w, k=kind: _culprit_of(k, T_BAD)))
        cases.append(("eval", f"file-{kind}", lambda w, k=kind: [
            f"--model_dir={w['model_dir']}", f"--data_dir={w['bad'][k]}", "--metric=euclidean",
            "--noprogress"], lambda w, k=kind: _culprit_of(k, Q_BAD)))
        cases.append(("export", f"file-{kind}", lambda w, k=kind: [
            f"--model_dir={w['model_dir']}", f"--export_dir={w['tmp'] / ('export_' + k)}",
            f"--calibration_data={w['bad'][k]}", "--calibration_split=query",
            "--mask_in_graph=false"], lambda w, k=kind: _culprit_of(k, Q_BAD)))
    for kind, source in (("corrupt", "corrupt_nomask"), ("empty", "empty"),
                         ("empty_folder", "empty_folder"), ("non_ascii", "non_ascii_nomask")):
        if kind == "empty":
            continue   # an empty file with a mask already: mgcam-masks has nothing to do
        cases.append(("masks", f"file-{kind}", lambda w, s=source: [
            f"--data_dir={w['bad'][s] / 'query'}", "--noprogress", "--num_workers=1"],
            lambda w, k=kind, s=source: (
                "query" if k == "empty_folder" else str(w["bad"][s] / "query" / Q_BAD))))
    for kind in ("corrupt", "empty", "missing_mask", "empty_folder", "non_ascii"):
        culprit = (lambda w, k=kind: str(_q(w, k))) if kind == "empty_folder" else \
            (lambda w, k=kind: _culprit_of(k, Q_BAD))
        cases.append(("extract", f"file-{kind}", lambda w, k=kind: [
            f"--saved_model={w['export']}", f"--image_dir={_q(w, k)}",
            f"--output_dir={w['tmp'] / ('extract_' + k)}", "--mask_policy=files",
            "--noprogress"], culprit))
        if kind == "empty_folder":
            cases.append(("search", f"file-{kind}", lambda w, k=kind: [
                f"--saved_model={w['export']}", f"--gallery={_q(w, k)}", "--mask_policy=files",
                str(w["market"] / "query" / next(os.scandir(w["market"] / "query")).name)],
                culprit))
            continue
        cases.append(("search", f"file-{kind}", lambda w, k=kind: [
            f"--saved_model={w['export']}", f"--gallery={w['gallery_feats']}",
            "--mask_policy=files", _bad_query(w, k)], culprit))
        cases.append(("verify", f"file-{kind}", lambda w, k=kind: [
            f"--saved_model={w['export']}", "--threshold=1", "--mask_policy=files",
            _bad_query(w, k), str(next((w["market"] / "query").glob("*.jpg")))], culprit))
    return cases


def _file_cases():
    """Features, model directories and outputs (issue 12 A(1), A(2))."""
    t = lambda w, name: str(w["tmp"] / name)  # noqa: E731
    npz = lambda w, name: [f"--features={t(w, name)}", "--metric=euclidean"]  # noqa: E731
    missing = lambda w, name: str(w["tmp"] / "no_such_folder" / name)  # noqa: E731
    under_file = lambda w, name: str(w["tmp"] / "a_file" / name)  # noqa: E731
    q_image = lambda w: str(next((w["market"] / "query").glob("*.jpg")))  # noqa: E731
    search = lambda w, *more: [f"--saved_model={w['base'] / '1'}",  # noqa: E731
                               f"--gallery={w['gallery_feats']}", "--mask_policy=files",
                               *more, q_image(w)]
    cases = [
        ("eval", "npz-truncated", lambda w: npz(w, "truncated.npz"), lambda w: "truncated.npz"),
        ("eval", "npz-cut-header", lambda w: npz(w, "cut_header.npz"),
         lambda w: "cut_header.npz"),
        ("eval", "npz-single-array", lambda w: npz(w, "single.npy"), lambda w: "single.npy"),
        ("eval", "npz-text", lambda w: npz(w, "text.npz"), lambda w: "text.npz"),
        ("eval", "npz-missing", lambda w: npz(w, "absent.npz"), lambda w: "absent.npz"),
        ("eval", "npz-of-another-model",
         lambda w: npz(w, "old_model.npz") + [f"--saved_model={w['base']}"],
         lambda w: w["old_fingerprint"]),
        ("eval", "model_dir-is-a-file", lambda w: [
            f"--model_dir={t(w, 'a_file')}", f"--data_dir={w['market']}"], lambda w: "a_file"),
        ("eval", "json_out-missing-folder", lambda w: npz(w, "whole.npz") + [
            f"--json_out={missing(w, 'r.json')}"], lambda w: "no_such_folder"),
        ("eval", "cmc_png-missing-folder", lambda w: npz(w, "whole.npz") + [
            f"--cmc_png={missing(w, 'c.png')}"], lambda w: "no_such_folder"),
        ("eval", "json_out-under-a-file", lambda w: npz(w, "whole.npz") + [
            f"--json_out={under_file(w, 'r.json')}"], lambda w: "a_file"),
        ("eval", "json_out-read-only", lambda w: npz(w, "whole.npz") + [
            f"--json_out={w['read_only'] / 'r.json'}"], lambda w: "read_only"),
        ("train", "model_dir-is-a-file", lambda w: [
            f"--model_dir={t(w, 'a_file')}", f"--data_dir={w['market']}", "--total_steps=2",
            "--checkpoint_every=2", "--batch_size=4", "--noevaluate"], lambda w: "a_file"),
        ("export", "model_dir-is-a-file", lambda w: [
            f"--model_dir={t(w, 'a_file')}", f"--export_dir={t(w, 'e')}"], lambda w: "a_file"),
        ("export", "export_dir-under-a-file", lambda w: [
            f"--model_dir={w['model_dir']}", f"--export_dir={under_file(w, 'e')}",
            "--mask_in_graph=false"], lambda w: "a_file"),
        ("export", "export_dir-read-only", lambda w: [
            f"--model_dir={w['model_dir']}", f"--export_dir={w['read_only'] / 'e'}",
            "--mask_in_graph=false"], lambda w: "read_only"),
        ("extract", "output_dir-under-a-file", lambda w: [
            f"--saved_model={w['export']}", f"--image_dir={w['market'] / 'query'}",
            f"--output_dir={under_file(w, 'f')}", "--mask_policy=files", "--noprogress"],
         lambda w: "a_file"),
        ("extract", "saved_model-is-a-file", lambda w: [
            f"--saved_model={t(w, 'a_file')}", f"--image_dir={w['market'] / 'query'}",
            f"--output_dir={t(w, 'f2')}"], lambda w: "a_file"),
        ("search", "gallery-of-another-model", lambda w: [
            f"--saved_model={w['base']}", f"--gallery={w['gallery_feats']}",
            "--mask_policy=files", q_image(w)], lambda w: w["old_fingerprint"]),
        ("search", "json_out-missing-folder", lambda w: search(
            w, f"--json_out={missing(w, 'r.json')}"), lambda w: "no_such_folder"),
        ("search", "sheet-missing-folder", lambda w: search(
            w, f"--sheet={missing(w, 's.html')}"), lambda w: "no_such_folder"),
        ("search", "sheet-under-a-file", lambda w: search(
            w, f"--sheet={under_file(w, 's.png')}"), lambda w: "a_file"),
        ("masks", "data_dir-is-a-file", lambda w: [f"--data_dir={t(w, 'a_file')}"],
         lambda w: "a_file"),
        ("eval", "npz-string-features", lambda w: npz(w, "strings.npz"),
         lambda w: "query_features must hold numbers"),
        ("export", "truncated-checkpoint", lambda w: [
            f"--model_dir={w['truncated_run']}", f"--export_dir={t(w, 'e_trunc')}",
            "--mask_in_graph=false"], lambda w: "ckpt-4.data-00000-of-00001 cannot be read"),
        ("search", "gallery-with-a-nan-row", lambda w: [
            f"--saved_model={w['base'] / '1'}", f"--gallery={w['nan_gallery']}",
            "--mask_policy=files", q_image(w)], lambda w: "row 2 ("),
        ("search", "query-a-decompression-bomb", lambda w: [
            f"--saved_model={w['base'] / '1'}", f"--gallery={w['gallery_feats']}",
            "--mask_policy=full_body", t(w, "bomb.jpg")],
         lambda w: t(w, "bomb.jpg") + ": a 30000x30000 image"),
        ("verify", "image-a-decompression-bomb", lambda w: [
            f"--saved_model={w['export']}", "--threshold=1", "--mask_policy=full_body",
            t(w, "bomb.jpg"), q_image(w)], lambda w: t(w, "bomb.jpg") + ": a 30000x30000 image"),
        ("verify", "mask_a-of-another-size", lambda w: [
            f"--saved_model={w['export']}", "--threshold=1",
            f"--mask_a={t(w, 'small_mask.png')}", q_image(w), q_image(w)],
         lambda w: "--mask_a=" + t(w, "small_mask.png") + ": the mask is 7x10"),
        ("verify", "saved_model-is-a-file", lambda w: [
            f"--saved_model={t(w, 'a_file')}", "--threshold=1", q_image(w), q_image(w)],
         lambda w: "a_file"),
    ]
    return cases


# Numeric flags: (tool, flag, bad values, base argv(w)). Bad values are the ones
# the flag's rule refuses: nan and inf always; -1 and 0 where below its range.
NUMERIC = {
    "train": (["batch_size", "total_steps", "lr_step", "checkpoint_every", "log_every",
               "image_every", "eval_batch_size", "feature_dim", "pk_k", "synthetic_ids"],
              ["base_lr", "gamma", "bias_lr_mult"],
              ["momentum", "weight_decay", "siamese_weight", "triplet_weight", "attention_weight",
               "triplet_margin", "siamese_margin", "positive_fraction", "dropout",
               "eval_every", "seed"]),
    "eval": (["batch_size", "k1", "k2", "ranked_queries"], [], ["lambda_value"]),
    "export": (["version", "batch_size", "max_batch", "max_image_pixels", "max_request_pixels",
                "max_request_bytes"], ["target_far"], []),
    "extract": (["batch_size", "chunk_size", "workers", "shard_size"], [], []),
    "search": (["top_k", "batch_size"], [], ["nprobe"]),
    "verify": ([], ["threshold"], []),
    "masks": ([], [], ["num_workers"]),
}
# (positive: 0 and -1 bad; positive_real: 0 and -1 bad; non_negative: -1 bad)
INTEGER_FLAGS = {"batch_size", "total_steps", "lr_step", "checkpoint_every", "log_every",
                 "image_every", "eval_batch_size", "feature_dim", "pk_k", "synthetic_ids",
                 "eval_every", "seed", "k1", "k2", "ranked_queries", "version", "chunk_size",
                 "workers", "shard_size", "top_k", "nprobe", "num_workers", "max_batch",
                 "max_image_pixels", "max_request_pixels", "max_request_bytes"}


def _numeric_base(w, tool):
    q = str(next((w["market"] / "query").glob("*.jpg")))
    return {
        "train": [f"--model_dir={w['tmp'] / 'dry'}", "--dry_run"],
        "eval": [f"--features={w['tmp'] / 'whole.npz'}", "--metric=euclidean"],
        "export": [f"--model_dir={w['model_dir']}", f"--export_dir={w['tmp'] / 'e_num'}"],
        "extract": [f"--saved_model={w['export']}", f"--image_dir={w['market'] / 'query'}",
                    f"--output_dir={w['tmp'] / 'f_num'}"],
        "search": [f"--saved_model={w['export']}", f"--gallery={w['gallery_feats']}", q],
        "verify": [f"--saved_model={w['export']}", q, q],
        "masks": [f"--data_dir={w['market']}"],
    }[tool]


def _numeric_cases():
    cases = []
    for tool, (positive, positive_real, non_negative) in NUMERIC.items():
        for group, bad in ((positive, ["0", "-1"]), (positive_real, ["0", "-1"]),
                           (non_negative, ["-1"])):
            for flag in group:
                values = bad + ["nan", "inf"]
                if flag in ("dropout", "positive_fraction", "lambda_value", "momentum",
                            "target_far"):
                    values += ["1.5"]
                if flag in ("dropout", "target_far"):
                    values += ["1"]
                for value in values:
                    cases.append((tool, f"flag-{flag}={value}",
                                  lambda w, t=tool, f=flag, v=value: [
                                      *_numeric_base(w, t), f"--{f}={v}"],
                                  lambda w, f=flag: f))
    return cases


# Each bad-file case of these commands loads or trains a model (seconds each, more on a
# busy machine): by default only these kinds run for them; --full-matrix runs all.
HEAVY = {"train", "eval", "export"}
DEFAULT_KINDS = {"corrupt", "missing_mask", "non_ascii"}


def _selected(full: bool):
    return [c for c in _data_cases() + _file_cases() + _numeric_cases()
            if full or c[0] not in HEAVY or not c[1].startswith("file-")
            or c[1][len("file-"):] in DEFAULT_KINDS]


CASES = _selected(full=True)
# Cases that must succeed, checked by their own tests below (same servers).
OK_CASES = [
    ("eval", "ok-save-features", lambda w: [
        f"--saved_model={w['base']}", f"--data_dir={w['market']}", "--metric=euclidean",
        f"--save_features={w['tmp'] / 'saved.npz'}", "--progress=false"]),
    ("eval", "ok-features-of-this-model", lambda w: [
        f"--features={w['tmp'] / 'old_model.npz'}", f"--saved_model={w['base'] / '1'}",
        "--metric=euclidean"]),
    ("search", "ok-gallery-of-this-model", lambda w: [
        f"--saved_model={w['base'] / '1'}", f"--gallery={w['gallery_feats']}",
        "--mask_policy=files", "--top_k=2",
        str(next((w["market"] / "query").glob("*.jpg")))]),
]

# One case per command run as a plain subprocess (TensorFlow's start-up output included).
# (Two commands: each costs a TensorFlow import; the rest share the same start-up code.)
REAL = {"eval": "file-corrupt", "masks": "file-corrupt"}


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8")


@pytest.fixture(scope="session")
def results(world, tmp_path_factory, pytestconfig):
    """{(tool, case id): {"rc", "stdout", "stderr"}}, every case run once."""
    tmp = tmp_path_factory.mktemp("cases")
    jobs = {}
    by_tool: dict[str, list] = {}
    full = pytestconfig.getoption("--full-matrix")
    for tool, case_id, argv, _ in _selected(full):
        by_tool.setdefault(tool, []).append({"id": case_id, "argv": [str(a) for a in argv(world)]})
    for tool, case_id, argv in OK_CASES:
        by_tool[tool].append({"id": case_id, "argv": [str(a) for a in argv(world)]})

    def run_server(tool):
        started = time.monotonic()
        cases, out = tmp / f"{tool}.json", tmp / f"{tool}.results.json"
        cases.write_text(json.dumps(by_tool[tool]))
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "cli_cases.py"),
                               tool, str(cases), str(out)], capture_output=True, text=True,
                              env=_env(), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seconds[tool] = time.monotonic() - started
        return {(tool, k): v for k, v in json.loads(out.read_text()).items()}

    def run_real(tool):
        case = next(c for c in by_tool[tool] if c["id"] == REAL[tool])
        # Its own output folders, apart from the forked run's.
        argv = [a.replace(str(world["tmp"] / "train_"), str(world["tmp"] / "real_train_"))
                .replace(str(world["tmp"] / "export_"), str(world["tmp"] / "real_export_"))
                .replace(str(world["tmp"] / "extract_"), str(world["tmp"] / "real_extract_"))
                for a in case["argv"]]
        proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{TOOLS[tool]}.py"),
                               *argv], capture_output=True, text=True, env=_env(),
                              timeout=600)
        return {(tool, "real-" + case["id"]): {"rc": proc.returncode, "stdout": proc.stdout,
                                               "stderr": proc.stderr}}

    found, seconds = {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(by_tool) + len(REAL)) as pool:
        for part in pool.map(lambda job: job[0](job[1]),
                             [(run_server, t) for t in by_tool] + [(run_real, t) for t in REAL]):
            found.update(part)
    if os.environ.get("MGCAM_DUMP_CASES"):   # for debugging the matrix
        pathlib.Path(os.environ["MGCAM_DUMP_CASES"]).write_text(json.dumps(
            {"seconds": seconds, "results": {f"{t}:{c}": r for (t, c), r in found.items()}},
            indent=1))
    return found


def _check(result, culprit):
    lines = result["stderr"].splitlines()
    assert result["rc"] == 1, result
    assert len(lines) == 1, result["stderr"][-3000:]
    assert lines[0].startswith("error: "), lines
    assert culprit in lines[0], (culprit, lines[0])


def _skip_read_only(case_id):
    if "read-only" in case_id and os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder is writable "
                    "(the under-a-file cases cover failed writes)")


@pytest.mark.parametrize("tool,case_id,argv,culprit", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_one_line_naming_the_culprit(results, world, tool, case_id, argv, culprit):
    _skip_read_only(case_id)
    if (tool, case_id) not in results:
        pytest.skip("a model-loading bad-file case left out of the default run "
                    "(pytest --full-matrix runs it)")
    if tool == "masks" and case_id.startswith("file-"):
        _need_mask_model()
    _check(results[(tool, case_id)], culprit(world))


@pytest.mark.parametrize("tool", sorted(REAL))
def test_as_a_plain_subprocess(results, world, tool):
    """The same case run by `python tools/<tool>.py`: nothing else on stderr."""
    if tool == "masks":
        _need_mask_model()
    case = next(c for c in CASES if c[0] == tool and c[1] == REAL[tool])
    _check(results[(tool, "real-" + REAL[tool])], case[3](world))


def _need_mask_model():
    from mgcam_tf.segmentation import model_file

    try:
        model_file.resolve_model_path()
    except Exception as err:  # noqa: BLE001 - the reason goes into the skip
        pytest.skip(f"BlazePose-full model not available ({err}); mgcam-masks needs it")


def test_save_features_records_the_model_and_progress_false_is_quiet(results, world):
    """--save_features stores model_fingerprint (the export's: BASE's newest version);
    --progress=false prints nothing on stderr."""
    from mgcam_tf.serving.loader import SavedModelEmbedder

    out = results[("eval", "ok-save-features")]
    assert out["rc"] == 0 and out["stderr"] == "", out["stderr"][-2000:]
    with np.load(world["tmp"] / "saved.npz") as npz:
        stored = str(npz["model_fingerprint"])
    assert stored == SavedModelEmbedder(world["base"]).fingerprint != world["old_fingerprint"]


def test_features_of_the_same_model_are_accepted(results):
    for key in (("eval", "ok-features-of-this-model"), ("search", "ok-gallery-of-this-model")):
        assert results[key]["rc"] == 0, results[key]["stderr"][-2000:]
    assert "Rank-1" in results[("eval", "ok-features-of-this-model")]["stdout"]
