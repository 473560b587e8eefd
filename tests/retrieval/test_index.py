"""The persistent gallery index: build, incremental add, query, reload, atomicity."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mgcam_tf.errors import ConfigError, DataError  # noqa: E402
from mgcam_tf.retrieval import extraction, index, search  # noqa: E402
from harness import REPO



def clustered(n, dim=16, seed=0, centres=50):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32) * 3
    lab = rng.integers(0, centres, n)
    return (c[lab] + rng.standard_normal((n, dim))).astype(np.float32), lab


def add(index_dir, feats, source, fingerprint="fp-a", index_type="auto", first=0):
    n = len(feats)
    return index.add_features(index_dir, feats, np.arange(first, first + n) % 7,
                              np.arange(n) % 3, [f"/img/{source}/{i}.jpg" for i in range(n)],
                              fingerprint=fingerprint, source=source, index_type=index_type)


def test_flat_build_add_query_reload(tmp_path):
    x, _ = clustered(300)
    d = str(tmp_path / "idx")
    first = add(d, x[:200], "a")
    assert first.index_type == "flat" and len(first) == 200
    second = add(d, x[200:], "b", first=200)
    assert len(second) == 300 and os.path.basename(second.version_dir) == "v-000002"
    # The old rows are not rewritten differently: the index holds exactly the features.
    np.testing.assert_array_equal(np.asarray(second.features), x)
    assert second.paths[200] == "/img/b/0.jpg" and second.pids[200] == 200 % 7
    again = index.open_index(d)
    idx, dist = again.search(x[:5], 4)
    ref_idx, ref_dist = search.rank_gallery(x[:5], x, 4)
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))
    np.testing.assert_allclose(dist, ref_dist, atol=1e-3)
    assert set(map(tuple, idx[:, :4])) == set(map(tuple, ref_idx))
    # Adding a source already present is a no-op (a rerun after a kill).
    assert add(d, x[200:], "b").version_dir == again.version_dir
    # search.search accepts the index as a gallery.
    matches = search.search(x[:2], again, top_k=3)
    assert matches[0][0].index == 0 and matches[0][0].path == "/img/a/0.jpg"


def test_auto_choice_and_explicit_types(tmp_path, monkeypatch):
    assert index.choose_type(index.AUTO_FLAT_MAX) == "flat"
    assert index.choose_type(index.AUTO_FLAT_MAX + 1) == "ivf"
    assert index.choose_type(10, "hnsw") == "hnsw"
    with pytest.raises(ConfigError, match="index_type"):
        index.choose_type(10, "annoy")
    monkeypatch.setattr(index, "AUTO_FLAT_MAX", 1000)
    x, _ = clustered(3000, seed=1)
    d = str(tmp_path / "auto")
    assert add(d, x[:800], "a").index_type == "flat"
    grown = add(d, x[800:], "b", first=800)       # crosses the threshold: rebuilt as IVF
    assert grown.index_type == "ivf" and grown.meta["params"]["nlist"] == index.default_nlist(3000)
    exact_idx, _ = grown.search(x[:50], 10, exact=True)
    approx_idx, _ = grown.search(x[:50], 10, nprobe=grown.meta["params"]["nlist"])
    np.testing.assert_array_equal(np.sort(exact_idx, 1), np.sort(approx_idx, 1))
    for kind in ("ivf", "hnsw"):
        k = add(str(tmp_path / kind), x[:2000], "a", index_type=kind)
        k = add(str(tmp_path / kind), x[2000:], "b", first=2000)   # keeps its type on auto
        assert k.index_type == kind and len(k) == 3000
        idx, _ = index.open_index(str(tmp_path / kind)).search(x[:100], 10)
        ex, _ = k.search(x[:100], 10, exact=True)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ex)])
        assert recall > 0.9, (kind, recall)


def test_refuses_features_of_another_model(tmp_path):
    x, _ = clustered(50)
    d = str(tmp_path / "idx")
    add(d, x, "a", fingerprint="1111aaaa")
    with pytest.raises(ConfigError, match="1111aaaa") as err:
        add(d, x, "b", fingerprint="2222bbbb")
    assert "2222bbbb" in str(err.value)
    with pytest.raises(ConfigError, match="size 8"):
        add(d, x[:, :8], "c", fingerprint="1111aaaa")
    with pytest.raises(DataError, match="not a gallery index"):
        index.open_index(str(tmp_path))


def test_add_feature_folder_reads_fingerprint(tmp_path):
    x, _ = clustered(20, dim=8)
    names = [f"/g/{i:04d}_c{1 + i % 2}s1_000001_01.jpg" for i in range(20)]
    for folder, fp in (("f1", "aaa"), ("f2", "bbb")):
        extraction.write_feature_folder(str(tmp_path / folder), x, names, [None] * 20,
                                        image_dir="/g", export="/e", fingerprint=fp,
                                        mask_policy="auto") if os.makedirs(
            tmp_path / folder) is None else None
    g = index.add_feature_folder(str(tmp_path / "idx"), str(tmp_path / "f1"))
    assert g.fingerprint == "aaa" and g.pids[3] == 3 and g.camids[3] == 2
    with pytest.raises(ConfigError, match="model bbb.*model aaa"):
        index.add_feature_folder(str(tmp_path / "idx"), str(tmp_path / "f2"))


ADD_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from mgcam_tf.retrieval import index
    rng = np.random.default_rng(int(sys.argv[2]))
    x = rng.standard_normal((40000, 32)).astype(np.float32)
    n = len(x)
    print("ready", flush=True)
    index.add_features(sys.argv[1], x, np.arange(n) % 9, np.arange(n) % 4,
                       [f"/b/{{i}}.jpg" for i in range(n)], fingerprint="fp", source="b",
                       index_type="ivf")
""")


def test_kill_during_add_keeps_previous_version(tmp_path):
    script = tmp_path / "add.py"
    script.write_text(ADD_SCRIPT.format(repo=str(REPO)))
    base, _ = clustered(5000, dim=32, seed=3)

    def fresh(d):
        index.add_features(d, base, np.arange(5000) % 9, np.arange(5000) % 4,
                           [f"/a/{i}.jpg" for i in range(5000)], fingerprint="fp",
                           source="a", index_type="ivf")

    def start(d):
        proc = subprocess.Popen([sys.executable, str(script), d, "7"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    ref = str(tmp_path / "ref")
    fresh(ref)
    proc = start(ref)
    t0 = time.monotonic()
    assert proc.wait() == 0
    add_seconds = time.monotonic() - t0
    ref_index = index.open_index(ref)
    queries = base[:20]
    ref_result = ref_index.search(queries, 10)

    d = str(tmp_path / "idx")
    fresh(d)
    before = index.open_index(d)
    before_result = before.search(queries, 10)
    rng = random.Random(0)
    killed = 0
    for attempt in range(8):         # a few random points of the add
        proc = start(d)
        time.sleep(rng.uniform(0.0, 0.5 * add_seconds))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        current = index.open_index(d)          # always a complete, readable version
        if len(current) == 5000:
            np.testing.assert_array_equal(current.search(queries, 10)[0], before_result[0])
        elif killed >= 1:
            break
        else:                                  # finished before the kill (a loaded machine)
            shutil.rmtree(d)
            fresh(d)
    assert killed >= 1
    subprocess.run([sys.executable, str(script), d, "7"], check=True)   # the rerun finishes
    done = index.open_index(d)
    assert len(done) == 45000 and done.meta["sources"] == ref_index.meta["sources"]
    np.testing.assert_array_equal(np.asarray(done.features), np.asarray(ref_index.features))
    got = done.search(queries, 10)
    np.testing.assert_array_equal(got[0], ref_result[0])
    np.testing.assert_allclose(got[1], ref_result[1])
    leftovers = [n for n in os.listdir(d) if n.startswith(".tmp-")]
    assert leftovers == []
    assert json.load(open(os.path.join(done.version_dir, index.META_FILE)))["num_images"] == 45000


def _small_add(d, source="s", notify=None):
    x, _ = clustered(300, dim=8, seed=1)
    return index.add_features(d, x, np.arange(300) % 5, np.arange(300) % 3,
                              [f"/s/{i}.jpg" for i in range(300)], fingerprint="fp",
                              source=source, index_type="flat", notify=notify)


def test_concurrent_add_fails_with_one_line(tmp_path):
    d = str(tmp_path / "idx")
    _small_add(d, "first")
    script = tmp_path / "second.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(REPO / "tests")!r})
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from mgcam_tf.errors import MgcamError
        import test_index
        try:
            test_index._small_add({d!r}, "second")
        except MgcamError as err:
            print(err)
            sys.exit(3)
    """))
    with index.writer_lock(d):            # a first add in progress (another process's view)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "another add is writing this index" in lines[0]
    assert f"process {os.getpid()}" in lines[0] and d in lines[0]
    assert len(index.open_index(d)) == 300          # untouched
    assert not os.path.exists(os.path.join(d, index.LOCK_FILE))   # released after the with
    assert len(_small_add(d, "second")) == 600       # and the next add proceeds


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    d = str(tmp_path / "idx")
    _small_add(d, "first")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(d, index.LOCK_FILE), "w") as f:     # as a kill -9 leaves it
        json.dump({"pid": dead.pid, "host": "h", "started": "then"}, f)
    messages = []
    got = _small_add(d, "second", notify=messages.append)
    assert len(got) == 600
    assert len(messages) == 1 and f"process {dead.pid}" in messages[0]
    assert "took over the lock" in messages[0]
    assert not os.path.exists(os.path.join(d, index.LOCK_FILE))
