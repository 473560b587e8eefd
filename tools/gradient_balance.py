"""Why MGCAM starts slowly: each loss term's gradient at initialisation (docs/RESULTS.md).

  python tools/gradient_balance.py --data_dir=../shared/data/cuhk03_pair1 --seeds=0,1,2

For a freshly initialised MGCAM (RGB-M, soft attention) and one stage-1 batch of
real training images, prints per seed: the norm of the gradient of each weighted
loss term (identity, 0.01 x region triplet pull and push, 0.1 x attention)
with respect to the shared trunk (stem, stages 1-2) and to the full stream's FC1
(h_full's kernel), as a ratio to the identity loss's, and the batch mean of
||h_full - h_body||^2 and ||h_full - h_bgd||^2 (eq. 6's margin is m = 10).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from mgcam_tf.data import layouts, pipeline
    from mgcam_tf.modeling import losses, models

    dataset = layouts.load_dataset(args.data_dir)
    print("| seed | trunk: attention / identity | trunk: pull / identity | "
          "FC1: pull / identity | FC1: push / identity | mean ||h_full-h_body||^2 | "
          "mean ||h_full-h_bgd||^2 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed in (int(s) for s in args.seeds.split(",")):
        keras.utils.set_random_seed(seed)
        model = models.build_model(dataset.num_train_ids)
        x, y = next(iter(pipeline.train_dataset(dataset.train, args.batch_size, seed=seed)))
        trunk = [v for v in model.trainable_variables
                 if v.path.split("/")[1].startswith(("stem", "stage1", "stage2"))]
        fc1 = [model.full_stream.embedding.kernel]
        with tf.GradientTape(persistent=True) as tape:
            out = model(x, training=True)
            streams = [out["logits_full"], out["logits_body"], out["logits_bgd"]]
            terms = {
                "identity": losses.identity_loss(y["pid"], streams),
                "pull": 0.01 * tf.reduce_mean(losses.squared_distance(out["h_full"],
                                                                      out["h_body"])),
                "push": 0.01 * tf.reduce_mean(tf.nn.relu(10.0 - losses.squared_distance(
                    out["h_full"], out["h_bgd"]))),
                "attention": 0.1 * losses.attention_loss(y["attention_target"],
                                                         out["attention"]),
            }

        def norm(term, variables):
            grads = [g for g in tape.gradient(terms[term], variables) if g is not None]
            return float(tf.linalg.global_norm(grads)) if grads else 0.0

        base_trunk, base_fc1 = norm("identity", trunk), norm("identity", fc1)
        d_body = float(tf.reduce_mean(losses.squared_distance(out["h_full"], out["h_body"])))
        d_bgd = float(tf.reduce_mean(losses.squared_distance(out["h_full"], out["h_bgd"])))
        print(f"| {seed} | {norm('attention', trunk) / base_trunk:.2f} | "
              f"{norm('pull', trunk) / base_trunk:.2f} | {norm('pull', fc1) / base_fc1:.2f} | "
              f"{norm('push', fc1) / base_fc1:.2f} | {d_body:.1f} | {d_bgd:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
