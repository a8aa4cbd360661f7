"""Statistics: states that reduce pixels exactly and merge in any order (pure numpy, no I/O).

Each statistic follows the chunk -> combine -> aggregate shape of dask's reductions: ``update``/``add_image``
folds an image into a small state, ``merge`` combines two states (associative, so workers, shards,
checkpoints and Dask agree to the bit), ``result`` turns a state into numbers, and ``to_dict``/``from_dict``
carry it through JSON, validated."""
