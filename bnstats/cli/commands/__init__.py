"""The ``bnstats`` commands, one module each; ``bnstats.cli.main`` gathers them into the command group.

``common`` holds what they share: one-line errors, checks before a run, and
writing the result. Shared options are in ``bnstats.cli.options``.
"""
