"""The Python-backend models an ``assd export --triton`` repository contains (copied as ``1/model.py``).

They run inside tritonserver's Python stub, import ``triton_python_backend_utils`` (only the stub has it)
and assd (installed in the stub's Python), and reuse the runtime's pre- and post-processing.
"""
