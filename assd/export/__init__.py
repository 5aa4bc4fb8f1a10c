"""Export: PyTorch -> ONNX with metadata (and, with ``assd.calibration``, FP16 / INT8 graphs)."""

from assd.export.metadata import OnnxMetadata, read_metadata
from assd.export.onnx_export import export_onnx

__all__ = ["OnnxMetadata", "export_onnx", "read_metadata"]
