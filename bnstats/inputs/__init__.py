"""Inputs: what the user named -> items, in one sorted order, with a reader for each.

``select`` turns paths, brace patterns and file lists into a :class:`~bnstats.inputs.selection.Selection`;
``base`` holds the source protocol (``Source``, ``Partition``, errors, ``InputOptions`` whose fields declare the
input options); ``files`` the folders and loose image files; ``digests`` the additive digests of item lists.
The other kinds: ``archives`` (what tar and zip share), ``tar`` with ``tarindex`` (its header walk), ``zip``;
``arrays`` with ``arrayfiles`` (npy, npz, IDX); ``parquet`` with ``parquetfiles``; ``remote`` (fsspec URLs)
with ``stores`` (the connection to object stores, shared by every kind that reads URLs). Each kind declares the
options it reads (``Source.options_read``) and whether it tells classes; sources know nothing of statistics."""
