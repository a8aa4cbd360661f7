"""A fake input kind: a ``.fake`` file lists synthetic images, one ``SEED HEIGHT WIDTH`` line each.

Item ``i`` of ``x.fake`` has the key ``x.fake:000i`` and is the RGB uint8 image
``numpy.random.default_rng(SEED).integers(0, 256, (HEIGHT, WIDTH, 3))``; a line
that is not three whole numbers is an unreadable item (a skip entry).
"""

import numpy as np

from bnstats.decoding.image import ArrayImage
from bnstats.inputs.base import Source


def fake_image(line: str) -> ArrayImage:
    """The synthetic image a line describes."""
    seed, height, width = (int(v) for v in line.split())
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ArrayImage(pixels, ("R", "G", "B"))


class FakeSource(Source):
    """``*.fake`` files of synthetic images (see the module docstring)."""

    @classmethod
    def claims(cls, path):
        return str(path).endswith(".fake")

    def list_items(self):
        keys = []
        for path in self.paths:
            with open(path) as f:
                keys += [f"{path}:{i:04d}" for i, _ in enumerate(f)]
        return sorted(keys)

    def read(self, keys):
        lines = {}
        for key in keys:
            path, row = key.rsplit(":", 1)
            if path not in lines:
                with open(path) as f:
                    lines[path] = f.read().splitlines()
            yield (key,), lambda line=lines[path][int(row)]: fake_image(line)
