"""trajgen: record the weight trajectories of many small training runs into a Zarr store."""
__version__ = "0.1.0"
