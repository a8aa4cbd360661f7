"""Regenerate the figures under ``docs/figures/`` that the README shows.

Each figure is one :func:`figure` call: ``bnstats compute`` on the bundled
``sample_data`` with the given arguments, then ``bnstats plot`` of the result
(and, with ``trace=True``, of the run's ``--trace`` CSV). Both run as
``python -m bnstats`` in this interpreter, so the figures show what the
installed commands draw. Needs matplotlib (``pip install -e ".[plot]"``).

    python benchmarks/make_figures.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "figures"


def bnstats(*args) -> None:
    """``bnstats ARGS`` from the repository root; stops the script on failure."""
    command = [sys.executable, "-m", "bnstats", *map(str, args)]
    print("$ bnstats", " ".join(map(str, args)), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def figure(name: str, compute_args: list, plot_args: list = (), trace: bool = False) -> Path:
    """``docs/figures/NAME`` from ``bnstats compute COMPUTE_ARGS`` then ``bnstats plot PLOT_ARGS``.

    ``trace=True`` records the run's trace (``compute --trace``) and plots it too.
    """
    output = FIGURES / name
    with tempfile.TemporaryDirectory() as tmp:
        stats, trace_file = Path(tmp) / "stats.json", Path(tmp) / "trace.csv"
        bnstats("compute", *compute_args, *(["--trace", trace_file] if trace else []), "-q", "-o", stats)
        bnstats("plot", stats, *plot_args, *(["--trace", trace_file] if trace else []), "-o", output)
    return output


def main() -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    # histograms of the exact state + per-class means
    figure("sample_data.png", ["sample_data", "--group-by", "class"])
    # the benchmark photos (2000 photo-like JPEGs, as bench_compute.py builds them)
    photos = Path(tempfile.gettempdir()) / "bnstats-figure-photos"
    if not photos.is_dir():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_dataset import make_dataset

        make_dataset(str(photos), 2000, (400, 350), seed=1)
    # running estimates in file order, with what a BatchNorm layer would hold
    figure("convergence.png", [photos, "--batch-size", "32", "--bn-momentum", "0.1", "--trace-every", "8"],
           trace=True)
    # a random sample's running estimates with their 95% band
    figure("convergence_sampled.png", [photos, "--sample", "1000", "--seed", "1", "--trace-every", "8"],
           trace=True)


if __name__ == "__main__":
    main()
