"""Build photo-like image datasets from the few real photos in ``photos/``.

Each image is a random crop of a random source photo, rescaled to a random
size around the target and saved as JPEG (or PNG), in a torchvision
ImageFolder layout: one class folder per source photo.

    python benchmarks/make_dataset.py OUT --count 2000 --size 400x350
    python benchmarks/make_dataset.py sample_data --sample   # the repo's sample_data/
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).with_name("photos")


def source_photos() -> dict[str, Image.Image]:
    """The source photos by name, decoded once."""
    return {p.stem: Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))}


def photo_crop(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop of ``photo`` (25-100% of each side), rescaled to ``size``."""
    w, h = photo.size
    cw = int(w * rng.uniform(0.25, 1.0))
    ch = int(h * rng.uniform(0.25, 1.0))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    crop = photo.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize(size, Image.Resampling.BILINEAR)


def make_dataset(out: str, count: int, size=(400, 350), jitter=0.1, seed=0, png_every=0) -> list[str]:
    """Write ``count`` photo-like JPEGs under ``out/<photo name>/``; return their paths."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    names = sorted(photos)
    written = []
    for i in range(count):
        name = names[i % len(names)]
        w = max(1, int(size[0] * rng.uniform(1 - jitter, 1 + jitter)))
        h = max(1, int(size[1] * rng.uniform(1 - jitter, 1 + jitter)))
        image = photo_crop(photos[name], (w, h), rng)
        folder = os.path.join(out, name)
        os.makedirs(folder, exist_ok=True)
        if png_every and i % png_every == png_every - 1:
            path = os.path.join(folder, f"{i:06d}.png")
            image.save(path)
        else:
            path = os.path.join(folder, f"{i:06d}.jpg")
            image.save(path, quality=int(rng.integers(75, 96)))
        written.append(path)
    return written


def make_sample_data(out: str) -> None:
    """The repo's ``sample_data/``: 3 classes, 36 small images, JPEG and PNG, some gray."""
    rng = np.random.default_rng(2026)
    photos = source_photos()
    classes = {"cat": "chelsea", "coffee": "coffee", "space": "astronaut"}
    for label, name in classes.items():
        folder = os.path.join(out, label)
        os.makedirs(folder, exist_ok=True)
        for i in range(12):
            size = (int(rng.integers(48, 161)), int(rng.integers(48, 161)))
            image = photo_crop(photos[name], size, rng)
            if i == 5:  # one grayscale image per class, stored as L
                image = image.convert("L")
            if i % 4 == 3:
                image.save(os.path.join(folder, f"{label}_{i:02d}.png"), optimize=True)
            else:
                image.save(os.path.join(folder, f"{label}_{i:02d}.jpg"), quality=85)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", default="400x350", help="WxH around which sizes vary by 10%%")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", action="store_true", help="build the repo's sample_data/ instead")
    args = parser.parse_args()
    if args.sample:
        make_sample_data(args.out)
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        paths = make_dataset(args.out, args.count, (w, h), seed=args.seed)
        print(f"wrote {len(paths)} images under {args.out}")


if __name__ == "__main__":
    main()
