"""bnstats: exact per-channel image statistics for input normalization.

Library use::

    from bnstats import RunningStats

    rs = RunningStats()
    for batch in loader:          # uint8/uint16 exact, floats in float64
        rs.update(batch)
    rs.result()["mean"], rs.result()["std"]
"""

__version__ = "0.1.0"

from .count import CountSpec, Tally, count_files, count_partition  # noqa: E402
from .decode import DecodeOptions, decode_array, decode_bytes  # noqa: E402
from .engine import compute  # noqa: E402
from .sources import Source, register_source, select  # noqa: E402
from .stats import RunningStats, Statistic, register_statistic  # noqa: E402

__all__ = [
    "RunningStats", "Statistic", "register_statistic", "DecodeOptions", "decode_array", "decode_bytes",
    "Source", "register_source", "select", "CountSpec", "Tally", "count_partition", "count_files", "compute",
    "__version__",
]
