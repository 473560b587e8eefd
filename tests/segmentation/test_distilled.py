"""The distilled mask network: shapes, the shipped weights and their agreement with
BlazePose-full's masks on the dev split, the batched writer, the segmenter choice in
mgcam-masks, the user-image paths and an export's image-only signatures (the
preset's rank-1/mAP with its masks against BlazePose's). Run with -s for the figures.

Needs ../shared/data (skipped with the reason otherwise); nothing here needs
BlazePose's .tflite: the reference masks are the shared `X_seg` files.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.segmentation import agreement, choice, distilled, graph_masks, writer
from mgcam_tf.segmentation import segmenter as blazepose_segmenter
from harness import ENV, REPO

# The quality bar of issue 25 for a default segmenter: mean mask IoU against
# BlazePose-full's masks on the dev split.
IOU_BAR = 0.90
# What the shipped weights reach (0.889, docs/PERFORMANCE.md "Cheaper masks"):
# below the bar, so the distilled network is an option, not the default.
SHIPPED_IOU_FLOOR = 0.88


@pytest.fixture(scope="module")
def net():
    return distilled.load_mask_net()


def split_files(shared_data, split, limit=None):
    folder = shared_data / "cuhk03_pair1" / split
    images = sorted(str(p) for p in folder.glob("*.jpg"))[:limit]
    refs = [str(folder.parent / f"{split}_seg" / (pathlib.Path(p).stem + ".png"))
            for p in images]
    return images, refs


def test_network_maps_160x64_rgb_to_160x64_logits_and_serialises():
    import keras

    net = distilled.build_mask_net()
    out = net(np.zeros((2, 160, 64, 3), np.float32))
    assert out.shape == (2, 160, 64, 1) and out.dtype == tf.float32
    again = keras.models.model_from_json(net.to_json())
    assert again.count_params() == net.count_params()


def test_shipped_weights_are_small_and_have_their_provenance():
    path = distilled.shipped_weights_path()
    info = distilled.provenance()
    assert path.stat().st_size < 1_000_000
    assert info["weights_bytes"] == path.stat().st_size
    assert "bounding_box_train" in info["training_data"]
    assert info["command"].startswith("nice -n 10 python tools/train_mask_net.py")
    assert 0.0 < info["mean_iou_dev"] <= 1.0


def test_missing_or_foreign_weights_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        distilled.load_mask_net(tmp_path / "none.weights.h5")
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="bad.weights.h5"):
        distilled.load_mask_net(bad)


def test_dev_split_agreement_with_blazepose_masks(net, shared_data):
    ious = []
    for split in ("query", "bounding_box_test"):
        images, refs = split_files(shared_data, split)
        pngs = dict(distilled.mask_pngs(net, images))
        ious += agreement.ious_of_pngs(pngs, refs, images)
    mean = float(np.mean(ious))
    print(f"\ndistilled vs BlazePose-full masks, CUHK03 dev split ({len(ious)} crops): "
          f"mean IoU {mean:.4f}, median {np.median(ious):.4f}, min {min(ious):.4f}")
    assert len(ious) == 975
    assert mean == pytest.approx(distilled.provenance()["mean_iou_dev"], abs=2e-3)
    assert mean >= SHIPPED_IOU_FLOOR


def test_the_default_segmenter_is_distilled_only_if_it_meets_the_bar():
    meets = distilled.provenance()["mean_iou_dev"] >= IOU_BAR
    assert choice.DEFAULT_SEGMENTER == ("distilled" if meets else "blazepose")


def test_one_crop_segmenter_writer_and_graph_agree(net, shared_data, tmp_path):
    images, _ = split_files(shared_data, "query", limit=6)
    outs = [str(tmp_path / "m" / (pathlib.Path(p).stem + ".png")) for p in images]
    assert writer.write_masks(images, outs, segmenter="distilled") == 6
    one = choice.crop_segmenter("distilled")
    graph = graph_masks.graph_masks("distilled", None)
    for image_path, out in zip(images, outs):
        image = blazepose_segmenter.decode_image(image_path)
        mask = one(image)
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(agreement.read_mask(out), mask)
        np.testing.assert_array_equal(graph.crop_masks(tf.constant(image[None]))[0, ..., 0],
                                      mask)
    assert graph.metadata["segmenter"] == "distilled"


def test_writer_skips_existing_masks_and_reports_bad_images(shared_data, tmp_path):
    images, _ = split_files(shared_data, "query", limit=3)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths = images + [str(bad)]
    outs = [str(tmp_path / "m" / (pathlib.Path(p).stem + ".png")) for p in paths]
    with pytest.raises(DataError, match="bad.jpg"):
        writer.write_masks(paths, outs, segmenter="distilled")
    seen, handled = [], []
    written = writer.write_masks(paths, outs, segmenter="distilled",
                                 on_bad_image=lambda p, e: seen.append(p),
                                 progress=handled.append)
    assert seen == [str(bad)] and sum(handled) == 4
    # The first call wrote the three good masks before it met the bad one.
    assert written == 0 and all(os.path.isfile(o) for o in outs[:3])


def test_segmenter_choice_and_its_environment_variable(monkeypatch):
    with pytest.raises(ConfigError, match="blazepose, distilled"):
        choice.check_segmenter("fcn")
    monkeypatch.setenv(choice.SEGMENTER_ENV, "distilled")
    assert choice.resolve(None) == "distilled" and choice.resolve("blazepose") == "blazepose"
    monkeypatch.setenv(choice.SEGMENTER_ENV, "nope")
    with pytest.raises(ConfigError, match="MGCAM_SEGMENTER"):
        choice.default_segmenter()
    monkeypatch.delenv(choice.SEGMENTER_ENV)
    assert choice.resolve("") == choice.DEFAULT_SEGMENTER


def test_an_unnamed_segmenter_is_the_one_its_model_file_belongs_to(tmp_path):
    tflite = tmp_path / "pose_landmark_full.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3")
    assert choice.for_model_file(None, tflite) == "blazepose"
    assert choice.for_model_file(None, distilled.shipped_weights_path()) == "distilled"
    assert choice.for_model_file("distilled", tflite) == "distilled"
    assert choice.for_model_file(None, None) == choice.default_segmenter()


def test_user_images_generate_masks_with_the_named_segmenter(shared_data, tmp_path):
    from mgcam_tf.retrieval import user_images

    images, _ = split_files(shared_data, "query", limit=2)
    masks = user_images.resolve_masks(images, "generate", cache_dir=str(tmp_path / "cache"),
                                      segmenter="distilled")
    want = choice.crop_segmenter("distilled")(blazepose_segmenter.decode_image(images[0]))
    np.testing.assert_array_equal(agreement.read_mask(masks[0]), want)


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "make_masks.py"), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_cli_segmenter_flag(shared_data, tmp_path):
    images, _ = split_files(shared_data, "query", limit=4)
    (tmp_path / "data" / "query").mkdir(parents=True)
    for p in images:
        os.symlink(p, tmp_path / "data" / "query" / pathlib.Path(p).name)
    done = run_cli(f"--data_dir={tmp_path / 'data'}", "--segmenter=distilled", "--noprogress")
    assert done.returncode == 0, done.stderr
    assert "4 masks written (distilled)" in done.stdout
    assert len(list((tmp_path / "data" / "query_seg").glob("*.png"))) == 4
    bad = run_cli(f"--data_dir={tmp_path / 'data'}", "--segmenter=fcn")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: segmenter must be one of")


def test_exported_preset_image_only_retrieval_with_distilled_masks(shared_data, tmp_path):
    """The shipped preset exported with the distilled segmenter: rank-1 and mAP of its
    image-only signature on the dev split against the same export given BlazePose's
    masks (the shared files), single-query protocol as `metrics.evaluate`."""
    from mgcam_tf.evaluation import metrics
    from mgcam_tf.presets import preset_dir
    from mgcam_tf.serving import export

    from mgcam_tf.training import run_dir

    model = run_dir.load_trained_model(preset_dir("mgcam_siamese_cuhk03"))
    target = export.export_saved_model(model, tmp_path / "export",
                                       mask_model_path=distilled.shipped_weights_path(),
                                       segmenter="distilled")
    info = export.read_metadata(target)
    assert info["mask_in_graph"]["segmenter"] == "distilled"
    loaded = tf.saved_model.load(str(target))

    def embed(split, image_only):
        images, refs = split_files(shared_data, split)
        feats = []
        for start in range(0, len(images), 64):
            data = tf.constant([pathlib.Path(p).read_bytes() for p in images[start:start + 64]])
            if image_only:
                out = loaded.signatures[export.SIGNATURE_IMAGE_BYTES](image_bytes=data)
            else:
                masks = tf.constant([pathlib.Path(p).read_bytes()
                                     for p in refs[start:start + 64]])
                out = loaded.signatures[export.SIGNATURE_BYTES](image_bytes=data,
                                                                mask_bytes=masks)
            feats.append(out[export.OUTPUT_EMBEDDING].numpy())
        names = [pathlib.Path(p).name for p in images]
        return (np.concatenate(feats), np.array([int(n[:4]) for n in names]),
                np.array([int(n[6]) for n in names]))

    def scores(image_only):
        (qf, qp, qc), (gf, gp, gc) = (embed(split, image_only)
                                      for split in ("query", "bounding_box_test"))
        return metrics.evaluate(((qf[:, None] - gf[None]) ** 2).sum(-1), qp, qc, gp, gc)

    blaze, ours = scores(False), scores(True)
    print(f"\npreset mgcam_siamese_cuhk03, dev split: BlazePose masks rank-1 "
          f"{100 * blaze.cmc[0]:.2f} mAP {100 * blaze.mAP:.2f}; distilled in-graph rank-1 "
          f"{100 * ours.cmc[0]:.2f} mAP {100 * ours.mAP:.2f}")
    # Measured: rank-1 2 points (4 of 200 queries) below, mAP within 1 point
    # (docs/RESULTS.md, "Masks from the distilled network"); issue 25's bar for
    # a default is 1 point on both, hence BlazePose stays the default.
    assert abs(ours.cmc[0] - blaze.cmc[0]) <= 0.025
    assert abs(ours.mAP - blaze.mAP) <= 0.01


def _tiny_copy(shared_data, name, tmp_path, count=6):
    """A data folder of `count` crops (and their BlazePose masks) per split, as links."""
    root = tmp_path / name
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        for folder in (split, f"{split}_seg"):
            (root / folder).mkdir(parents=True)
        for image in sorted((shared_data / name / split).glob("*.jpg"))[:count]:
            (root / split / image.name).symlink_to(image)
            mask = image.parent.parent / f"{split}_seg" / (image.stem + ".png")
            (root / f"{split}_seg" / mask.name).symlink_to(mask)
    return root


def test_train_mask_net_trains_on_extra_folders_and_records_them(shared_data, tmp_path):
    """tools/train_mask_net.py --extra_train_dirs: the extra folders' training crops are
    trained on (the count says so), named in the provenance and its command; a folder
    without bounding_box_train is refused in one line naming it."""
    import json

    from harness import assert_one_line_error, run_tool

    detected = _tiny_copy(shared_data, "cuhk03_pair1", tmp_path)
    labeled = _tiny_copy(shared_data, "cuhk03_pair1_labeled", tmp_path)
    out = tmp_path / "out"
    proc = run_tool("train_mask_net", f"--data_dir={detected}",
                    f"--extra_train_dirs={labeled}", "--epochs=1", "--batch_size=4",
                    f"--output_dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training on 12 crops" in proc.stdout
    info = json.loads((out / distilled.PROVENANCE_FILE).read_text())
    assert "cuhk03_pair1/bounding_box_train (6 crops)" in info["training_data"]
    assert "cuhk03_pair1_labeled/bounding_box_train (6 crops)" in info["training_data"]
    assert f"--extra_train_dirs={labeled}" in info["command"]
    assert 0.0 <= info["mean_iou_dev"] <= 1.0
    assert distilled.load_mask_net(out / distilled.WEIGHTS_FILE).count_params() > 0
    proc = run_tool("train_mask_net", f"--data_dir={detected}",
                    f"--extra_train_dirs={tmp_path / 'nowhere'}", "--epochs=1",
                    f"--output_dir={tmp_path / 'out2'}")
    assert_one_line_error(proc, "--extra_train_dirs", "nowhere")
    assert not (tmp_path / "out2" / distilled.WEIGHTS_FILE).exists()
