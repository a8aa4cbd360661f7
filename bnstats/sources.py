"""Finding the images to count, in one deterministic order.

Paths may be files or folders; folders are walked recursively. Images are
recognised by extension, case-insensitively; hidden files and folders and
other files are ignored. The result is sorted by path, always, so that every
worker count, shard split and resume sees the same sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

IMG_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pnm",
)


class NoImagesError(Exception):
    """The given paths hold no images."""


def has_image_extension(path: str) -> bool:
    """True if the file name ends in a known image extension (any case)."""
    return path.lower().endswith(IMG_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def iter_image_paths(paths: Iterable[str]) -> list[str]:
    """All image files under ``paths``, sorted by path, without duplicates.

    A file named directly is taken if it has an image extension; a folder is
    walked recursively, skipping hidden entries. Raises
    :class:`NoImagesError` if nothing is found.
    """
    paths = list(paths)
    found = {}  # real path -> the path as first spelled: one entry per file
    walked = set()  # real paths of folders walked: symlink loops end here
    for root in paths:
        root = os.fspath(root)
        if os.path.isdir(root):
            for folder, dirs, files in os.walk(root, followlinks=True):
                real = os.path.realpath(folder)  # once per folder: realpath costs a stat per path part
                if real in walked:
                    dirs[:] = []
                    continue
                walked.add(real)
                dirs[:] = [d for d in dirs if not _is_hidden(d)]
                for name in files:
                    if not _is_hidden(name) and has_image_extension(name):
                        found.setdefault(os.path.join(real, name), os.path.join(folder, name))
        elif has_image_extension(root):
            found.setdefault(os.path.realpath(root), root)
    if not found:
        raise NoImagesError("no images found under " + ", ".join(map(str, paths)))
    return sorted(found.values())


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` (0-based) of ``count`` contiguous, near-equal parts.

    Contiguous slices of the sorted list keep each machine's reads local to
    its folders; shard sizes differ by at most one.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in 0..{count - 1}, got {index}")
    n = len(paths)
    return list(paths[index * n // count : (index + 1) * n // count])


def class_of(path: str, roots: Sequence[str]) -> str:
    """The ImageFolder class of ``path``: its top-level folder under a root.

    Files directly in a root (or named on the command line) get ``""``.
    """
    for root in roots:
        root = os.fspath(root)
        if os.path.isdir(root):
            rel = os.path.relpath(path, root)
            if not rel.startswith(os.pardir):
                parts = rel.split(os.sep)
                return parts[0] if len(parts) > 1 else ""
    return ""
