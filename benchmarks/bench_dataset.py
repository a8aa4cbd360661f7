"""bnstats.torch.dataset_stats against the forum recipe, on the same ImageFolder-like Dataset.

A folder of photo-like 256x256 JPEGs (``make_dataset.py``) in class folders,
read by a Dataset that does what torchvision's ``ImageFolder`` does (Pillow
opens the file, ``convert("RGB")``, then a transform):

* the forum recipe: ``ToTensor()`` (float32 in [0, 1]) and a DataLoader that
  stacks batches of 64; the main process adds up ``batch.mean((0, 2, 3))`` and
  ``batch.std((0, 2, 3))`` per batch in float32 and divides by the number of
  batches (the std of each batch averaged: not the dataset's std);
* ``dataset_stats`` on the same Dataset with ``PILToTensor()``'s uint8 twin
  (the same pixels before ``/ 255``), the same batch size and workers: the
  workers count each batch into a histogram and send that back.

torchvision's own ``ImageFolder``/``ToTensor``/``PILToTensor`` are used when
torchvision imports; otherwise the same steps written out (torchvision's
code, without the package). Repeats are interleaved; printed: medians, the
ratio (and the median of each repeat's ratio: the steadiest on a shared
machine), and the recipe's error against the exact numbers.

    python benchmarks/bench_dataset.py --count 2000 --workers 2 --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bnstats.torch import dataset_stats
from make_dataset import make_dataset


def transforms():
    """``(ToTensor, PILToTensor, ImageFolder, where they came from)``: torchvision's, or the same by hand."""
    try:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import PILToTensor, ToTensor

        return ToTensor(), PILToTensor(), ImageFolder, "torchvision"
    except Exception:  # noqa: BLE001 - not installed, or a build that does not load (a CUDA one on a CPU torch)
        return to_tensor, pil_to_tensor, ImageFolderLike, "written out (torchvision does not import here)"


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's PILToTensor: the uint8 pixels as (C, H, W), a view of an (H, W, C) copy."""
    return torch.as_tensor(np.array(img, copy=True)).view(img.size[1], img.size[0], -1).permute(2, 0, 1)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor on an RGB image: contiguous (C, H, W) float32 in [0, 1]."""
    return pil_to_tensor(img).contiguous().to(torch.float32).div(255)


class ImageFolderLike(Dataset):
    """torchvision's ImageFolder: ``root/class/file``, Pillow loading (``pil_loader``), ``(image, class index)``."""

    def __init__(self, root, transform):
        self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        self.samples = [(str(f), i) for i, c in enumerate(self.classes) for f in sorted((Path(root) / c).iterdir())]
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, target = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), target


def forum_recipe(dataset, batch_size: int, workers: int):
    """The usual snippet: per-batch mean and std of float32 batches, averaged over batches."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    mean, std, batches = torch.zeros(3), torch.zeros(3), 0
    for images, _ in loader:
        mean += images.mean((0, 2, 3))
        std += images.std((0, 2, 3))
        batches += 1
    return (mean / batches).tolist(), (std / batches).tolist()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    float_tf, uint8_tf, folder, origin = transforms()
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, args.count, size=(args.size, args.size), jitter=0)
        recipe_ds, exact_ds = folder(tmp, transform=float_tf), folder(tmp, transform=uint8_tf)
        times = {"forum recipe": [], "dataset_stats": []}
        for _ in range(args.repeat):  # interleaved: both see the same state of a shared machine
            t, (r_mean, r_std) = timed(lambda: forum_recipe(recipe_ds, args.batch_size, args.workers))
            times["forum recipe"].append(t)
            t, report = timed(lambda: dataset_stats(exact_ds, batch_size=args.batch_size, num_workers=args.workers))
            times["dataset_stats"].append(t)
    print(f"{args.count} JPEGs {args.size}x{args.size}, batch {args.batch_size}, {args.workers} workers, "
          f"{args.repeat} repeats; {platform.processor() or platform.machine()}, torch {torch.__version__}; "
          f"ImageFolder/ToTensor/PILToTensor: {origin}")
    for name, ts in times.items():
        print(f"  {name:14s} median {statistics.median(ts):6.2f} s  min {min(ts):6.2f} s  "
              f"({args.count / statistics.median(ts):6.0f} images/s)")
    paired = statistics.median(r / d for r, d in zip(times["forum recipe"], times["dataset_stats"]))
    print(f"  dataset_stats is {statistics.median(times['forum recipe']) / statistics.median(times['dataset_stats']):.2f}x "
          f"as fast (ratio of medians; median of the per-repeat ratios {paired:.2f}x)")
    for key, got in (("mean", r_mean), ("std", r_std)):
        exact = report[key]
        worst = max(abs(g - e) / e for g, e in zip(got, exact))
        print(f"  recipe {key}: {[round(v, 6) for v in got]}  exact {[round(v, 6) for v in exact]}  "
              f"worst relative error {worst:.1e}")


if __name__ == "__main__":
    main()
