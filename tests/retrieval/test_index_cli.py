"""mgcam-extract --index_dir then mgcam-search --gallery=<index>, and the index's writer lock."""

import json
import os

import pytest

pytest.importorskip("faiss")

from mgcam_tf.retrieval import extraction, index, search, user_images  # noqa: E402
from mgcam_tf.serving.loader import SavedModelEmbedder  # noqa: E402

from serving_standins import shared_export  # noqa: E402
from harness import run_tool



def test_extract_into_index_then_search_it(shared_data, tmp_path):
    embedder = SavedModelEmbedder(shared_export()[1].parent)
    market = shared_data / "market1501_mini"
    feats, idx = tmp_path / "feats", tmp_path / "gallery.idx"
    out = run_tool("extract", f"--saved_model={embedder.export_dir}",
                   f"--image_dir={market / 'bounding_box_test'}", f"--output_dir={feats}",
                   f"--index_dir={idx}", "--mask_policy=files", "--noprogress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"index {idx}: 32 images (flat, v-000001)" in out.stdout
    gallery = index.open_index(str(idx))
    assert len(gallery) == 32 and gallery.fingerprint == extraction.read_fingerprint(str(feats))
    assert not os.path.exists(idx / index.LOCK_FILE)

    queries = sorted(str(p) for p in (market / "query").glob("*.jpg"))[:2]
    out = run_tool("search", f"--saved_model={embedder.export_dir}", f"--gallery={idx}",
                   "--top_k=3", "--mask_policy=files", f"--json_out={tmp_path / 'r.json'}",
                   *queries)
    assert out.returncode == 0, out.stderr[-3000:]
    ranked = json.loads((tmp_path / "r.json").read_text())["queries"]
    want = search.search(embedder.embed_files(queries, user_images.resolve_masks(queries, "files")),
                         extraction.load_features(str(feats)), 3)
    assert [[m["index"] for m in q["matches"]] for q in ranked] == \
        [[m.index for m in w] for w in want]
    assert f"  1  {want[0][0].distance:8.4f}  {want[0][0].path}" in out.stdout

    # A second add while another writer holds the lock: one clear line, index untouched.
    with index.writer_lock(str(idx)):
        out = run_tool("extract", f"--saved_model={embedder.export_dir}",
                       f"--image_dir={market / 'query'}", f"--output_dir={tmp_path / 'q'}",
                       f"--index_dir={idx}", "--mask_policy=files", "--noprogress")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "another add is writing this index" in last
    assert f"process {os.getpid()}" in last
    assert len(index.open_index(str(idx))) == 32
