"""Evaluation: predict over a dataset, VOC07/VOC12/COCO metrics, detections JSON, drawings.

``predict_dataset(infer, dataset, ...)`` -> per-image ``Detections`` in pixels;
``evaluate_detections(detections, dataset, metric)`` / ``evaluate_model(model, dataset, ...)`` -> ``EvalResult``.
"""

from assd.evaluation.evaluate import (
    METRICS,
    EvalResult,
    FirstImages,
    check_class_names,
    default_metric,
    evaluate_detections,
    evaluate_model,
    predict_dataset,
)
from assd.evaluation.results_json import (
    from_coco_results,
    load_coco_results,
    save_coco_results,
    to_coco_results,
)

__all__ = ["METRICS", "EvalResult", "FirstImages", "check_class_names", "default_metric", "evaluate_detections",
           "evaluate_model", "from_coco_results", "load_coco_results", "predict_dataset", "save_coco_results",
           "to_coco_results"]
