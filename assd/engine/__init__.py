"""The engine stage: compose the FP16 / INT8 precision graphs and hand them to TensorRT.

It sits above export (which writes graphs) and calibration (which quantizes them): export and
calibration never import this package, so the flow is one-way.

``build``  ``assd build-engine``: options, the precision graph, the strongly typed TensorRT build, sidecar
"""
