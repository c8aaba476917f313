"""imagen4ctl: operations toolkit for an Imagen 4 image service on fal.ai."""

__version__ = "0.1.0"
