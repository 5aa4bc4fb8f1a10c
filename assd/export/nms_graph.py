"""``--with-postprocess``: decode + NMS appended to the exported graph, with fixed-size outputs.

Written as ONNX nodes (onnx.helper) because no exporter maps torchvision's NMS to ONNX's multi-class
``NonMaxSuppression`` — the node TensorRT maps to its INMSLayer. Outputs, padded to K = max_detections:

    boxes   [B, K, 4] float32  xyxy normalized to [0, 1]
    scores  [B, K]    float32  descending per image, 0 where padded
    classes [B, K]    int64    1..C-1 (or ``conventions.label_ids``' ids), 0 where padded
    count   [B]       int64    number of valid rows per image

The model's conventions apply as in ``assd.runtime.postprocess.detect``: the decode clamp on the size
exponent, clipping to [0, 1] before NMS, and the label-id map; without a per-image cap
(``max_detections=None``) K is ``top_k * (C - 1)``.

Semantics differ from ``assd.runtime.postprocess`` in one respect: ONNX NMS caps the boxes kept per
class *after* suppression (``top_k``), where the torch path caps the candidates *before* it. Both keep
the same detections whenever a class has at most ``top_k`` boxes over the score threshold.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from assd.models.assd import priors_for
from assd.models.config import ModelConfig


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


def append_postprocess(proto: onnx.ModelProto, cfg: ModelConfig, pp) -> onnx.ModelProto:
    """Replace the (loc, conf) outputs of ``proto`` by padded detections (see the module docstring)."""
    graph = proto.graph
    b = _Builder(graph)
    boxes = _decode(b, "loc", cfg)  # [B, A, 4]
    probabilities = b.op("Softmax", ["conf"], axis=-1)  # [B, A, C]
    foreground = b.op("Slice", [probabilities, b.const("i1", np.array([1], np.int64)),
                                b.const("num_classes", np.array([cfg.num_classes], np.int64)),
                                b.const("axis2", np.array([2], np.int64))])
    scores_bca = b.op("Transpose", [foreground], perm=[0, 2, 1])  # [B, C-1, A]
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

    # Per image: the K' = min(K, max_detections) best rows, by a [B, K] score matrix masked by image.
    batch_size = b.op("Gather", [b.op("Shape", ["images"]), b.const("s0", np.array(0, np.int64))])
    images_range = b.op("Range", [b.const("r0", np.array(0, np.int64)), batch_size,
                                  b.const("r1", np.array(1, np.int64))])  # [B]
    same_image = b.op("Equal", [b.op("Unsqueeze", [images_range, b.const("ax1", np.array([1], np.int64))]),
                                b.op("Unsqueeze", [batch_index, b.const("ax0", np.array([0], np.int64))])])
    minus_one = b.const("minus_one", np.array(-1.0, np.float32))
    masked = b.op("Where", [same_image, b.op("Unsqueeze", [selected_scores, "pp/ax0"]), minus_one])  # [B, K]
    k_out = pp.max_per_image(cfg.num_classes)
    k = b.op("Min", [b.op("Shape", [selected_scores]), b.const("max_det", np.array([k_out], np.int64))])
    top_scores, top_index = b.op("TopK", [masked, k], n_outputs=2, axis=1, largest=1, sorted=1)  # [B, K']
    valid = b.op("Greater", [top_scores, b.const("minus_half", np.array(-0.5, np.float32))])
    zero_f, zero_i = b.const("zero_f", np.array(0.0, np.float32)), b.const("zero_i", np.array(0, np.int64))
    out_scores = b.op("Where", [valid, top_scores, zero_f])
    out_classes = b.op("Where", [valid, b.op("Gather", [labels, top_index], axis=0), zero_i])
    out_boxes = b.op("Where", [b.op("Unsqueeze", [valid, "pp/axis_last"]),
                               b.op("Gather", [selected_boxes, top_index], axis=0), zero_f])  # [B, K', 4]
    count = b.op("ReduceSum", [b.op("Cast", [valid], to=TensorProto.INT64), "pp/ax1"], keepdims=0)

    missing = b.op("Sub", ["pp/max_det", k])  # [1]: rows of padding
    pads_2d = b.op("Concat", ["pp/i0", "pp/i0", "pp/i0", missing], axis=0)
    pads_3d = b.op("Concat", ["pp/i0", "pp/i0", "pp/i0", "pp/i0", missing, "pp/i0"], axis=0)
    named = {"boxes": b.op("Pad", [out_boxes, pads_3d, zero_f]), "scores": b.op("Pad", [out_scores, pads_2d, zero_f]),
             "classes": b.op("Pad", [out_classes, pads_2d, zero_i]), "count": count}
    for name, tensor in named.items():
        graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"pp/out_{name}"))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", k_out, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", k_out]),
        helper.make_tensor_value_info("classes", TensorProto.INT64, ["batch", k_out]),
        helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"])])
    return proto
