"""A fake of the few ``torch.cuda`` calls the TensorRT runner makes, as strict as CUDA about streams.

Work launched on a stream (a TensorRT enqueue, a graph replay) does not run when it is launched: it
runs when some other stream waits for that stream, or when the stream (or the device) is
synchronized — the most adversarial schedule CUDA allows. Until then its outputs hold NaN. A launch
also needs its stream to have waited for the caller's stream (the one that wrote the input) since
its previous launch; otherwise it is a race, raised as ``CudaRaceError``.

CUDA graph capture (``cudaStreamBeginCapture`` in thread-local mode) forbids synchronizing, and
waiting on work from outside the capture: either invalidates the capture and leaves a CUDA error
pending, as does a failed capture. A pending error is raised by the next launch or wait until
``cudaGetLastError`` clears it, as CUDA's sticky-until-read "last error" does.
"""

from __future__ import annotations

import contextlib
import itertools

_handles = itertools.count(1)


class CudaRaceError(AssertionError):
    """What a missing stream dependency would be on a GPU: reading data another stream may not have written."""


class FakeCuda:
    """``torch.cuda`` (Stream, current_stream, stream, device, CUDAGraph, synchronize, device queries) and
    ``cudaGetLastError``."""

    def __init__(self, capability=(8, 9), name="NVIDIA L4"):
        self.default = FakeStream(self, 0)
        self.current = [self.default]
        self.capturing = None  # (graph, stream) while a capture is open
        self.pending_error = None  # the CUDA "last error", cleared by cudaGetLastError
        self.streams = [self.default]
        self.replays = 0
        self.capability, self.name = capability, name

    def Stream(self, device=None):
        stream = FakeStream(self, next(_handles))
        self.streams.append(stream)
        return stream

    def current_stream(self, device=None):
        return self.current[-1]

    @contextlib.contextmanager
    def stream(self, stream):
        self.current.append(stream)
        try:
            yield
        finally:
            self.current.pop()

    def device(self, device):
        return contextlib.nullcontext()

    def CUDAGraph(self):
        return FakeGraph(self)

    def get_device_capability(self, device=None):
        return self.capability

    def get_device_name(self, device=None):
        return self.name

    def synchronize(self, device=None):
        self.forbid_in_capture("torch.cuda.synchronize()")
        for stream in self.streams:
            stream.flush()

    # -------------------------------------------------------------------------------------- errors
    def check_error(self):
        if self.pending_error is not None:
            raise RuntimeError(f"CUDA error: {self.pending_error} (left pending by an earlier call)")

    def cudaGetLastError(self) -> int:
        error, self.pending_error = self.pending_error, None
        return 0 if error is None else 900  # cudaErrorStreamCaptureInvalidated

    def invalidate_capture(self, why: str):
        graph, _ = self.capturing
        graph.invalidated = True
        self.pending_error = f"operation not permitted when stream is capturing ({why})"

    def forbid_in_capture(self, call: str):
        if self.capturing is not None:
            self.invalidate_capture(call)
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({call})")


class FakeStream:
    def __init__(self, cuda: FakeCuda, handle: int):
        self.cuda, self.cuda_stream = cuda, handle
        self.pending = []  # launched work not yet run
        self.waited = set()  # streams this one waited for since its last launch

    def wait_stream(self, stream: FakeStream):
        self.cuda.check_error()
        if self.cuda.capturing is not None and self.cuda.capturing[1] is self:
            self.cuda.forbid_in_capture("waiting on work outside the capture")
        stream.flush()  # what ``stream`` launched so far happens before what this one does next
        self.waited.add(stream)

    def synchronize(self):
        self.cuda.forbid_in_capture("stream.synchronize()")
        self.flush()

    def launch(self, work, what: str):
        """Queue ``work`` (a callable); the caller's stream must have been waited for since the last launch."""
        self.cuda.check_error()
        caller = self.cuda.current[-2] if len(self.cuda.current) > 1 else self.cuda.default
        if caller is not self and caller not in self.waited:
            raise CudaRaceError(f"{what} on stream {self.cuda_stream} without waiting for the caller's stream "
                                f"{caller.cuda_stream}: the input may not be written yet")
        self.waited.clear()
        self.pending.append(work)

    def flush(self):
        work, self.pending = self.pending, []
        for item in work:
            item()


class FakeGraph:
    def __init__(self, cuda: FakeCuda):
        self.cuda, self.work, self.invalidated = cuda, [], False

    def capture_begin(self, pool=None, capture_error_mode="global"):
        stream = self.cuda.current_stream()
        assert stream.cuda_stream != 0, "capture on the default stream"
        self.cuda.check_error()
        self.cuda.capturing = (self, stream)

    def capture_end(self):
        self.cuda.capturing = None
        if self.invalidated:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def replay(self):
        for context, version in self.work:
            if context.version != version:
                raise AssertionError("CUDA graph replayed against an execution context whose shapes or addresses "
                                     "changed since capture (undefined behaviour in TensorRT)")
        self.cuda.replays += 1
        for context, _ in self.work:
            context._poison_outputs()
        stream = self.cuda.current_stream()
        stream.launch(lambda: [context._compute() for context, _ in self.work], "graph replay")
