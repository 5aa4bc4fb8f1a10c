"""assd: the ASSD object detector, from training to verified TensorRT deployment.

``from assd import Detector`` is the application API (``assd.detector``); it is imported on first
use, so ``import assd`` stays light (no torch).
"""

__version__ = "0.1.0"
__all__ = ["Detector", "Result", "__version__"]


def __getattr__(name: str):
    if name in ("Detector", "Result"):
        from assd import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'assd' has no attribute {name!r}")
