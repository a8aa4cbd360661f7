"""Statistics: states that reduce pixels exactly and merge in any order (pure numpy, no I/O).

Each statistic follows the chunk -> combine -> aggregate shape of dask's reductions: ``update``/``add_image``
folds an image into a small state, ``merge`` combines two states (associative, so workers, shards,
checkpoints and Dask agree to the bit), ``result`` turns a state into numbers, and ``to_dict``/``from_dict``
carry it through JSON, validated.

The modules: ``formulas`` (Chan/Welford, exact integer moments: read its docstring first), ``states``
(histogram and moment states), ``validate`` (checks of states read from JSON), ``counting`` and ``layout``
(how pixels are counted and arrays read), ``base`` (the :class:`~bnstats.statistics.base.Statistic`
protocol; ``build``/``restore`` make one by name and settings from ``bnstats.registry``), one module per
statistic (``running``: mean/std/var/min/max; ``percentiles``; ``covariance``), and ``tally`` (all of a
run's statistics together). A new statistic is one module with a
:class:`~bnstats.statistics.base.Statistic` subclass plus a registry line (or, from another package, an
entry point of group ``bnstats.statistics``)."""
