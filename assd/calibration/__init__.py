"""INT8 calibration: activation ranges measured on real images (cached), then a Q/DQ ONNX graph.

``quantize_int8(fp32_onnx, "model.int8.onnx", calib_data="voc:ROOT", num_images=500, method="entropy",
cache_path="model.calib.json")`` is what ``assd calibrate`` and ``assd build-engine --int8`` run.
"""

from assd.calibration.cache import CalibrationSettings, load_cache, save_cache, sha256_file
from assd.calibration.images import CalibrationImages, ImageCalibrationReader, calibration_images
from assd.calibration.quantize import METHODS, QuantizeResult, measure_ranges, quantize_int8

__all__ = [
           "METHODS",
           "CalibrationImages",
           "CalibrationSettings",
           "ImageCalibrationReader",
           "QuantizeResult",
           "calibration_images",
           "load_cache",
           "measure_ranges",
           "quantize_int8",
           "save_cache",
           "sha256_file",
]
