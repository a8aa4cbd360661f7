"""bnstats: exact per-channel image statistics for input normalization.

Library use::

    from bnstats import RunningStats

    rs = RunningStats()
    for batch in loader:          # uint8/uint16 exact, floats in float64
        rs.update(batch)
    rs.result()["mean"], rs.result()["std"]
"""

__version__ = "0.1.0"

from .decode import DecodeOptions  # noqa: E402
from .engine import Tally, compute, count_files  # noqa: E402
from .stats import RunningStats  # noqa: E402

__all__ = ["RunningStats", "DecodeOptions", "Tally", "compute", "count_files", "__version__"]
