"""Serving on NVIDIA Triton Inference Server (the ``serve`` extra: nvidia-pytriton, tritonclient).

``server``      ``assd serve``: an artifact behind the tritonserver pytriton bundles (runners inside)
``protocol``    the request/response contract shared by the server, the repository and the clients
``repository``  ``assd export --triton``: a native model repository (ensemble of pre / network / post)
``client``      server URLs, a detection client, ``assd eval --model URL``
``loadtest``    ``assd bench --server``: throughput and latency per concurrency, Triton's statistics
``environment`` the extra's packages, the Python-backend stub's interpreter, loopback-only addresses

Nothing here is imported by the earlier stages; modules import pytriton/tritonclient lazily, so the
package imports without the extra and commands say how to install it.
"""
