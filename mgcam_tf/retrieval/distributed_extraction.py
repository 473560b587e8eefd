"""Extraction spread over workers, merged into one feature folder (and an index).

The images of a folder are cut into shards of `shard_size` consecutive
files. Each shard is embedded by a worker with the exported SavedModel and
written atomically (`mgcam_tf.atomic_files`) as
`OUTPUT_DIR/.shards/shard-NNNNN.npz` (features, paths, fingerprint); the
parent then merges the shards, in file order, into the ordinary result of
`mgcam_tf.retrieval.extraction` (features.npy, manifest.csv,
extraction.json) and, given `index_dir`, adds it to the gallery index. A
killed run started again embeds only the shards it had not finished; all
shards must carry the same model fingerprint.

Two backends:

- ``processes`` (default): a pool of `workers` spawned processes on this
  machine, each loading the export once.
- ``beam``: Apache Beam's `RunInference` with a `ModelHandler` that loads
  the export (`SavedModelEmbedder`), one element per image keyed by shard;
  runs on the DirectRunner (`direct_num_workers=workers`, multi-processing)
  or on any runner given through `beam_options` (e.g. Dataflow, Flink),
  where OUTPUT_DIR must be a filesystem all workers see. apache-beam 2.77
  installs beside tensorflow-cpu 2.21 but pins protobuf < 7 (it moves
  protobuf 7.x back to 6.33, inside TF's >= 6.31.1), so it is not a
  dependency of the package: `pip install apache-beam` where it is wanted.

Masks are resolved (and generated, if asked) in the parent before the
shards are handed out, so workers only read files.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import zipfile
from typing import Callable, Optional, Sequence

import numpy as np

from mgcam_tf import atomic_files
from mgcam_tf.errors import ConfigError, DataError
from mgcam_tf.retrieval import extraction, user_images

SHARDS_DIR = ".shards"
BACKENDS = ("processes", "beam")


def _shard_path(output_dir: str, shard: int) -> str:
    return os.path.join(output_dir, SHARDS_DIR, f"shard-{shard:05d}.npz")


def _write_shard(path: str, features: np.ndarray, paths: Sequence[str], fingerprint: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, features=np.asarray(features, np.float32), paths=np.array(list(paths)),
             fingerprint=np.array(fingerprint))
    atomic_files.write_bytes(path, buffer.getvalue())


def _read_shard(path: str, expected_paths: Sequence[str]):
    """(features, fingerprint) of a finished shard, or None if absent or not this shard's."""
    try:
        with np.load(path, allow_pickle=False) as part:
            if part["paths"].tolist() != list(expected_paths):
                return None
            return part["features"], str(part["fingerprint"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


# ==================================================================================
# processes backend

_WORKER_EMBEDDER = None


def _worker_init(export_dir: str) -> None:
    global _WORKER_EMBEDDER
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mgcam_tf.serving.loader import SavedModelEmbedder

    _WORKER_EMBEDDER = SavedModelEmbedder(export_dir)


def _worker_shard(job) -> tuple[int, int]:
    shard, path, paths, masks, batch_size = job
    features = _WORKER_EMBEDDER.embed_files(paths, masks, batch_size=batch_size)
    _write_shard(path, features, paths, _WORKER_EMBEDDER.fingerprint)
    return shard, len(paths)


def _run_processes(export_dir: str, jobs: list, workers: int,
                   progress: Optional[Callable[[int, int], None]], total: int,
                   done: int) -> None:
    # spawn, not fork: TensorFlow's threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_worker_init, initargs=(str(export_dir),)) as pool:
        for _, n in pool.imap_unordered(_worker_shard, jobs):
            done += n
            if progress is not None:
                progress(done, total)


# ==================================================================================
# beam backend

def _beam_model_handler(export_dir: str, batch_size: int):
    """A RunInference ModelHandler: examples (image path, mask path or ""), results float32 [D]."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class SavedModelHandler(ModelHandler):
        def load_model(self):
            from mgcam_tf.serving.loader import SavedModelEmbedder

            return SavedModelEmbedder(export_dir)

        def run_inference(self, batch, model, inference_args=None):
            paths = [p for p, _ in batch]
            masks = [m or None for _, m in batch]
            features = model.embed_files(paths, masks, batch_size=batch_size)
            return [PredictionResult(example, feature) for example, feature in zip(batch, features)]

        def batch_elements_kwargs(self):
            return {"min_batch_size": 1, "max_batch_size": batch_size}

    return SavedModelHandler()


class _WriteShard:
    """Beam DoFn body: (shard, [(row, path, feature)]) -> the shard's file, written atomically."""

    def __init__(self, output_dir: str, fingerprint_of: str):
        self.output_dir = output_dir
        self.export_dir = fingerprint_of

    def __call__(self, element):
        from mgcam_tf.serving.export import export_fingerprint

        shard, rows = element
        rows = sorted(rows, key=lambda r: r[0])
        # Without loading the model again: it reads saved_model.pb and the variables index.
        fingerprint = export_fingerprint(self.export_dir)
        _write_shard(_shard_path(self.output_dir, shard), np.stack([r[2] for r in rows]),
                     [r[1] for r in rows], fingerprint)
        return shard


def _run_beam(export_dir: str, output_dir: str, todo: list, workers: int, batch_size: int,
              beam_options: Optional[Sequence[str]]) -> None:
    try:
        import apache_beam as beam
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ConfigError("backend 'beam' needs apache-beam: pip install apache-beam "
                          "(or use the processes backend)") from None
    from mgcam_tf.serving import export as export_lib

    version_dir = str(export_lib.resolve_export(export_dir))
    options = PipelineOptions(list(beam_options) if beam_options else [
        "--runner=DirectRunner", f"--direct_num_workers={workers}",
        "--direct_running_mode=multi_processing"])
    elements = [(shard, (row, path, mask or ""))
                for shard, rows, paths, masks in todo
                for row, path, mask in zip(rows, paths, masks)]
    handler = KeyedModelHandler(_beam_model_handler(version_dir, batch_size))
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "images" >> beam.Create(elements)
             | "key" >> beam.Map(lambda e: (f"{e[0]}:{e[1][0]}:{e[1][1]}", (e[1][1], e[1][2])))
             | "embed" >> RunInference(handler)
             | "by shard" >> beam.Map(lambda kv: (int(kv[0].split(":", 2)[0]),
                                                  (int(kv[0].split(":", 2)[1]),
                                                   kv[0].split(":", 2)[2],
                                                   np.asarray(kv[1].inference, np.float32))))
             | "group" >> beam.GroupByKey()
             | "write" >> beam.Map(_WriteShard(output_dir, version_dir)))


# ==================================================================================

def extract_distributed(export_dir: str, image_dir: str, output_dir: str, *, workers: int = 2,
                        backend: str = "processes", shard_size: int = 1024,
                        mask_policy: str = "auto", segmenter=None,
                        model_path: Optional[str] = None, batch_size: int = 64,
                        index_dir: Optional[str] = None, index_type: str = "auto",
                        beam_options: Optional[Sequence[str]] = None,
                        progress: Optional[Callable[[int, int], None]] = None
                        ) -> extraction.FeatureSet:
    """Embeds every image under `image_dir` on `workers` workers (module doc).

    Args:
      export_dir: the export of mgcam-export (base or version folder).
      image_dir, output_dir, mask_policy, segmenter, model_path, batch_size:
        as `mgcam_tf.retrieval.extraction.extract_folder`.
      workers: worker processes (>= 1).
      backend: "processes" or "beam".
      shard_size: images per shard (the unit of work, of atomic output and of resuming).
      index_dir, index_type: add the merged features to this gallery index
        (`mgcam_tf.retrieval.index.add_feature_folder`).
      beam_options: Beam pipeline options replacing the local DirectRunner's.
    Returns:
      The merged FeatureSet (also written to `output_dir`).
    Raises:
      ConfigError: bad workers/backend/shard_size; shards of different models.
      DataError: no images, an unreadable image.
    """
    if workers < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError(f"workers, shard_size and batch_size must be >= 1, got {workers}, "
                          f"{shard_size}, {batch_size}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    paths = user_images.list_images(image_dir)
    try:
        os.makedirs(os.path.join(output_dir, SHARDS_DIR), exist_ok=True)
    except OSError as err:
        raise DataError(f"{output_dir}: cannot create the output folder ({err.strerror})") from None
    masks = user_images.resolve_masks(paths, mask_policy,
                                      cache_dir=os.path.join(output_dir, extraction.MASKS_DIR),
                                      segmenter=segmenter, model_path=model_path)
    starts = list(range(0, len(paths), shard_size))
    todo, done = [], 0
    for shard, start in enumerate(starts):
        stop = min(start + shard_size, len(paths))
        if _read_shard(_shard_path(output_dir, shard), paths[start:stop]) is None:
            todo.append((shard, list(range(start, stop)), paths[start:stop], masks[start:stop]))
        else:
            done += stop - start
    if progress is not None:
        progress(done, len(paths))
    if todo:
        if backend == "processes":
            jobs = [(shard, _shard_path(output_dir, shard), p, m, batch_size)
                    for shard, _, p, m in todo]
            _run_processes(export_dir, jobs, min(workers, len(jobs)), progress, len(paths), done)
        else:
            _run_beam(export_dir, output_dir, todo, workers, batch_size, beam_options)
            if progress is not None:
                progress(len(paths), len(paths))
    chunks, fingerprints = [], set()
    for shard, start in enumerate(starts):
        stop = min(start + shard_size, len(paths))
        found = _read_shard(_shard_path(output_dir, shard), paths[start:stop])
        if found is None:
            raise DataError(f"{_shard_path(output_dir, shard)}: shard missing or not of images "
                            f"{start}..{stop - 1} after the workers finished")
        chunks.append(found[0])
        fingerprints.add(found[1])
    if len(fingerprints) != 1:
        raise ConfigError(f"{output_dir}: shards of several models ({', '.join(sorted(fingerprints))}); "
                          f"remove {os.path.join(output_dir, SHARDS_DIR)} and run again")
    result = extraction.write_feature_folder(
        output_dir, np.concatenate(chunks), paths, masks, image_dir=image_dir,
        export=os.path.abspath(export_dir), fingerprint=fingerprints.pop(), mask_policy=mask_policy)
    shutil.rmtree(os.path.join(output_dir, SHARDS_DIR), ignore_errors=True)
    if index_dir:
        from mgcam_tf.retrieval import index as index_lib

        index_lib.add_feature_folder(index_dir, output_dir, index_type=index_type)
    return result
