"""The application API: ``Detector`` (any artifact, any source) and the live sources it reads.

``detector``       ``Detector``: open an artifact (local runner or served model), ``det(images)``, ``det.stream``
``sources``        image files/folders/globs, video files, cameras, network streams -> ``Frame``s
``streaming``      ``FrameStream``: decode and pre-process on background threads while the network runs
``remote_model``   a served model (``assd.remote.client``) behind the same calls as a local runner
``outputs``        annotated videos and JSON Lines, written to a temp file and renamed when complete
"""

from assd.detector.detector import Detector
from assd.runtime.result import Result

__all__ = ["Detector", "Result"]
