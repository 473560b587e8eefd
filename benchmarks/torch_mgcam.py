"""MGCAM's training step in PyTorch (CPU), the reference of benchmarks/bench_train.py.

The same network as mgcam_tf (paper Section 3, the official prototxt): 5x5 stem, four multi-scale context
stages (three 3x3 convolutions of 32 filters, dilation 1, 2, 3, each with a
Caffe BatchNorm without scale/shift, concatenated, ReLU), soft contrastive
attention, three streams with their own weights, FC 128 - dropout - FC ids.
The same four-term objective (identity on the three streams, region triplet,
attention) and the official solver: SGD momentum 0.9, coupled L2 weight
decay 0.005 on weights only, biases at twice the learning rate.

Written to be fast, not a strawman: channels_last memory format (oneDNN's
preferred layout), fused cuDNN/oneDNN-friendly modules, `set_to_none`
gradients, optional bfloat16 autocast where the CPU has it.

    python benchmarks/torch_mgcam.py --batch 128 --steps 10 [--bf16] [--no_channels_last]

Prints one JSON line: images_per_s (median over the timed steps).
PyTorch is a benchmark dependency only: mgcam_tf never imports it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def caffe_bn(channels: int) -> nn.BatchNorm2d:
    # Caffe BatchNorm without Scale: no affine; Keras momentum 0.999 is torch's 0.001.
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.001, affine=False)


def xavier(module: nn.Module) -> nn.Module:
    # Caffe's xavier filler (FAN_IN): uniform in +-sqrt(3 / fan_in), as the Keras twin.
    fan_in = module.weight[0].numel()
    limit = (3.0 / fan_in) ** 0.5
    nn.init.uniform_(module.weight, -limit, limit)
    nn.init.zeros_(module.bias)
    return module


class MultiScale(nn.Module):
    """Three dilated 3x3 convolutions (32 filters each) - BN - concat - ReLU."""

    def __init__(self, cin: int, filters: int = 32, rates=(1, 2, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            xavier(nn.Conv2d(cin, filters, 3, padding=r, dilation=r)) for r in rates)
        self.norms = nn.ModuleList(caffe_bn(filters) for _ in rates)

    def forward(self, x):
        return F.relu(torch.cat([n(c(x)) for c, n in zip(self.convs, self.norms)], 1))


class Stream(nn.Module):
    def __init__(self, num_ids: int, dim: int = 128, dropout: float = 0.2):
        super().__init__()
        self.stage3, self.stage4 = MultiScale(96), MultiScale(96)
        self.embedding = xavier(nn.Linear(96 * 5 * 2, dim))
        self.dropout = nn.Dropout(dropout)
        self.classifier = xavier(nn.Linear(dim, num_ids))

    def forward(self, x):
        x = F.max_pool2d(x, 2)
        x = F.max_pool2d(self.stage3(x), 2)
        x = F.max_pool2d(self.stage4(x), 2)
        h = self.embedding(torch.flatten(x, 1))
        return h, self.classifier(self.dropout(h))


class MGCAM(nn.Module):
    """Input [B, 4, 160, 64] RGB-M; outputs h/logits of the three streams and Phi+."""

    def __init__(self, num_ids: int):
        super().__init__()
        self.stem_conv = xavier(nn.Conv2d(4, 32, 5, padding=2))
        self.stem_bn = caffe_bn(32)
        self.stage1, self.stage2 = MultiScale(32), MultiScale(96)
        self.attention = xavier(nn.Conv2d(96, 1, 3, padding=1))
        self.full, self.body, self.bgd = Stream(num_ids), Stream(num_ids), Stream(num_ids)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem_conv(x))), 2)
        f = self.stage2(F.max_pool2d(self.stage1(x), 2))
        phi = torch.sigmoid(self.attention(f).float())
        p = phi.to(f.dtype)
        out = {"attention": phi}
        for name, stream, feats in (("full", self.full, f), ("body", self.body, f * p),
                                    ("bgd", self.bgd, f * (1 - p))):
            out["h_" + name], out["logits_" + name] = stream(feats)
        return out


def objective(out: dict, pid, target, margin: float = 10.0):
    """L_id (three streams) + 0.01 L_trip (eq. 6) + 0.1 L_att (Caffe EuclideanLoss)."""
    o = {k: v.float() for k, v in out.items()}
    ident = sum(F.cross_entropy(o["logits_" + s], pid) for s in ("full", "body", "bgd"))
    pull = (o["h_full"] - o["h_body"]).pow(2).sum(1)
    push = F.relu(margin - (o["h_full"] - o["h_bgd"]).pow(2).sum(1))
    trip = (pull + push).mean()
    att = (target - o["attention"]).pow(2).sum() / (2.0 * pid.shape[0])
    return ident + 0.01 * trip + 0.1 * att


def make_optimizer(model: nn.Module, lr: float = 0.01) -> torch.optim.Optimizer:
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    # torch's SGD weight_decay is coupled L2 added to the gradient, as Caffe's.
    return torch.optim.SGD([{"params": weights, "weight_decay": 0.005},
                            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9)


class TrainStep:
    """One MGCAM training step on fixed synthetic tensors, ready to call repeatedly."""

    def __init__(self, batch: int = 128, bf16: bool = False, channels_last: bool = True,
                 num_ids: int = 751, seed: int = 0):
        torch.manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = MGCAM(num_ids).to(memory_format=fmt).train()
        self.opt = make_optimizer(self.model)
        self.x = torch.randn(batch, 4, 160, 64).to(memory_format=fmt)
        self.pid = torch.randint(0, num_ids, (batch,))
        self.target = torch.rand(batch, 1, 40, 16)
        self.bf16 = bf16
        self.batch = batch

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self.x)
        loss = objective(out, self.pid, self.target)
        loss.backward()
        self.opt.step()
        return float(loss)


def benchmark(batch: int = 128, steps: int = 10, warmup: int = 2, bf16: bool = False,
              channels_last: bool = True, num_ids: int = 751,
              threads: int | None = None) -> dict:
    """Median images/s of the full training step on synthetic tensors."""
    if threads:
        torch.set_num_threads(threads)
    step = TrainStep(batch, bf16, channels_last, num_ids)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    if not np.isfinite(loss):
        raise RuntimeError(f"torch reference diverged: loss {loss}")
    return {"images_per_s": batch / float(np.median(times)), "steps": len(times),
            "bf16": bf16, "channels_last": channels_last,
            "threads": torch.get_num_threads()}


def serve(batch: int, bf16: bool, channels_last: bool, num_ids: int,
          threads: int | None) -> None:
    """Steps on request, for a benchmark that alternates with other work.

    Reads lines "N" from stdin, runs N training steps, answers with one JSON
    list of their durations in seconds. Runs in its own process so that its
    thread pool (OpenMP) and TensorFlow's never share one.
    """
    import sys

    if threads:
        torch.set_num_threads(threads)
    step = TrainStep(batch, bf16, channels_last, num_ids)
    step()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        times = []
        for _ in range(int(line)):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num_ids", type=int, default=751)
    parser.add_argument("--serve", action="store_true",
                        help="run steps on request from stdin (see serve())")
    args = parser.parse_args()
    if args.serve:
        serve(args.batch, args.bf16, not args.no_channels_last, args.num_ids, args.threads)
        return
    print(json.dumps(benchmark(args.batch, args.steps, args.warmup, args.bf16,
                               not args.no_channels_last, threads=args.threads)))


if __name__ == "__main__":
    main()
