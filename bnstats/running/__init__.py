"""Running: one partition -> states, and everything around a run.

``count`` counts one partition into a tally (a worker's or a Dask task's unit of work); ``engine`` runs
partitions on local worker processes; ``cluster`` on Dask; ``checkpoint`` saves and resumes; ``job`` is
one compute run from Python; ``compare`` runs streaming and a naive full load side by side;
``interrupts`` turns stop signals into a consistent stop."""
