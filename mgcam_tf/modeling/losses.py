"""The four MGCAM losses (paper eq. 5-8), as pure functions of tensors.

Each returns a scalar averaged over the examples it is given (the local
batch, under a distribution strategy): dividing by the replica count is the
train step's job, not these functions'.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from keras import ops



def squared_distance(a, b):
    """Squared Euclidean distance row by row: [B, D], [B, D] -> [B]."""
    return ops.sum(ops.square(a - b), axis=-1)


def identity_loss(pids, logits: Sequence, label_smoothing: float = 0.0):
    """L_id: softmax cross-entropy of each stream's logits, summed over the streams.

    pids: int [B]; logits: a sequence of [B, num_ids]. The official code
    gives the background stream the identity labels too.
    label_smoothing: epsilon of Szegedy et al. (CVPR 2016), as the ReID recipe
    of Luo et al. (CVPR-W 2019) uses it: the target is (1 - epsilon) on the
    true id plus epsilon / num_ids on every id.
    """
    total = 0.0
    for stream_logits in logits:
        stream_logits = ops.cast(stream_logits, "float32")
        if label_smoothing:
            log_p = ops.log_softmax(stream_logits, axis=-1)
            true = ops.take_along_axis(log_p, ops.expand_dims(ops.cast(pids, "int32"), -1),
                                       axis=-1)[:, 0]
            per_example = -(1.0 - label_smoothing) * true - label_smoothing * ops.mean(
                log_p, axis=-1)
            total = total + ops.mean(per_example)
        else:
            total = total + ops.mean(ops.sparse_categorical_crossentropy(
                pids, stream_logits, from_logits=True))
    return total


def batch_hard_triplet_loss(h, pids, margin: float = 0.3):
    """Batch-hard triplet loss (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss
    for Person Re-Identification", 2017, eq. 5) on Euclidean distances.

    For each anchor: its farthest same-id example and nearest other-id example
    in the batch, max(margin + d_ap - d_an, 0); averaged over the anchors that
    have both (a P x K batch gives every anchor both). h: [B, D]; pids: [B].
    """
    h = ops.cast(h, "float32")
    squared = ops.sum(ops.square(h), axis=-1)
    gram = ops.matmul(h, ops.transpose(h))
    dist_sq = ops.maximum(squared[:, None] + squared[None, :] - 2.0 * gram, 0.0)
    # The square root's gradient at 0 is infinite: distances of (near) zero
    # get a floor, which only the diagonal and duplicated images reach.
    dist = ops.sqrt(ops.maximum(dist_sq, 1e-12))
    same = ops.equal(pids[:, None], pids[None, :])
    eye = ops.eye(ops.shape(h)[0], dtype="bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    hardest_positive = ops.max(ops.where(positive, dist, 0.0), axis=1)
    big = ops.max(dist) + 1.0
    hardest_negative = ops.min(ops.where(negative, dist, big), axis=1)
    valid = ops.cast(ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)),
                     "float32")
    per_anchor = ops.relu(margin + hardest_positive - hardest_negative) * valid
    return ops.sum(per_anchor) / ops.maximum(ops.sum(valid), 1.0)


def centre_loss(h, pids, centres):
    """The centre loss (Wen et al., ECCV 2016) as Luo et al. weigh it: the mean over the
    batch of ||h_i - c_{y_i}||^2.

    The centres get no gradient: they move by Wen et al.'s own rule
    (`centre_sums`, then `TrainingTask`), whatever the optimizer.
    h: [B, D]; pids: [B] in 0..N-1; centres: [N, D].
    """
    h = ops.cast(h, "float32")
    mine = ops.stop_gradient(ops.take(ops.cast(centres, "float32"), pids, axis=0))
    return ops.mean(squared_distance(h, mine))


def centre_sums(h, pids, centres):
    """Wen et al.'s centre update, before the division: for each identity j of N,
    sum over the batch's images of j of (c_j - h_i), and how many there are.

    The step is c_j -= alpha * sum_j / (1 + count_j); the sums are returned apart so
    that replicas can add theirs first. Returns ([N, D], [N]) in the centres' dtype.
    """
    centres = ops.convert_to_tensor(centres)
    h = ops.cast(ops.stop_gradient(h), centres.dtype)
    num = ops.shape(centres)[0]
    pids = ops.cast(pids, "int32")
    sums = ops.segment_sum(ops.take(centres, pids, axis=0) - h, pids, num_segments=num)
    counts = ops.segment_sum(ops.ones_like(pids, centres.dtype), pids, num_segments=num)
    return sums, counts


def attention_loss(target, phi_plus):
    """L_att (eq. 5) as Caffe's EuclideanLoss: 1/(2N) * sum over batch and map of (M - Phi+)^2.

    target, phi_plus: [B, 40, 16, 1], target in 0..1.
    """
    batch = ops.cast(ops.shape(phi_plus)[0], "float32")
    diff = ops.cast(target, "float32") - ops.cast(phi_plus, "float32")
    return ops.sum(ops.square(diff)) / (2.0 * batch)


def region_triplet_loss(h_full, h_body, h_bgd, margin: float = 10.0):
    """L_trip (eq. 6), within one image: anchor h_full, positive h_body, negative h_bgd.

    mean over the batch of ||h_full - h_body||^2 + max(m - ||h_full - h_bgd||^2, 0).
    Inputs: [B, D] each.
    """
    pull = squared_distance(h_full, h_body)
    push = ops.relu(margin - squared_distance(h_full, h_bgd))
    return ops.mean(pull + push)


def siamese_loss(h, pids, margin: float = 10.0):
    """L_sia (eq. 7) on interleaved pairs: example 2i is paired with example 2i + 1.

    ||h(p) - h(g)||^2 for a positive pair, max(m - ||h(p) - h(g)||^2, 0) for a
    negative one, averaged over the pairs. h: [2P, D]; pids: [2P].
    """
    dim = ops.shape(h)[-1]
    pairs = ops.reshape(h, (-1, 2, dim))
    pair_ids = ops.reshape(pids, (-1, 2))
    same = ops.cast(ops.equal(pair_ids[:, 0], pair_ids[:, 1]), "float32")
    dist = squared_distance(pairs[:, 0], pairs[:, 1])
    return ops.mean(same * dist + (1.0 - same) * ops.relu(margin - dist))


def caffe_contrastive_loss(a, b, similar, margin: float):
    """Caffe's ContrastiveLoss layer: 1/(2N) * sum of d^2 (similar) or max(m - d, 0)^2 (dissimilar).

    d is the Euclidean (not squared) distance. a, b: [B, D]; similar: [B] 0/1.
    """
    dist_sq = squared_distance(a, b)
    dist = ops.sqrt(ops.maximum(dist_sq, 1e-12))
    similar = ops.cast(similar, "float32")
    per_pair = similar * dist_sq + (1.0 - similar) * ops.square(ops.relu(margin - dist))
    return ops.mean(per_pair) / 2.0


def official_region_loss(h_full, h_body, h_bgd, pull_margin: float = 0.1,
                         push_margin: float = 100.0):
    """The official prototxt's stand-in for eq. 6: two ContrastiveLoss layers.

    body is pulled to full as a similar pair (margin 0.1, which Caffe's
    formula leaves unused for similar pairs), background pushed from full as a
    dissimilar pair with margin 100. Inputs: [B, D] each.
    """
    ones = ops.ones_like(h_full[:, 0])
    return (caffe_contrastive_loss(h_full, h_body, ones, pull_margin)
            + caffe_contrastive_loss(h_full, h_bgd, 0.0 * ones, push_margin))




def official_siamese_loss(h, pids, margin: float = 10.0):
    """The official stage-2 net's Siamese loss: Caffe's ContrastiveLoss on interleaved pairs.

    1/(2P) * sum of d^2 (same id) or max(m - d, 0)^2 (different ids), d the
    plain (not squared) distance, m = 10. h: [2P, D]; pids: [2P].
    """
    dim = ops.shape(h)[-1]
    pairs = ops.reshape(h, (-1, 2, dim))
    pair_ids = ops.reshape(pids, (-1, 2))
    same = ops.equal(pair_ids[:, 0], pair_ids[:, 1])
    return caffe_contrastive_loss(pairs[:, 0], pairs[:, 1], same, margin)
