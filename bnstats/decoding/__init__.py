"""Decoding: bytes or arrays -> pixels in the requested mode, ready to count.

The dispatch in ``decode``; the options in ``options``; the one decoded-image shape in ``image``; one
decoder family per module (Pillow in ``pillow``, simplejpeg in ``jpeg``, the PNG fast path in ``png``,
TIFF pages and scientific TIFF in ``tiff``, OpenCV 16-bit colour and wide PPM in ``sixteen``) and
torchvision's Resize/CenterCrop rules in ``transforms``.
Every decoder checks the declared size against ``bnstats.limits`` before it allocates."""
