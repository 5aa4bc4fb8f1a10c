"""Serving on NVIDIA Triton Inference Server (the ``serve`` extra: nvidia-pytriton, tritonclient).

``server``      ``assd serve``: an artifact behind the tritonserver pytriton bundles (runners inside)
``repository``  ``assd export --triton``: a native model repository (ensemble of pre / network / post)
``repository_set`` the repository's run id in every config, checked when a Python step loads
``loadtest``    ``assd bench --server``: throughput and latency per concurrency, Triton's statistics
``environment`` the Python-backend stub's interpreter, free ports

The contract and the client live in ``assd.remote`` (below this stage, so ``assd.Detector`` can use them).

Nothing here is imported by the earlier stages; modules import pytriton/tritonclient lazily, so the
package imports without the extra and commands say how to install it.
"""
