"""pyacemaker-hpc."""
__version__ = "0.1.0"
