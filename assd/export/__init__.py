"""Export: PyTorch -> ONNX with metadata (and, with ``assd.calibration``, FP16 / INT8 graphs).

The metadata format itself is the runtime's input contract and lives in ``assd.runtime.metadata``.
"""

from assd.export.onnx_export import export_onnx

__all__ = ["export_onnx"]
