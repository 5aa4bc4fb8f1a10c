"""INT8 calibration: activation ranges measured on real images (cached), then a Q/DQ ONNX graph.

``quantize_int8(fp32_onnx, "model.int8.onnx", calib_data="voc:ROOT", num_images=500, method="entropy",
cache_path="model.calib.json")`` is what ``assd calibrate`` and ``assd build-engine --int8`` run.
Q/DQ placement follows TensorRT's fusion rules (``placement``); recipes of layers kept in higher
precision are read and recorded by ``recipe``.
"""

from assd.calibration.cache import CalibrationSettings, check_cache_path, load_cache, save_cache, sha256_file
from assd.calibration.images import CalibrationImages, ImageCalibrationReader, calibration_images
from assd.calibration.quantize import (
    METHODS,
    QuantizeResult,
    build_qdq_model,
    calibrated_ranges,
    measure_ranges,
    quantize_int8,
)
from assd.calibration.recipe import KeptLayer, Recipe, load_recipe, read_kept_high

__all__ = [
           "METHODS",
           "CalibrationImages",
           "CalibrationSettings",
           "ImageCalibrationReader",
           "KeptLayer",
           "QuantizeResult",
           "Recipe",
           "build_qdq_model",
           "calibrated_ranges",
           "calibration_images",
           "check_cache_path",
           "load_cache",
           "load_recipe",
           "measure_ranges",
           "quantize_int8",
           "read_kept_high",
           "save_cache",
           "sha256_file",
]
