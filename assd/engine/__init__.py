"""The engine stage: compose the FP16 / INT8 precision graphs and hand them to TensorRT.

It sits above export (which writes graphs) and calibration (which quantizes them): export and
calibration never import this package, so the flow is one-way.

``precision_graph``  the graph to build: Attention lowered, int8 Q/DQ on an fp16 base, fp32 islands
``gated``  ``--max-delta-map`` / ``--keep-high`` / ``--calib-method auto``: the gate verifies that composed graph
``build``  ``assd build-engine``: options, the precision graph, the strongly typed TensorRT build, sidecar
"""
