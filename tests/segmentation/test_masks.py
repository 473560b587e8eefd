"""Body masks (BlazePose-full): the recipe against the shared masks, resuming, atomic
writes, folder mapping, the model file's checks and the mgcam-masks command.

Tests that run the model need `pose_landmark_full.tflite`: `$MGCAM_MASK_MODEL`
(the file, or the mediapipe 0.10.21 wheel), else it is fetched once with pip
into the cache (`$MGCAM_CACHE_DIR` or ~/.cache/mgcam_tf). Without network
access and without the file they are skipped, with the reason.
"""

import os
import pathlib
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from mgcam_tf.segmentation import model_file
from mgcam_tf.segmentation import segmenter
from mgcam_tf.segmentation import writer
from mgcam_tf.errors import ConfigError, DataError, MgcamError
from harness import run_tool



def read_png(path) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_png(tf.io.read_file(str(path)), channels=1).numpy()[..., 0]


def copy_images(src: pathlib.Path, dst: pathlib.Path, limit=None) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.iterdir() if p.suffix == ".jpg")[:limit]
    for name in names:
        shutil.copyfile(src / name, dst / name)
    return [str(dst / n) for n in names]


def mean_iou(mask_paths, reference_dir: pathlib.Path) -> float:
    ious = []
    for path in mask_paths:
        ours = read_png(path) > 127
        ref = read_png(reference_dir / pathlib.Path(path).name) > 127
        assert ours.shape == ref.shape, path
        ious.append((ours & ref).sum() / max((ours | ref).sum(), 1))
    return float(np.mean(ious))


# ------------------------------------------------------------------------------
# The recipe against the masks in ../shared/data

def test_masks_of_the_200_cuhk03_queries_match_the_shared_ones(shared_data, mask_model,
                                                                 tmp_path):
    # Crops larger than the letterbox: the shrinking (INTER_AREA) path.
    images = copy_images(shared_data / "cuhk03_pair1" / "query", tmp_path / "query")
    assert len(images) == 200
    out = [str(tmp_path / "query_seg" / (pathlib.Path(p).stem + ".png")) for p in images]
    assert writer.write_masks(images, out, model_path=str(mask_model)) == 200
    iou = mean_iou(out, shared_data / "cuhk03_pair1" / "query_seg")
    assert iou >= 0.98, iou


def test_masks_of_small_market_crops_match_the_shared_ones(shared_data, mask_model, tmp_path):
    # 64x128 crops grow into the letterbox: the INTER_LINEAR path.
    root = shared_data / "market1501_mini"
    images = copy_images(root / "query", tmp_path / "query")
    out = [str(tmp_path / "query_seg" / (pathlib.Path(p).stem + ".png")) for p in images]
    writer.write_masks(images, out, model_path=str(mask_model), num_workers=1)
    iou = mean_iou(out, root / "query_seg")
    assert iou >= 0.98, iou


def test_area_shrink_and_linear_grow_match_opencv_bytes():
    # Expected values computed with cv2.resize (opencv-python-headless 5.0) on
    # this seeded image; OpenCV is not a dependency, so they are written out.
    rng = np.random.default_rng(0)
    image = np.repeat(rng.integers(0, 256, (7, 6, 1), dtype=np.uint8), 3, axis=2)
    area = [[95, 145, 214, 207], [158, 75, 154, 192], [163, 127, 85, 78],
            [74, 88, 97, 94], [98, 64, 154, 61]]
    linear = [[95, 100, 115, 130, 157, 185, 194], [81, 89, 112, 135, 149, 163, 167],
              [46, 61, 105, 150, 127, 103, 95], [28, 47, 106, 164, 108, 51, 32],
              [132, 138, 157, 176, 111, 46, 25], [235, 228, 208, 187, 114, 41, 17],
              [231, 219, 182, 146, 115, 85, 75], [212, 195, 146, 96, 117, 137, 143],
              [205, 187, 132, 78, 117, 156, 169]]
    shrunk = segmenter.letterbox_resize(image, 5, 4)
    grown = segmenter.letterbox_resize(np.ascontiguousarray(image[:4, :3]), 9, 7)
    for c in range(3):
        assert shrunk[..., c].tolist() == area
        assert grown[..., c].tolist() == linear
    # Integer factors take OpenCV's fast path, whose 2x2 kernel rounds half up.
    block = np.array([[0, 1], [0, 1]], np.uint8)[..., None].repeat(3, axis=2)
    assert segmenter.letterbox_resize(block, 1, 1).tolist() == [[[1, 1, 1]]]


def test_segmenter_gives_a_0_255_mask_of_the_crop_size(shared_data, mask_model):
    image = segmenter.decode_image(str(next((shared_data / "cuhk03_pair1" / "query").glob("*.jpg"))))
    mask = segmenter.BodySegmenter(mask_model)(image)
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}
    assert 0.1 < (mask > 0).mean() < 0.9      # a person, not all or nothing


# ------------------------------------------------------------------------------
# write_masks: resume, atomic writes, bad images

def test_existing_masks_are_skipped_and_the_rest_counted(shared_data, mask_model, tmp_path):
    images = copy_images(shared_data / "cuhk03_pair1" / "query", tmp_path / "query", limit=6)
    out = [str(tmp_path / "query_seg" / (pathlib.Path(p).stem + ".png")) for p in images]
    os.makedirs(tmp_path / "query_seg")
    for path in out[:4]:            # as if a killed run had written these
        pathlib.Path(path).write_bytes(b"kept")
    calls = []
    assert writer.write_masks(images, out, model_path=str(mask_model), progress=calls.append) == 2
    assert sum(calls) == 6 and calls[0] == 4
    assert all(pathlib.Path(p).read_bytes() == b"kept" for p in out[:4])
    assert all(read_png(p).shape == segmenter.decode_image(i).shape[:2]
               for i, p in zip(images[4:], out[4:]))
    # Everything there: nothing to do, the model is not even looked for.
    assert writer.write_masks(images, out, model_path="/nonexistent/model.tflite") == 0


def test_masks_are_written_under_a_temporary_name(shared_data, mask_model, tmp_path,
                                                 monkeypatch):
    images = copy_images(shared_data / "cuhk03_pair1" / "query", tmp_path / "query", limit=3)
    out = [str(tmp_path / "seg" / (pathlib.Path(p).stem + ".png")) for p in images]
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", replace)
    assert writer.write_masks(images, out, model_path=str(mask_model)) == 3
    assert sorted(dst for _, dst in renamed) == sorted(os.path.basename(p) for p in out)
    assert all(src.startswith(".") and src.endswith(".tmp") for src, _ in renamed)
    assert sorted(os.listdir(tmp_path / "seg")) == sorted(os.path.basename(p) for p in out)

    # A write that fails leaves neither the mask nor its temporary file.
    def failing(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "replace", failing)
    with pytest.raises(DataError, match="cannot write the mask"):
        writer.write_masks(images[:1], [str(tmp_path / "seg2" / "a.png")],
                          model_path=str(mask_model))
    assert os.listdir(tmp_path / "seg2") == []


def test_corrupt_image_is_named_or_skipped_when_asked(shared_data, mask_model, tmp_path):
    images = copy_images(shared_data / "cuhk03_pair1" / "query", tmp_path / "query", limit=2)
    bad = tmp_path / "query" / "broken.jpg"
    good_bytes = pathlib.Path(images[0]).read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])        # truncated JPEG
    paths = images + [str(bad)]
    out = [str(tmp_path / "seg" / (pathlib.Path(p).stem + ".png")) for p in paths]
    with pytest.raises(DataError, match="broken.jpg"):
        writer.write_masks(paths, out, model_path=str(mask_model), num_workers=1)
    skipped = []
    written = writer.write_masks(paths, out, model_path=str(mask_model),
                                on_bad_image=lambda p, e: skipped.append(p))
    assert skipped == [str(bad)] and not os.path.exists(out[-1])
    assert written + sum(os.path.exists(p) for p in out[:2]) >= 2


def test_decode_image_names_the_file(tmp_path):
    for name, data in [("garbage.jpg", b"not an image"), ("empty.png", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=name):
            segmenter.decode_image(str(tmp_path / name))
    with pytest.raises(DataError, match="missing.jpg"):
        segmenter.decode_image(str(tmp_path / "missing.jpg"))


def test_write_masks_rejects_mismatched_lists():
    with pytest.raises(ConfigError):
        writer.write_masks(["a.jpg"], [])


# ------------------------------------------------------------------------------
# Folders

def touch(root: pathlib.Path, *paths: str) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"")


def test_mask_folders_put_seg_on_the_split_folder(tmp_path):
    touch(tmp_path, "query/0001_c1s1_000001_00.jpg", "bounding_box_train/0002_c2.PNG",
          "query_seg/0001_c1s1_000001_00.png",                # a mask folder: not scanned
          "bbox_train/0001/0001C1T0001F001.jpg", "bbox_test/00-1/00-1C1T0001F001.jpg",
          "bbox_train_seg/0001/0001C1T0001F001.png", "info/tracks_test_info.mat",
          ".hidden/x.jpg", "labeled/bounding_box_test/0003_c1.bmp",
          "mine/cam1/p.jpeg", "mine/notes.txt")
    d = str(tmp_path)
    assert writer.mask_folders(d) == sorted([
        (f"{d}/bbox_test/00-1", f"{d}/bbox_test_seg/00-1"),
        (f"{d}/bbox_train/0001", f"{d}/bbox_train_seg/0001"),
        (f"{d}/bounding_box_train", f"{d}/bounding_box_train_seg"),
        (f"{d}/labeled/bounding_box_test", f"{d}/labeled/bounding_box_test_seg"),
        (f"{d}/mine/cam1", f"{d}/mine_seg/cam1"),
        (f"{d}/query", f"{d}/query_seg"),
    ])
    images, out = writer.mask_jobs(d)
    assert dict(zip(images, out))[f"{d}/bbox_train/0001/0001C1T0001F001.jpg"] == \
        f"{d}/bbox_train_seg/0001/0001C1T0001F001.png"
    assert dict(zip(images, out))[f"{d}/bounding_box_train/0002_c2.PNG"] == \
        f"{d}/bounding_box_train_seg/0002_c2.png"
    # A split folder itself, or a folder of images: the mask folder goes beside it.
    assert writer.mask_folders(f"{d}/bbox_train") == [
        (f"{d}/bbox_train/0001", f"{d}/bbox_train_seg/0001")]
    assert writer.mask_folders(f"{d}/query") == [(f"{d}/query", f"{d}/query_seg")]


def test_mask_folders_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        writer.mask_folders(str(tmp_path / "absent"))
    with pytest.raises(DataError, match="no images"):
        writer.mask_folders(str(tmp_path))
    touch(tmp_path, "q/a.jpg", "q/a.png")
    with pytest.raises(DataError, match="a.png"):
        writer.mask_jobs(str(tmp_path))
    touch(tmp_path, "q_seg/a.png")
    with pytest.raises(DataError, match="mask folder"):
        writer.mask_folders(str(tmp_path / "q_seg"))


# ------------------------------------------------------------------------------
# The model file

def fake_wheel(path: pathlib.Path, model_bytes: bytes | None) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mediapipe/__init__.py", "")
        if model_bytes is not None:
            zf.writestr(model_file.MODEL_MEMBER, model_bytes)
    return path


def test_model_with_a_wrong_sha256_is_rejected(tmp_path, monkeypatch):
    wrong = tmp_path / "pose_landmark_full.tflite"
    wrong.write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="sha256.*--model_path"):
        model_file.resolve_model_path(str(wrong))

    # A downloaded wheel whose model has a wrong hash: refused, nothing cached.
    def download(dest):
        return fake_wheel(dest / "mediapipe-0.10.21-x.whl", b"tampered")

    monkeypatch.setattr(model_file, "_download_wheel", download)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="sha256") as err:
        model_file.fetch_model(cache)
    assert model_file.MODEL_MEMBER in str(err.value) and "--model_path" in str(err.value)
    assert not (cache / model_file.MODEL_FILENAME).exists()

    with pytest.raises(DataError, match="holds no"):
        model_file.fetch_model(tmp_path / "c2", wheel_path=fake_wheel(tmp_path / "w.whl", None))
    with pytest.raises(DataError, match="model file not found"):
        model_file.resolve_model_path(str(tmp_path / "absent.tflite"))


def test_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and model_file.MEDIAPIPE_REQUIREMENT in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution "
                                           "found for mediapipe==0.10.21\n")

    monkeypatch.setattr(model_file.subprocess, "run", pip)
    with pytest.raises(MgcamError, match="No matching distribution.*--model_path"):
        model_file.fetch_model(tmp_path)


def test_model_comes_out_of_a_wheel_and_is_cached(mask_model, tmp_path, monkeypatch):
    wheel = fake_wheel(tmp_path / "mediapipe-0.10.21-x.whl", mask_model.read_bytes())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / model_file.MODEL_FILENAME).write_bytes(b"a stale, corrupt file")
    monkeypatch.setattr(model_file, "_download_wheel", lambda dest: shutil.copy(wheel, dest) and
                        pathlib.Path(dest) / wheel.name)
    path = model_file.fetch_model(cache)
    assert path == cache / model_file.MODEL_FILENAME
    assert model_file._sha256(path.read_bytes()) == model_file.MODEL_SHA256
    assert sorted(os.listdir(cache)) == [model_file.MODEL_FILENAME]     # no temporaries left

    def no_download(dest):
        raise AssertionError("a verified cached model must not be downloaded again")

    monkeypatch.setattr(model_file, "_download_wheel", no_download)
    assert model_file.fetch_model(cache) == path
    # --model_path may name the wheel itself.
    assert model_file.resolve_model_path(str(wheel), cache_dir=tmp_path / "c3") == \
        tmp_path / "c3" / model_file.MODEL_FILENAME


# ------------------------------------------------------------------------------
# mgcam-masks

def mgcam_masks(*args, env=None, timeout=300):
    return run_tool("make_masks", *args, env=env, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_cli_fails_in_one_line_on_missing_or_empty_data_dir(tmp_path):
    assert_one_line_error(mgcam_masks(f"--data_dir={tmp_path / 'absent'}"),
                          str(tmp_path / "absent"), "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(mgcam_masks(f"--data_dir={tmp_path / 'empty'}"), "no images")


def test_cli_writes_masks_beside_splits_and_resumes(shared_data, mask_model, tmp_path):
    data = tmp_path / "data"
    copy_images(shared_data / "cuhk03_pair1" / "query", data / "query", limit=3)
    mars = sorted((shared_data / "mars_mini" / "bbox_train").glob("*/*.jpg"))[:2]
    for p in mars:
        (data / "bbox_train" / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, data / "bbox_train" / p.parent.name / p.name)
    (data / "query" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    proc = mgcam_masks(f"--data_dir={data}", f"--model_path={mask_model}")
    assert_one_line_error(proc, "zz_broken.jpg")
    proc = mgcam_masks(f"--data_dir={data}", f"--model_path={mask_model}", "--skip_bad_images")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 bad images skipped" in proc.stdout and "zz_broken.jpg" in proc.stderr
    assert len(list((data / "query_seg").glob("*.png"))) == 3
    for p in mars:
        assert (data / "bbox_train_seg" / p.parent.name / (p.stem + ".png")).is_file()
    os.remove(next((data / "query_seg").glob("*.png")))
    again = mgcam_masks(f"--data_dir={data}", "--skip_bad_images",
                        env={model_file.ENV_MODEL: str(mask_model)})
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith("1 masks written") and "4 already there" in again.stdout


def test_symlinked_split_folders_are_followed(tmp_path):
    # Training follows symlinked folders; mgcam-masks must see the same images.
    real = tmp_path / "store" / "query"
    real.mkdir(parents=True)
    (real / "0001_c1s1_000001_00.jpg").write_bytes(b"\xff\xd8\xff fake")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(real, data / "query")
    images, masks = writer.mask_jobs(str(data))
    assert [os.path.basename(p) for p in images] == ["0001_c1s1_000001_00.jpg"]
    assert masks == [str(data / "query_seg" / "0001_c1s1_000001_00.png")]
