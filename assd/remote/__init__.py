"""The client side of a served assd model: the request/response contract and a Triton client.

``protocol``  the request/response contract shared by the server, the repository and the clients
``client``    server URLs (any host), a detection client (tritonclient, imported lazily): API key,
              timeout, retries on connection failures
``image_header`` an encoded image's size from its header (refusing decompression bombs before decoding)
``checks``    the serve extra's client packages, loopback addresses

It imports only models and runtime, so the application API (``assd.Detector``) can open a URL without
importing the server stage (``assd.serving``), which imports this package.
"""
