"""Decoding: bytes or arrays -> pixels in the requested mode, ready to count.

One decoder family per module (Pillow/simplejpeg/OpenCV in ``decode``, the PNG fast path in ``png``,
TIFF pages and scientific TIFF in ``tiff``) and torchvision's Resize/CenterCrop rules in ``transforms``.
Every decoder checks the declared size against ``bnstats.limits`` before it allocates."""
