"""assd: the ASSD object detector, from training to verified TensorRT deployment."""

__version__ = "0.1.0"
