"""invwnn: learning to rewind. Coordinate-wise past-weight prediction for machine unlearning."""
__version__ = "0.1.0"
