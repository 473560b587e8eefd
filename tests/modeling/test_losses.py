"""mgcam_tf.modeling.losses against values computed by hand with numpy."""

import numpy as np
import pytest
import tensorflow as tf

from mgcam_tf.modeling import losses
from mgcam_tf.modeling.objective import MGCAMObjective
from mgcam_tf.errors import ConfigError
from mgcam_tf.modeling.models import build_model

RNG = np.random.RandomState(0)


def features(*shape):
    return RNG.randn(*shape).astype("float32")


def test_identity_loss_sums_stream_cross_entropies():
    pids = np.array([0, 2, 1])
    logits = [features(3, 4) for _ in range(3)]

    def ce(z):
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -logp[np.arange(3), pids].mean()

    expected = sum(ce(z) for z in logits)
    np.testing.assert_allclose(float(losses.identity_loss(pids, logits)), expected, rtol=1e-5)


def test_attention_loss_is_caffe_euclidean():
    target = RNG.rand(2, 40, 16, 1).astype("float32")
    phi = RNG.rand(2, 40, 16, 1).astype("float32")
    expected = ((target - phi) ** 2).sum() / (2 * 2)
    np.testing.assert_allclose(float(losses.attention_loss(target, phi)), expected, rtol=1e-5)


def test_region_triplet_loss_eq6():
    full, body, bgd = features(4, 8), features(4, 8), features(4, 8) * 0.1
    d_pos = ((full - body) ** 2).sum(1)
    d_neg = ((full - bgd) ** 2).sum(1)
    expected = (d_pos + np.maximum(10.0 - d_neg, 0)).mean()
    got = float(losses.region_triplet_loss(full, body, bgd, margin=10.0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The hinge is active for some examples and not others in this case.
    assert (d_neg < 10).any() and (d_neg > 10).any()


def test_siamese_loss_eq7_on_interleaved_pairs():
    h = features(6, 5) * 0.8
    pids = np.array([1, 1, 2, 3, 4, 4])
    per_pair = []
    for i in range(0, 6, 2):
        d = ((h[i] - h[i + 1]) ** 2).sum()
        per_pair.append(d if pids[i] == pids[i + 1] else max(10.0 - d, 0.0))
    got = float(losses.siamese_loss(h, pids, margin=10.0))
    np.testing.assert_allclose(got, np.mean(per_pair), rtol=1e-5)


def test_caffe_contrastive_and_official_region_loss():
    full, body, bgd = features(3, 4), features(3, 4), features(3, 4)
    d_body = np.sqrt(((full - body) ** 2).sum(1))
    d_bgd = np.sqrt(((full - bgd) ** 2).sum(1))
    pull = (d_body ** 2).sum() / (2 * 3)
    push = (np.maximum(100.0 - d_bgd, 0) ** 2).sum() / (2 * 3)
    got = float(losses.official_region_loss(full, body, bgd, 0.1, 100.0))
    np.testing.assert_allclose(got, pull + push, rtol=1e-5)


def test_objective_weights_terms_as_eq8():
    outputs = {"h_full": features(4, 8), "h_body": features(4, 8), "h_bgd": features(4, 8),
               "logits_full": features(4, 3), "logits_body": features(4, 3),
               "logits_bgd": features(4, 3), "attention": RNG.rand(4, 40, 16, 1)}
    y = {"pid": np.array([0, 0, 1, 2]), "attention_target": RNG.rand(4, 40, 16, 1)}
    objective = MGCAMObjective(siamese_weight=0.01, triplet_weight=0.01,
                                      attention_weight=0.1)
    terms = {k: float(v) for k, v in objective(y, outputs).items()}
    expected = (terms["identity_loss"] + 0.01 * terms["siamese_loss"]
                + 0.01 * terms["triplet_loss"] + 0.1 * terms["attention_loss"])
    np.testing.assert_allclose(terms["total"], expected, rtol=1e-5)
    stage1 = MGCAMObjective()(y, outputs)
    assert "siamese_loss" not in stage1


def test_objective_rejects_bad_settings():
    with pytest.raises(ConfigError, match="region_loss"):
        MGCAMObjective(region_loss="other")
    with pytest.raises(ConfigError, match="attention_weight"):
        MGCAMObjective(attention_weight=-1)


def test_attention_loss_gradient_reaches_the_attention_convolution():
    model = build_model(num_ids=3)
    x = tf.constant(features(2, 160, 64, 4))
    target = tf.constant(RNG.rand(2, 40, 16, 1).astype("float32"))
    conv = model.attention.conv
    with tf.GradientTape() as tape:
        loss = losses.attention_loss(target, model(x, training=True)["attention"])
    kernel_grad, bias_grad = tape.gradient(loss, [conv.kernel, conv.bias])
    assert kernel_grad is not None and float(tf.reduce_max(tf.abs(kernel_grad))) > 0
    assert float(tf.abs(bias_grad[0])) > 0


def test_label_smoothing_matches_the_smoothed_cross_entropy():
    pids = np.array([0, 2, 1, 3])
    logits = [features(4, 5), features(4, 5)]
    eps = 0.1

    def smoothed(z):
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        target = np.full_like(logp, eps / 5)
        target[np.arange(4), pids] += 1 - eps
        return -(target * logp).sum(axis=1).mean()

    expected = sum(smoothed(z) for z in logits)
    np.testing.assert_allclose(float(losses.identity_loss(pids, logits, eps)), expected,
                               rtol=1e-5)


def test_batch_hard_triplet_matches_a_numpy_reference():
    h = features(8, 6)
    pids = np.array([0, 0, 1, 1, 2, 2, 3, 4])          # ids 3 and 4 have no positive
    dist = np.sqrt(((h[:, None] - h[None]) ** 2).sum(-1))
    per_anchor = []
    for a in range(8):
        pos = [dist[a, p] for p in range(8) if p != a and pids[p] == pids[a]]
        neg = [dist[a, n] for n in range(8) if pids[n] != pids[a]]
        if pos and neg:
            per_anchor.append(max(0.3 + max(pos) - min(neg), 0.0))
    expected = np.mean(per_anchor)
    got = float(losses.batch_hard_triplet_loss(h, pids, 0.3))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_objective_adds_the_batch_hard_term():
    model = build_model(4)
    outputs = model(np.random.RandomState(1).randn(4, 160, 64, 4).astype("float32"))
    y = {"pid": np.array([0, 0, 1, 1]), "attention_target": np.zeros((4, 40, 16, 1), "float32")}
    plain = MGCAMObjective()(y, outputs)
    recipe = MGCAMObjective(batch_hard_weight=2.0, label_smoothing=0.1)(y, outputs)
    assert "batch_hard_loss" in recipe and "batch_hard_loss" not in plain
    np.testing.assert_allclose(
        float(recipe["total"]),
        float(recipe["identity_loss"]) + 2.0 * float(recipe["batch_hard_loss"])
        + 0.01 * float(recipe["triplet_loss"]) + 0.1 * float(recipe["attention_loss"]),
        rtol=1e-5)


def test_centre_loss_and_wen_update_match_a_numpy_reference():
    h = features(6, 5)
    centres = features(4, 5)
    pids = np.array([0, 0, 2, 2, 2, 3])                 # id 1 is not in the batch
    expected = np.mean([((h[i] - centres[pids[i]]) ** 2).sum() for i in range(6)])
    np.testing.assert_allclose(float(losses.centre_loss(h, pids, centres)), expected, rtol=1e-5)
    sums, counts = losses.centre_sums(h, pids, centres)
    for j in range(4):
        mine = pids == j
        np.testing.assert_allclose(np.asarray(sums)[j], (centres[j] - h[mine]).sum(0),
                                   rtol=1e-5, atol=1e-6)
        assert float(np.asarray(counts)[j]) == mine.sum()
    # The loss pulls h to the centres and leaves the centres to Wen et al.'s update.
    h_var, c_var = tf.Variable(h), tf.Variable(centres)
    with tf.GradientTape() as tape:
        loss = losses.centre_loss(h_var, pids, c_var)
    grad_h, grad_c = tape.gradient(loss, [h_var, c_var])
    assert grad_c is None or not np.any(np.asarray(grad_c))
    np.testing.assert_allclose(np.asarray(grad_h), 2 * (h - centres[pids]) / 6, rtol=1e-5,
                               atol=1e-6)


def test_objective_adds_the_centre_term_only_with_centres():
    model = build_model(4)
    outputs = model(np.random.RandomState(1).randn(4, 160, 64, 4).astype("float32"))
    y = {"pid": np.array([0, 0, 1, 1]), "attention_target": np.zeros((4, 40, 16, 1), "float32")}
    objective = MGCAMObjective(centre_weight=0.5)
    assert "centre_loss" not in objective(y, outputs)
    terms = objective(y, {**outputs, "centres": np.ones((4, 128), "float32")})
    np.testing.assert_allclose(
        float(terms["total"]),
        float(terms["identity_loss"]) + 0.5 * float(terms["centre_loss"])
        + 0.01 * float(terms["triplet_loss"]) + 0.1 * float(terms["attention_loss"]),
        rtol=1e-5)
    for bad in ({"centre_weight": -1.0}, {"centre_alpha": 0.0}, {"centre_alpha": 1.5},
                {"centre_alpha": float("nan")}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            MGCAMObjective(**bad)
