"""The cost of bnstats.torch.layer_stats on a torchvision-style ResNet-18 (CPU).

512 random 64x64 images in batches of 64 (float32, random weights, no
download): a plain no-grad forward over the batches vs ``layer_stats`` in
train mode and in sequential mode, interleaved repeats. Printed: medians,
minima, and the median over repeats of each method's time over the plain
pass of the same repeat (a paired ratio: the steadiest on a shared
machine). fvcore's ``update_bn_stats`` is timed too when fvcore is installed.

    pip install ".[torch]"
    python benchmarks/bench_torch.py --repeat 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from bnstats.torch import layer_stats


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout: 20 BatchNorm2d layers."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, inplanes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def plain(model, batches):
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)


def train_bn(model, batches):
    """BN layers normalizing with batch statistics, no hooks: what any precise-BN pass costs anyway."""
    model.eval()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()
    model.load_state_dict(saved)


def fvcore_pass(update_bn_stats, model, batches):
    """fvcore's precise BN over the batches: it counts the BN layers in training mode (the caller sets them)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    update_bn_stats(model, batches, len(batches))
    model.eval()
    model.load_state_dict(saved)


def timed(f):
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-sequential", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNet18()
    data = torch.rand(args.images, 3, args.size, args.size)
    batches = list(data.split(args.batch_size))
    methods = {
        "plain no-grad forward (eval)": lambda: plain(model, batches),
        "train-mode BN forward, no hooks": lambda: train_bn(model, batches),
        "layer_stats mode=train": lambda: layer_stats(model, batches),
    }
    if not args.no_sequential:
        methods["layer_stats mode=sequential"] = lambda: layer_stats(model, batches, mode="sequential")
    try:
        from fvcore.nn.precise_bn import update_bn_stats
        methods["fvcore update_bn_stats"] = lambda: fvcore_pass(update_bn_stats, model, batches)
    except ImportError:
        pass
    plain(model, batches[:1])  # warm-up
    times = {name: [] for name in methods}
    for _ in range(args.repeat):
        for name, f in methods.items():
            times[name].append(timed(f))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{args.images} images {args.size}x{args.size}, batch {args.batch_size}, median of {args.repeat}")
    plain_times = times["plain no-grad forward (eval)"]
    base, base_min = statistics.median(plain_times), min(plain_times)
    print(f"{'':32s} {'median':>14s} {'ratio':>6s}   {'min':>11s} {'ratio':>6s}   paired ratio")
    for name, ts in times.items():  # shared machines: the min, and the ratio to the plain pass just before
        median = statistics.median(ts)
        paired = statistics.median(t / p for t, p in zip(ts, plain_times))
        print(f"{name:32s} {median:12.3f} s {median / base:5.2f}x   {min(ts):9.3f} s {min(ts) / base_min:5.2f}x   "
              f"{paired:9.2f}x")


if __name__ == "__main__":
    main()
