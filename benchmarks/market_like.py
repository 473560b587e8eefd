"""Features and labels shaped like Market-1501's test set, for the evaluation and
search benchmarks: 3,368 queries, 19,732 gallery images (3,819 junk, 2,793
distractors), 750 ids, 6 cameras, 128-d features, counts scaled by `scale`."""

from __future__ import annotations

import numpy as np

NUM_QUERY, NUM_GALLERY, NUM_JUNK, NUM_DISTRACTOR = 3368, 19732, 3819, 2793
NUM_IDS, NUM_CAMS, DIM = 750, 6, 128


def market_like(scale: float = 1.0, seed: int = 0, centre_scale: float = 0.35,
                other_people: bool = False):
    """(qf [Q, 128] float32, q_pids, q_camids, gf [G, 128] float32, g_pids, g_camids).

    Each identity is a Gaussian cluster: centre_scale x a standard normal centre,
    plus unit noise. Junk (-1) and distractor (0) gallery images are noise alone,
    or, with other_people, images of other people, each with a centre of its own
    (so that true matches are findable but not trivially).
    """
    rng = np.random.default_rng(seed)
    nq, ng = int(round(NUM_QUERY * scale)), int(round(NUM_GALLERY * scale))
    nj, nd = int(round(NUM_JUNK * scale)), int(round(NUM_DISTRACTOR * scale))
    ids = max(2, int(round(NUM_IDS * scale)))
    qp = rng.integers(1, ids + 1, nq)
    qc = rng.integers(1, NUM_CAMS + 1, nq)
    gp = np.concatenate([np.full(nj, -1), np.zeros(nd, np.int64),
                         rng.integers(1, ids + 1, ng - nj - nd)])
    gc = rng.integers(1, NUM_CAMS + 1, ng)
    centres = centre_scale * rng.standard_normal((ids + 1, DIM))
    gcent = centres[np.maximum(gp, 0)]
    if other_people:
        gcent[:nj + nd] = centre_scale * rng.standard_normal((nj + nd, DIM))
    else:
        gcent[:nj + nd] = 0.0
    qf = centres[qp] + rng.standard_normal((nq, DIM))
    gf = gcent + rng.standard_normal((ng, DIM))
    return (qf.astype(np.float32), qp, qc, gf.astype(np.float32), gp, gc)
