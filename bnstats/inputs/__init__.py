"""Inputs: what the user named -> items, in one sorted order, with a reader for each.

``select`` turns paths, brace patterns and file lists into a selection; ``sources`` holds the source
protocol, folders and files; ``archives`` (tar, zip), ``arrays`` (npy, npz, IDX), ``parquet`` and
``remote`` (fsspec URLs) are the other kinds. Sources know nothing of statistics."""
