"""tf.data builders: batch format, mirroring, seeds, caches and bad files."""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.data import pipeline
from mgcam_tf.data.layouts import Split, load_dataset
from mgcam_tf.data.preprocess import preprocess
from mgcam_tf.errors import ConfigError, DataError


def _split_of(paths, masks, pids, camids=None) -> Split:
    return Split(tuple(str(p) for p in paths),
                 tuple(None if m is None else str(m) for m in masks),
                 np.asarray(pids, np.int64),
                 np.asarray(camids if camids is not None else [1] * len(pids), np.int64))


def _write_sample(folder: pathlib.Path, name: str, image: np.ndarray, mask: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    image_path, mask_path = folder / f"{name}.png", folder / f"{name}_mask.png"
    image_path.write_bytes(tf.io.encode_png(image).numpy())
    mask_path.write_bytes(tf.io.encode_png(mask).numpy())
    return image_path, mask_path


def _asymmetric_sample(tmp_path, name="s", value=100):
    """A 160x64 image bright on the left, its mask body on the left."""
    image = np.full((160, 64, 3), value, np.uint8)
    image[:, :16] = 250
    mask = np.zeros((160, 64, 1), np.uint8)
    mask[:, :32] = 255
    return image, mask, _write_sample(tmp_path, name, image, mask)


@pytest.fixture(scope="module")
def market(shared_data):
    return load_dataset(shared_data / "market1501_mini")


def test_train_batch_format(market):
    ds = pipeline.train_dataset(market.train, 8, seed=0)
    x, y = next(iter(ds))
    assert set(x) == {"rgbm"} and set(y) == {"pid", "attention_target"}
    assert x["rgbm"].shape == (8, 160, 64, 4) and x["rgbm"].dtype == tf.float32
    assert y["pid"].dtype == tf.int32 and y["pid"].shape == (8,)
    assert y["attention_target"].shape == (8, 40, 16, 1)
    assert 0.0 <= float(tf.reduce_min(y["attention_target"]))
    assert float(tf.reduce_max(y["attention_target"])) <= 1.0
    assert set(y["pid"].numpy().tolist()) <= set(range(market.num_train_ids))


def test_train_repeats_forever_and_one_epoch_when_asked(market):
    forever = pipeline.train_dataset(market.train, 12, seed=0)
    assert len(list(forever.take(5))) == 5          # 60 > 32 images: it repeats
    one = pipeline.train_dataset(market.train, 12, seed=0, repeat=False)
    assert [int(x["rgbm"].shape[0]) for x, _ in one] == [12, 12, 8]
    dropped = pipeline.train_dataset(market.train, 12, seed=0, repeat=False,
                                     drop_remainder=True)
    assert [int(x["rgbm"].shape[0]) for x, _ in dropped] == [12, 12]


def test_train_epoch_visits_every_image_once(market):
    ds = pipeline.train_dataset(market.train, 32, seed=3, repeat=False, mirror=False)
    _, y = next(iter(ds))
    assert sorted(y["pid"].numpy().tolist()) == sorted(market.train.pids.tolist())


def test_seed_repeatability(market):
    def first_batches(seed):
        ds = pipeline.train_dataset(market.train, 8, seed=seed)
        return [(x["rgbm"].numpy(), y["pid"].numpy()) for x, y in ds.take(3)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for (xa, pa), (xb, pb) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(xa, xb)
    assert any(not np.array_equal(pa, pc) for (_, pa), (_, pc) in zip(a, c))


def test_eval_file_order_no_mirror(market):
    ds = pipeline.eval_dataset(market.query, 10)
    batches = list(ds)
    assert [int(b["rgbm"].shape[0]) for b in batches] == [10, 10, 10, 2]
    assert isinstance(batches[0], dict) and set(batches[0]) == {"rgbm"}
    # The first element equals preprocess of the first file, unmirrored.
    image = tf.io.decode_image(tf.io.read_file(market.query.image_paths[0]), channels=3)
    mask = tf.io.decode_image(tf.io.read_file(market.query.mask_paths[0]), channels=1)
    expected = preprocess(image, mask)["rgbm"].numpy()
    np.testing.assert_allclose(batches[0]["rgbm"][0].numpy(), expected, atol=1e-6)


def test_mirror_flips_image_mask_and_target_together(tmp_path):
    image, mask, (ip, mp) = _asymmetric_sample(tmp_path)
    split = _split_of([ip] * 64, [mp] * 64, [0] * 64)
    ds = pipeline.train_dataset(split, 64, seed=1, shuffle=False)
    x, y = next(iter(ds))
    plain = preprocess(image, mask)
    rgbm, target = x["rgbm"].numpy(), y["attention_target"].numpy()
    flipped = np.array([not np.array_equal(r, plain["rgbm"].numpy()) for r in rgbm])
    assert 10 < flipped.sum() < 54                      # p = 0.5
    for r, t, f in zip(rgbm, target, flipped):
        ref = preprocess(image, mask, mirror=bool(f))
        np.testing.assert_allclose(r, ref["rgbm"].numpy(), atol=1e-6)
        np.testing.assert_allclose(t, ref["attention_target"].numpy(), atol=1e-6)
    no_mirror = pipeline.train_dataset(split, 64, seed=1, mirror=False)
    x, _ = next(iter(no_mirror))
    np.testing.assert_allclose(x["rgbm"].numpy(),
                               np.broadcast_to(plain["rgbm"].numpy(), (64, 160, 64, 4)),
                               atol=1e-6)


def test_memory_cache_gives_same_samples_and_fresh_flips(market):
    plain = pipeline.train_dataset(market.train, 32, seed=2, repeat=False, mirror=False,
                                   shuffle=False)
    cached = pipeline.train_dataset(market.train, 32, seed=2, repeat=False, mirror=False,
                                    shuffle=False, cache=True)
    (x_p, y_p), = list(plain)
    for _ in range(2):   # the second pass reads the cache
        (x_c, y_c), = list(cached)
        np.testing.assert_array_equal(x_c["rgbm"].numpy(), x_p["rgbm"].numpy())
        np.testing.assert_array_equal(y_c["pid"].numpy(), y_p["pid"].numpy())
    # Mirroring happens after the cache: the epochs flip different samples.
    mirrored = pipeline.train_dataset(market.train, 32, seed=2, repeat=False, shuffle=False,
                                      cache=True)
    epochs = [next(iter(mirrored))[0]["rgbm"].numpy() for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1])


def test_file_cache_writes_named_file(tmp_path, market):
    prefix = tmp_path / "cache" / "train"
    prefix.parent.mkdir()
    ds = pipeline.train_dataset(market.train, 16, seed=0, cache=str(prefix), repeat=False)
    first = [y["pid"].numpy() for _, y in ds]
    files = os.listdir(prefix.parent)
    assert any(f.startswith("train.") and f.endswith(".index") for f in files)
    assert not any(f.endswith(".lockfile") for f in files)
    second = [y["pid"].numpy() for _, y in ds]
    assert sorted(np.concatenate(first).tolist()) == sorted(np.concatenate(second).tolist())
    with pytest.raises(ConfigError, match="does not exist"):
        pipeline.train_dataset(market.train, 16, seed=0, cache=str(tmp_path / "no" / "c"))
    # A run killed while writing leaves tf.data's lock file: a clear error now.
    index = next(f for f in files if f.endswith(".index"))
    lockfile = prefix.parent / (index[: -len(".index")] + "_0.lockfile")
    other = tmp_path / "other"
    other.mkdir()
    stale = other / lockfile.name
    stale.write_text("Created at: 0")
    with pytest.raises(ConfigError, match=r"_0\.lockfile exists"):
        pipeline.train_dataset(market.train, 16, seed=0, cache=str(other / "train"))


def test_cache_off_words_write_no_file(tmp_path, market, monkeypatch):
    """--cache=none (or off) means no cache, not a cache file called none.* here."""
    monkeypatch.chdir(tmp_path)
    for word in ("none", "OFF", "false"):
        ds = pipeline.train_dataset(market.train, 16, seed=0, cache=word, repeat=False)
        assert sum(int(y["pid"].shape[0]) for _, y in ds) > 0
    assert os.listdir(tmp_path) == []
    ds = pipeline.train_dataset(market.train, 16, seed=0, cache="./none", repeat=False)
    list(ds)
    assert any(f.startswith("none.") and f.endswith(".index") for f in os.listdir(tmp_path))


def test_full_body_mask_when_none(tmp_path):
    image, _, (ip, _) = _asymmetric_sample(tmp_path)
    _, _, (ip2, mp2) = _asymmetric_sample(tmp_path, "t")
    split = _split_of([ip, ip2], [None, mp2], [0, 1])
    batch = next(iter(pipeline.eval_dataset(split, 2)))["rgbm"].numpy()
    np.testing.assert_allclose(batch[0, ..., 3], 0.5)   # (255 - 127.5) / 255
    assert batch[1, 0, -1, 3] == pytest.approx(-0.5)


def _expect_named_error(split, path, fragment="cannot read or decode"):
    """Every builder stops with an error that names the bad file."""
    for ds in (pipeline.eval_dataset(split, 2),
               pipeline.train_dataset(split, 2, seed=0, repeat=False),
               pipeline.train_dataset(split, 2, seed=0, cache=True)):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            list(ds.take(3))
        message = str(info.value)
        assert "mgcam_tf:" in message and str(path) in message, message
        assert fragment in message
        # The one-line DataError the command-line layer prints.
        error = pipeline.data_error_from(info.value)
        assert isinstance(error, DataError) and str(path) in str(error)
        assert "\n" not in str(error) and "assertion failed" not in str(error)
        assert "\\'" not in str(error)
    assert pipeline.data_error_from(ValueError("other")) is None


def test_zero_byte_jpeg_names_the_file(tmp_path):
    _, _, (ip, mp) = _asymmetric_sample(tmp_path)
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    _expect_named_error(_split_of([ip, bad], [mp, mp], [0, 1]), bad)
    _expect_named_error(_split_of([bad, ip, ip], [mp, mp, mp], [0, 1, 2]), bad)


def test_truncated_jpeg_names_the_file(tmp_path):
    _, _, (ip, mp) = _asymmetric_sample(tmp_path)
    data = tf.io.encode_jpeg(np.full((160, 64, 3), 128, np.uint8)).numpy()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    _expect_named_error(_split_of([ip, bad], [mp, mp], [0, 1]), bad)


def test_not_an_image_names_the_file(tmp_path):
    _, _, (ip, mp) = _asymmetric_sample(tmp_path)
    bad = tmp_path / "page.jpg"
    bad.write_bytes(b"<html>404 not found</html>")
    _expect_named_error(_split_of([bad, ip], [mp, mp], [0, 1]), bad, "not a JPEG")
    bad_mask = tmp_path / "mask.png"
    bad_mask.write_bytes(b"")
    _expect_named_error(_split_of([ip, ip], [mp, bad_mask], [0, 1]), bad_mask)
    _expect_named_error(_split_of([ip], [tmp_path / "gone.png"], [0]), "gone.png")


def test_corrupt_middle_names_the_file(tmp_path):
    _, _, (ip, mp) = _asymmetric_sample(tmp_path)
    data = bytearray(tf.io.encode_jpeg(
        np.random.default_rng(0).integers(0, 255, (160, 64, 3), np.uint8)).numpy())
    data[400:700] = os.urandom(300)
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(bytes(data))
    split = _split_of([ip, bad, ip], [mp, mp, mp], [0, 1, 2])
    _expect_named_error(split, bad)
    with pytest.raises(DataError, match=r"1 of 3 .*noise\.jpg"):
        pipeline.verify_images(split)
    pipeline.verify_images(_split_of([ip], [mp], [0]))   # no error


def test_mask_size_mismatch(tmp_path):
    image, _, (ip, _) = _asymmetric_sample(tmp_path)
    small = tmp_path / "small_mask.png"
    small.write_bytes(tf.io.encode_png(np.full((80, 32, 1), 255, np.uint8)).numpy())
    split = _split_of([ip], [small], [0])
    _expect_named_error(split, small, "has size")
    with pytest.raises(DataError, match=r"small_mask\.png \(size differs"):
        pipeline.verify_images(split)
    ds = pipeline.eval_dataset(split, 1, mask_size_mismatch="resize")
    np.testing.assert_allclose(next(iter(ds))["rgbm"][0, ..., 3].numpy(), 0.5)


def test_grayscale_and_rgba_images(tmp_path):
    gray = tmp_path / "gray.jpg"
    gray.write_bytes(tf.io.encode_jpeg(np.full((128, 64, 1), 90, np.uint8)).numpy())
    rgba = np.zeros((128, 64, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 60, 10
    rgba_path = tmp_path / "rgba.png"
    rgba_path.write_bytes(tf.io.encode_png(rgba).numpy())
    soft = tmp_path / "soft.png"
    soft.write_bytes(tf.io.encode_png(np.full((128, 64, 1), 51, np.uint8)).numpy())
    batch = next(iter(pipeline.eval_dataset(_split_of([gray, rgba_path], [soft, soft],
                                                      [0, 1]), 2)))["rgbm"].numpy()
    np.testing.assert_allclose(batch[1, ..., 0], (60 - 122.675) / 256, rtol=1e-5)
    np.testing.assert_allclose(batch[..., 3], (51 - 127.5) / 255, rtol=1e-5)
    assert abs(batch[0, 50, 30, 0] - (90 - 122.675) / 256) < 3 / 256


def test_bad_arguments(market):
    with pytest.raises(ConfigError):
        pipeline.train_dataset(market.train, 0, seed=0)
    with pytest.raises(ConfigError, match="mask_size_mismatch"):
        pipeline.eval_dataset(market.query, 4, mask_size_mismatch="crop")


def test_pair_batches_interleaved_with_enough_positives(market):
    ds = pipeline.pair_dataset(market.train, 10, positive_fraction=0.3, seed=4)
    for x, y in ds.take(4):
        pid = y["pid"].numpy()
        assert x["rgbm"].shape == (20, 160, 64, 4) and set(y) == {"pid", "attention_target"}
        positive = pid[0::2] == pid[1::2]          # sample 2i pairs with 2i + 1
        assert positive.mean() >= 0.3
        assert positive.sum() == 3                 # ceil(0.3 * 10), the rest negative
    all_positive = pipeline.pair_dataset(market.train, 4, positive_fraction=1.0, seed=0)
    _, y = next(iter(all_positive))
    assert (y["pid"].numpy()[0::2] == y["pid"].numpy()[1::2]).all()


def test_positive_pairs_are_two_different_images(tmp_path):
    # Two ids of two images each, every image a different constant colour.
    paths, masks = [], []
    for i in range(4):
        image = np.full((160, 64, 3), 40 * i, np.uint8)
        ip, mp = _write_sample(tmp_path, f"s{i}", image, np.full((160, 64, 1), 255, np.uint8))
        paths.append(ip)
        masks.append(mp)
    split = _split_of(paths, masks, [0, 0, 1, 1])
    ds = pipeline.pair_dataset(split, 6, positive_fraction=1.0, seed=1, mirror=False)
    x, _ = next(iter(ds))
    colours = x["rgbm"].numpy()[:, 0, 0, 0]
    assert (colours[0::2] != colours[1::2]).all()


def test_pk_batch_structure(market):
    ds = pipeline.pk_dataset(market.train, 4, 3, seed=0)
    for x, y in ds.take(3):
        pid = y["pid"].numpy().reshape(4, 3)
        assert x["rgbm"].shape == (12, 160, 64, 4)
        assert (pid == pid[:, :1]).all()           # K images of one id in a row
        assert len(set(pid[:, 0])) == 4            # P different ids
    with pytest.raises(DataError, match="p=17 different ids"):
        pipeline.pk_dataset(market.train, 17, 2, seed=0)


def test_pk_distinct_images_when_enough(tmp_path):
    paths, masks = [], []
    for i in range(6):
        ip, mp = _write_sample(tmp_path, f"s{i}", np.full((160, 64, 3), 30 * i, np.uint8),
                               np.full((160, 64, 1), 255, np.uint8))
        paths.append(ip)
        masks.append(mp)
    # id 0 has 4 images (K = 3 distinct), id 1 has 2 (sampled with replacement).
    split = _split_of(paths, masks, [0, 0, 0, 0, 1, 1])
    ds = pipeline.pk_dataset(split, 2, 3, seed=3, mirror=False)
    for x, y in ds.take(5):
        colours = x["rgbm"].numpy()[:, 0, 0, 0].reshape(2, 3)
        pid = y["pid"].numpy().reshape(2, 3)
        for row, ids in zip(colours, pid):
            if ids[0] == 0:
                assert len(set(row)) == 3


def test_pair_and_pk_seeded_and_cached(market):
    def pids(ds):
        return [y["pid"].numpy() for _, y in ds.take(3)]

    for make in (lambda **kw: pipeline.pair_dataset(market.train, 6, seed=9, **kw),
                 lambda **kw: pipeline.pk_dataset(market.train, 3, 2, seed=9, **kw)):
        a, b, c = pids(make()), pids(make()), pids(make(cache="memory"))
        for pa, pb, pc in zip(a, b, c):
            np.testing.assert_array_equal(pa, pb)
            np.testing.assert_array_equal(pa, pc)   # the cache changes nothing drawn
        x_plain, _ = next(iter(make(mirror=False)))
        x_cached, _ = next(iter(make(mirror=False, cache=True)))
        np.testing.assert_array_equal(x_plain["rgbm"].numpy(), x_cached["rgbm"].numpy())


def test_pair_bad_arguments(market):
    with pytest.raises(ConfigError, match="positive_fraction"):
        pipeline.pair_dataset(market.train, 4, positive_fraction=1.5, seed=0)
    one_id = _split_of(market.train.image_paths[:2], market.train.mask_paths[:2], [0, 0])
    with pytest.raises(DataError, match="one id"):
        pipeline.pair_dataset(one_id, 4, seed=0)
    singles = _split_of(market.train.image_paths[:3], market.train.mask_paths[:3], [0, 1, 2])
    with pytest.raises(DataError, match="two images"):
        pipeline.pair_dataset(singles, 4, seed=0)


def test_non_ascii_paths_are_read(tmp_path):
    # numpy's astype(bytes) is ASCII: paths like these crashed every command.
    image, mask, (image_path, mask_path) = _asymmetric_sample(tmp_path / "dätä set", "ünï")
    split = _split_of([image_path], [mask_path], [0])
    (batch,) = list(pipeline.eval_dataset(split, 1))
    want = preprocess(tf.constant(image[None]), tf.constant(mask[None]))["rgbm"]
    np.testing.assert_allclose(batch["rgbm"].numpy(), want.numpy(), atol=1e-6)
    bad = _split_of([tmp_path / "dätä set" / "lïes.png"], [None], [0])
    with pytest.raises(Exception) as err:
        list(pipeline.eval_dataset(bad, 1))
    assert "lïes.png" in str(pipeline.data_error_from(err.value) or err.value)
