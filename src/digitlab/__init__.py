"""digitlab: reproducible, tracked image-classification experiments."""

__version__ = "0.1.0"
