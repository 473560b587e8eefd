"""The one block loop of the evaluation: row blocks on a few threads.

Metrics (`metrics.evaluate`), re-ranking (`rerank`) and the blockwise
large-gallery evaluation (`large_scale`) all split their rows into blocks
that each write their own rows of preallocated outputs. numpy and BLAS
release the GIL in the heavy calls (matmul, sort, partition, searchsorted,
bincount), so a couple of threads overlap well without copying any data.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable

from mgcam_tf.errors import ConfigError


def default_threads() -> int:
    """min(2, CPUs): the machines this runs on share their cores."""
    return min(2, os.cpu_count() or 1)


def run_blocks(fn: Callable[[int], int], starts: list[int], threads: int | None = None,
               progress: Callable[[int, int], None] | None = None,
               total: int | None = None) -> None:
    """Runs fn(start) for every block start on `threads` threads (default
    `default_threads()`); fn returns the rows it did, reported to
    progress(done, total) in block order. A block's error is re-raised here.
    """
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    total = 0 if total is None else total
    done = 0
    if threads == 1 or len(starts) <= 1:
        results = (fn(start) for start in starts)
        for rows in results:
            done += rows or 0
            if progress is not None:
                progress(done, total)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for rows in pool.map(fn, starts):   # results in order; errors re-raised here
            done += rows or 0
            if progress is not None:
                progress(done, total)
