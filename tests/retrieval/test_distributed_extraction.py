"""Extraction on 2 local workers (processes, and Beam's RunInference when installed)."""

import os

import numpy as np
import pytest

pytest.importorskip("faiss")

from mgcam_tf.errors import ConfigError  # noqa: E402
from mgcam_tf.retrieval import distributed_extraction, extraction, index  # noqa: E402
from mgcam_tf.serving.loader import SavedModelEmbedder  # noqa: E402

from serving_standins import shared_export  # noqa: E402


def write_images(folder, n, seed=0):
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 256, (96 + 8 * (i % 3), 48, 3), dtype=np.uint8)
        tf.io.write_file(str(folder / f"{i:04d}_c{1 + i % 2}_img.png"), tf.io.encode_png(image))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_images(root / "images", 7, seed=4)
    export_dir = shared_export()[1]
    embedder = SavedModelEmbedder(export_dir)
    reference = extraction.extract_folder(embedder, str(root / "images"), str(root / "ref"),
                                          mask_policy="full_body")
    return root, export_dir, embedder, reference


@pytest.mark.parametrize("backend", ["processes", "beam"])
def test_two_workers_match_single_process(setup, backend):
    root, export_dir, embedder, reference = setup
    if backend == "beam":
        pytest.importorskip("apache_beam")
    out = root / f"out-{backend}"
    result = distributed_extraction.extract_distributed(
        str(export_dir), str(root / "images"), str(out), workers=2, backend=backend,
        shard_size=3, mask_policy="full_body", batch_size=2, index_dir=str(root / f"idx-{backend}"))
    assert result.paths == reference.paths
    np.testing.assert_allclose(result.features, reference.features, atol=1e-5)
    assert extraction.read_fingerprint(str(out)) == embedder.fingerprint
    assert not os.path.exists(out / distributed_extraction.SHARDS_DIR)   # merged, parts removed
    loaded = extraction.load_features(str(out))
    np.testing.assert_array_equal(loaded.pids, reference.pids)
    gallery = index.open_index(str(root / f"idx-{backend}"))
    assert len(gallery) == 7 and gallery.fingerprint == embedder.fingerprint
    idx, _ = gallery.search(reference.features[:3], 1)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])


def test_resumes_finished_shards_and_checks_arguments(setup, monkeypatch):
    root, export_dir, embedder, reference = setup
    out = root / "resume"
    os.makedirs(out / distributed_extraction.SHARDS_DIR)
    paths = list(reference.paths)
    # Shards 0 and 1 finished before a kill; only shard 2 is left to embed.
    for shard in (0, 1):
        distributed_extraction._write_shard(distributed_extraction._shard_path(str(out), shard),
                                            reference.features[3 * shard:3 * shard + 3],
                                            paths[3 * shard:3 * shard + 3], embedder.fingerprint)
    jobs_seen = []

    def fake_run(export, jobs, workers, progress, total, done):
        jobs_seen.extend(j[0] for j in jobs)
        for shard, path, p, m, _ in jobs:
            distributed_extraction._write_shard(path, embedder.embed_files(p, m), p,
                                                embedder.fingerprint)

    monkeypatch.setattr(distributed_extraction, "_run_processes", fake_run)
    result = distributed_extraction.extract_distributed(
        str(export_dir), str(root / "images"), str(out), workers=2, shard_size=3,
        mask_policy="full_body")
    assert jobs_seen == [2]
    np.testing.assert_allclose(result.features, reference.features, atol=1e-5)
    with pytest.raises(ConfigError, match="backend"):
        distributed_extraction.extract_distributed(str(export_dir), str(root / "images"),
                                                   str(out), backend="spark")
    with pytest.raises(ConfigError, match="workers"):
        distributed_extraction.extract_distributed(str(export_dir), str(root / "images"),
                                                   str(out), workers=0)
