"""The optional compiled counting kernel; everything else is in pyproject.toml.

``optional=True``: without a C compiler the build goes on and bnstats
counts with numpy instead (the same counts; see bnstats/statistics/kernels.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bnstats.statistics._kernels", ["bnstats/statistics/_kernels.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"])])
