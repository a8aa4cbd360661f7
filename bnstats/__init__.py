"""bnstats: exact per-channel image statistics for input normalization.

Library use::

    from bnstats import RunningStats

    rs = RunningStats()
    for batch in loader:          # uint8/uint16 exact, floats in float64
        rs.update(batch)
    rs.result()["mean"], rs.result()["std"]
"""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), not here: ``import
# bnstats`` runs before the command line can catch a Ctrl-C, so it must be
# quick and must not load numpy or Pillow (see bnstats/__main__.py).
_EXPORTS = {
    "running.count": ("CountSpec", "count_files", "count_partition"),
    "statistics.tally": ("Tally",),
    "decoding.options": ("DecodeOptions",),
    "decoding.decode": ("decode_array", "decode_bytes"),
    "running.engine": ("count_selection",),
    "inputs.base": ("Source",),
    "inputs.select": ("select",),
    "statistics.running": ("RunningStats",),
    "statistics.base": ("Statistic",),
    "registry": ("register",),
    "api": ("compute",),
    "output.result": ("Result",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "compute", "Result", "RunningStats", "Statistic", "register", "DecodeOptions", "decode_array", "decode_bytes",
    "Source", "select", "CountSpec", "Tally", "count_partition", "count_files", "count_selection",
    "__version__",
]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'bnstats' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
