"""mgcam-extract reruns follow the images, and the index follows the feature folder (issue 27).

A rerun into a finished folder re-embeds what changed (added images,
images overwritten in place, changed masks), drops removed images and
reuses the rest; `--index_dir` given the same folder again replaces its
rows when its content changed. NaN/Inf features are refused at every entry.
"""

import os
import shutil

import numpy as np
import pytest

from mgcam_tf.errors import DataError
from mgcam_tf.retrieval import extraction, index
from mgcam_tf.serving.loader import SavedModelEmbedder

from serving_standins import shared_export

from .test_search import fake_segmenter, write_images

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def embedder():
    return SavedModelEmbedder(shared_export()[1].parent)


class Counting:
    """The embedder, counting the images it embeds."""

    def __init__(self, embedder):
        self._embedder = embedder
        self.embedded = []

    def __getattr__(self, name):
        return getattr(self._embedder, name)

    def embed_files(self, paths, masks, **kwargs):
        self.embedded += list(paths)
        return self._embedder.embed_files(paths, masks, **kwargs)


def fresh(embedder, folder, tmp_path):
    """What an extraction into a new folder gives (the reference)."""
    return extraction.extract_folder(embedder, str(folder), str(tmp_path / "reference"),
                                     mask_policy="full_body")


def test_another_image_dir_into_the_same_folder_and_index(embedder, tmp_path):
    first = write_images(tmp_path / "day1", 4, seed=1)
    second = write_images(tmp_path / "day2", 3, seed=2)
    out, idx = tmp_path / "feats", tmp_path / "idx"
    extraction.extract_folder(embedder, str(tmp_path / "day1"), str(out), mask_policy="full_body")
    index.add_feature_folder(str(idx), str(out))
    got = extraction.extract_folder(embedder, str(tmp_path / "day2"), str(out),
                                    mask_policy="full_body")
    gallery = index.add_feature_folder(str(idx), str(out))
    assert list(got.paths) == second and len(gallery) == 3
    assert list(gallery.paths) == second
    np.testing.assert_array_equal(gallery.features, got.features)
    assert not set(first) & set(gallery.paths)
    # The same content again: the index version does not move.
    again = index.add_feature_folder(str(idx), str(out))
    assert again.version_dir == gallery.version_dir


def test_overwritten_added_and_removed_images_are_followed(embedder, tmp_path):
    folder = tmp_path / "images"
    paths = write_images(folder, 5, seed=3)
    out, idx = tmp_path / "feats", tmp_path / "idx"
    # Another folder in the index too: its rows must survive the replacement.
    other = write_images(tmp_path / "other", 2, seed=9)
    extraction.extract_folder(embedder, str(tmp_path / "other"), str(tmp_path / "other_feats"),
                              mask_policy="full_body")
    index.add_feature_folder(str(idx), str(tmp_path / "other_feats"))
    extraction.extract_folder(embedder, str(folder), str(out), mask_policy="full_body")
    index.add_feature_folder(str(idx), str(out))

    # Same names, other pixels (a different size on disk and mtime); one removed, one added.
    replacement = write_images(tmp_path / "new", 2, seed=4)
    shutil.copy(replacement[0], paths[1])
    os.utime(paths[1], ns=(10**18, 10**18))
    os.remove(paths[4])
    added = write_images(folder, 1, seed=5, names=["0099_c1_added.png"])
    counting = Counting(embedder)
    got = extraction.extract_folder(counting, str(folder), str(out), mask_policy="full_body")
    assert sorted(counting.embedded) == sorted([paths[1], added[0]])
    want = fresh(embedder, folder, tmp_path)
    assert got.paths == want.paths and paths[4] not in got.paths
    np.testing.assert_allclose(got.features, want.features, atol=1e-5)
    np.testing.assert_allclose(extraction.load_features(str(out)).features, want.features,
                               atol=1e-5)
    gallery = index.add_feature_folder(str(idx), str(out))
    assert list(gallery.paths) == other + list(want.paths)
    np.testing.assert_allclose(gallery.features[2:], want.features, atol=1e-5)

    # Nothing changed: nothing embedded, the same result.
    counting = Counting(embedder)
    again = extraction.extract_folder(counting, str(folder), str(out), mask_policy="full_body")
    assert counting.embedded == [] and again.paths == got.paths


def test_a_changed_mask_or_a_generated_mask_is_made_again(embedder, tmp_path):
    folder = tmp_path / "images"
    paths = write_images(folder, 3, seed=6)
    out = tmp_path / "feats"
    calls = []

    def segmenter(image):
        calls.append(image.shape)
        return fake_segmenter(image)

    extraction.extract_folder(embedder, str(folder), str(out), mask_policy="auto",
                              segmenter=segmenter)
    assert len(calls) == 3
    shutil.copy(write_images(tmp_path / "new", 1, seed=7)[0], paths[0])
    os.utime(paths[0], ns=(10**18, 10**18))
    counting = Counting(embedder)
    extraction.extract_folder(counting, str(folder), str(out), mask_policy="auto",
                              segmenter=segmenter)
    assert len(calls) == 4 and counting.embedded == [paths[0]]


def test_non_finite_features_are_refused_at_every_entry(embedder, tmp_path):
    write_images(tmp_path / "images", 3, seed=8)
    out = tmp_path / "feats"
    result = extraction.extract_folder(embedder, str(tmp_path / "images"), str(out),
                                       mask_policy="full_body")
    features = result.features.copy()
    features[1, 3] = np.nan
    np.save(out / extraction.FEATURES_FILE, features)
    with pytest.raises(DataError, match=r"row 1 \(.*0001_c2_img.png\) holds NaN or Inf"):
        extraction.load_features(str(out))
    with pytest.raises(DataError, match="holds NaN or Inf"):
        index.add_features(str(tmp_path / "idx"), features, result.pids, result.camids,
                           result.paths, fingerprint="f", source="s")
    assert not index.is_index(str(tmp_path / "idx"))

    class Broken(Counting):
        def embed_files(self, paths, masks, **kwargs):
            feats = self._embedder.embed_files(paths, masks, **kwargs)
            feats[-1] = np.inf
            return feats

    with pytest.raises(DataError, match=r"the model's features: row 2 .* holds NaN or Inf"):
        extraction.extract_folder(Broken(embedder), str(tmp_path / "images"),
                                  str(tmp_path / "broken"), mask_policy="full_body")
