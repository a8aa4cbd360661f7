"""Observers: order-dependent features fed each image's moments in item order, in the parent.

``base`` holds the protocol and the registry; ``batchnorm`` (what a BatchNorm layer would hold),
``trace`` (the running estimates as CSV rows) and ``sampling`` (seeded samples with confidence
intervals) are the built-in observers."""
