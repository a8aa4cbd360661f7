"""Collection settings for the whole repository (the tests' fixtures live in tests/conftest.py)."""

import importlib.util

# bnstats/torch.py imports torch: its doctests are collected only where torch is installed
collect_ignore = [] if importlib.util.find_spec("torch") else ["bnstats/torch.py"]
