"""``--with-postprocess``: decode + NMS appended to the exported graph, with fixed-size outputs.

Written as ONNX nodes (onnx.helper) because no exporter maps torchvision's NMS to ONNX's multi-class
``NonMaxSuppression`` — the node TensorRT maps to its INMSLayer. Outputs, padded to K = max_detections:

    boxes   [B, K, 4] float32  xyxy normalized to [0, 1]
    scores  [B, K]    float32  descending per image, 0 where padded
    classes [B, K]    int64    1..C-1 (or ``conventions.label_ids``' ids), 0 where padded
    count   [B]       int64    number of valid rows per image

The candidates are capped *before* ``NonMaxSuppression``, as in ``assd.runtime.postprocess``, so ONNX
Runtime, TensorRT and the torch path compute the same detections: per image and class the ``top_k``
best anchors (``TopK``), then per image the ``MAX_NMS_CANDIDATES`` best of those (TensorRT's NMS layer
considers at most 5000 boxes per image and its TopK takes K below 3840; see ``assd.runtime.postprocess``).
The non-candidates' scores are set to 0, which no score threshold lets through. The outputs have a
fixed shape (TensorRT needs no output allocator): the per-image selection pads its candidates with
K rows of score -1 before its ``TopK`` of constant K.
The model's conventions apply as in ``assd.runtime.postprocess.detect``: the decode clamp on the size
exponent, clipping to [0, 1] before NMS, and the label-id map; without a per-image cap
(``max_detections=None``) K is ``top_k * (C - 1)``, at most ``MAX_NMS_CANDIDATES``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from assd.models.assd import priors_for
from assd.models.config import ModelConfig
from assd.runtime.postprocess import MAX_NMS_CANDIDATES


class _Builder:
    """Appends nodes with unique names to a graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph, self.count = graph, 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name=f"pp/{name}"))
        return f"pp/{name}"

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, **attrs) -> list[str] | str:
        self.count += 1
        outputs = [f"pp/{op_type.lower()}_{self.count}_{i}" for i in range(n_outputs)]
        self.graph.node.append(helper.make_node(op_type, inputs, outputs, name=f"pp/{op_type}_{self.count}",
                                                **attrs))
        return outputs if n_outputs > 1 else outputs[0]


def _decode(b: _Builder, loc: str, cfg: ModelConfig) -> str:
    priors = priors_for(cfg).numpy()[None]  # [1, A, 4] cxcywh
    v_center, v_size = cfg.variances
    prior_xy = b.const("prior_xy", priors[..., :2])
    prior_wh = b.const("prior_wh", priors[..., 2:])
    prior_wh_scaled = b.const("prior_wh_v0", (priors[..., 2:] * v_center).astype(np.float32))
    axis, zero, two, four = (b.const(n, np.array([v], np.int64)) for n, v in
                             [("axis_last", -1), ("i0", 0), ("i2", 2), ("i4", 4)])
    loc_xy = b.op("Slice", [loc, zero, two, axis])
    loc_wh = b.op("Slice", [loc, two, four, axis])
    center = b.op("Add", [prior_xy, b.op("Mul", [loc_xy, prior_wh_scaled])])
    scaled = b.op("Mul", [loc_wh, b.const("v_size", np.array(v_size, np.float32))])
    if cfg.conventions.decode_clamp is not None:
        scaled = b.op("Min", [scaled, b.const("decode_clamp", np.array(cfg.conventions.decode_clamp, np.float32))])
    half_size = b.op("Mul", [b.op("Mul", [prior_wh, b.op("Exp", [scaled])]), b.const("half", np.array(0.5, np.float32))])
    boxes = b.op("Concat", [b.op("Sub", [center, half_size]), b.op("Add", [center, half_size])], axis=-1)
    if cfg.conventions.clip_before_nms:
        boxes = b.op("Clip", [boxes, b.const("box_min", np.array(0.0, np.float32)),
                              b.const("box_max", np.array(1.0, np.float32))])
    return boxes


def _cap_candidates(b: _Builder, scores_bca: str, cfg: ModelConfig, pp) -> str:
    """``scores_bca [B, C-1, A]`` with every score but the NMS candidates set to 0: per image and class
    the ``top_k`` best anchors, then per image the ``MAX_NMS_CANDIDATES`` best of those."""
    num_anchors, foreground = len(priors_for(cfg)), cfg.num_classes - 1
    # A class's candidates beyond MAX_NMS_CANDIDATES could never pass the per-image cap (TopK needs K < 3840).
    per_class = min(pp.top_k, num_anchors, MAX_NMS_CANDIDATES)
    cand_scores, cand_anchors = b.op("TopK", [scores_bca, b.const("top_k", np.array([per_class], np.int64))],
                                     n_outputs=2, axis=2, largest=1, sorted=1)  # [B, C-1, k]
    # Positions in the flattened [B, (C-1) * A] score matrix: class * A + anchor.
    class_offsets = b.const("class_offsets", (np.arange(foreground, dtype=np.int64) * num_anchors)[None, :, None])
    flat_shape = b.const("flat_candidates", np.array([0, -1], np.int64))
    positions = b.op("Reshape", [b.op("Add", [cand_anchors, class_offsets]), flat_shape])  # [B, (C-1) * k]
    values = b.op("Reshape", [cand_scores, flat_shape])
    if foreground * per_class > MAX_NMS_CANDIDATES:
        values, best = b.op("TopK", [values, b.const("max_candidates", np.array([MAX_NMS_CANDIDATES], np.int64))],
                            n_outputs=2, axis=1, largest=1, sorted=1)  # [B, MAX_NMS_CANDIDATES]
        positions = b.op("GatherElements", [positions, best], axis=1)
    flat_scores = b.op("Reshape", [scores_bca, b.const("flat_scores", np.array([0, -1], np.int64))])
    zeros = b.op("ConstantOfShape", [b.op("Shape", [flat_scores])],
                 value=numpy_helper.from_array(np.zeros(1, np.float32)))
    capped = b.op("ScatterElements", [zeros, positions, values], axis=1)
    return b.op("Reshape", [capped, b.op("Shape", [scores_bca])])


def append_postprocess(proto: onnx.ModelProto, cfg: ModelConfig, pp) -> onnx.ModelProto:
    """Replace the (loc, conf) outputs of ``proto`` by padded detections (see the module docstring)."""
    graph = proto.graph
    b = _Builder(graph)
    boxes = _decode(b, "loc", cfg)  # [B, A, 4]
    probabilities = b.op("Softmax", ["conf"], axis=-1)  # [B, A, C]
    foreground = b.op("Slice", [probabilities, b.const("i1", np.array([1], np.int64)),
                                b.const("num_classes", np.array([cfg.num_classes], np.int64)),
                                b.const("axis2", np.array([2], np.int64))])
    scores_bca = _cap_candidates(b, b.op("Transpose", [foreground], perm=[0, 2, 1]), cfg, pp)  # [B, C-1, A]
    selected = b.op("NonMaxSuppression", [
        boxes, scores_bca, b.const("max_per_class", np.array([pp.top_k], np.int64)),
        b.const("iou", np.array([pp.nms_iou], np.float32)),
        b.const("score", np.array([pp.score_threshold], np.float32))], center_point_box=0)  # [K, 3]
    batch_index = b.op("Gather", [selected, b.const("col0", np.array(0, np.int64))], axis=1)  # [K]
    class_index = b.op("Gather", [selected, b.const("col1", np.array(1, np.int64))], axis=1)
    box_index = b.op("Gather", [selected, b.const("col02", np.array([0, 2], np.int64))], axis=1)  # [K, 2]
    selected_scores = b.op("GatherND", [scores_bca, selected])  # [K]
    selected_boxes = b.op("GatherND", [boxes, box_index])  # [K, 4]
    label_ids = cfg.conventions.label_ids or range(1, cfg.num_classes)
    labels = b.op("Gather", [b.const("label_ids", np.array(label_ids, np.int64)), class_index], axis=0)

    # Per image: the max_detections best rows, by a [B, N] score matrix masked by image (N selected rows).
    # K = max_detections rows of score -1 (and zero labels / boxes) are appended first, so that the TopK
    # has a constant K whatever N is and every output has the fixed shape [B, K, ...].
    max_det = min(pp.max_per_image(cfg.num_classes), MAX_NMS_CANDIDATES)
    batch_size = b.op("Gather", [b.op("Shape", ["images"]), b.const("s0", np.array(0, np.int64))])
    images_range = b.op("Range", [b.const("r0", np.array(0, np.int64)), batch_size,
                                  b.const("r1", np.array(1, np.int64))])  # [B]
    same_image = b.op("Equal", [b.op("Unsqueeze", [images_range, b.const("ax1", np.array([1], np.int64))]),
                                b.op("Unsqueeze", [batch_index, b.const("ax0", np.array([0], np.int64))])])
    minus_one = b.const("minus_one", np.array(-1.0, np.float32))
    masked = b.op("Where", [same_image, b.op("Unsqueeze", [selected_scores, "pp/ax0"]), minus_one])  # [B, N]
    padding = b.op("Expand", [minus_one, b.op("Concat", [b.op("Unsqueeze", [batch_size, "pp/ax0"]),
                                                         b.const("max_det", np.array([max_det], np.int64))], axis=0)])
    candidates = b.op("Concat", [masked, padding], axis=1)  # [B, N + K]
    top_scores, top_index = b.op("TopK", [candidates, "pp/max_det"], n_outputs=2, axis=1, largest=1, sorted=1)
    valid = b.op("Greater", [top_scores, b.const("minus_half", np.array(-0.5, np.float32))])  # [B, K]
    zero_f, zero_i = b.const("zero_f", np.array(0.0, np.float32)), b.const("zero_i", np.array(0, np.int64))
    padded_labels = b.op("Concat", [labels, b.const("zero_labels", np.zeros(max_det, np.int64))], axis=0)
    padded_boxes = b.op("Concat", [selected_boxes, b.const("zero_boxes", np.zeros((max_det, 4), np.float32))], axis=0)
    out_scores = b.op("Where", [valid, top_scores, zero_f])
    out_classes = b.op("Where", [valid, b.op("Gather", [padded_labels, top_index], axis=0), zero_i])
    out_boxes = b.op("Where", [b.op("Unsqueeze", [valid, "pp/axis_last"]),
                               b.op("Gather", [padded_boxes, top_index], axis=0), zero_f])  # [B, K, 4]
    count = b.op("ReduceSum", [b.op("Cast", [valid], to=TensorProto.INT64), "pp/ax1"], keepdims=0)
    named = {"boxes": out_boxes, "scores": out_scores, "classes": out_classes, "count": count}
    for name, tensor in named.items():
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"pp/out_{name}"))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", max_det, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", max_det]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch", max_det]),
        helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"])])
    return proto
