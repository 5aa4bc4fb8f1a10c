"""Timing of runners, stage by stage: preprocess -> inference -> decode + NMS.

Artifacts and batch sizes are interleaved round by round, so that machine noise (other processes,
clock changes) hits every configuration alike. Warm-up iterations are excluded; on a GPU every stage
is closed by a device synchronization so host timers measure the device work (CUDA events would time
the same span). Statistics are medians and percentiles over the timed iterations.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from assd.models.assd import priors_for
from assd.runtime.postprocess import PostprocessConfig, detect
from assd.runtime.preprocess import preprocess
from assd.runtime.runners import Runner


@dataclass
class StageTimes:
    """Seconds per timed iteration (one batch) for each stage."""

    preprocess: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    postprocess: list[float] = field(default_factory=list)

    @property
    def total(self) -> np.ndarray:
        return np.add(np.add(self.preprocess, self.inference), self.postprocess)


SMOOTHING_SIGMA = 8.0  # pixels: the Gaussian blur that gives the noise a photo's local correlation


def synthetic_images(count: int, width: int = 500, height: int = 375, seed: int = 0) -> list[np.ndarray]:
    """Deterministic RGB uint8 images of PASCAL VOC's typical size, [height, width, 3]: uniform noise
    blurred with a Gaussian of ``SMOOTHING_SIGMA`` pixels, then stretched back to 0..255.

    Not raw noise: speed is not independent of content. Raw noise drives the random-weight presets'
    unscaled attention (softmax of q^T k) to scores in the thousands, whose exponentials underflow to
    denormal floats (350k denormal values in assd321's tensors for one noise image, none for a photo);
    ONNX Runtime and PyTorch compute those 2.5x slower on a CPU, OpenVINO does not, so noise would time
    a case no deployment sees and skew the comparison (docs/benchmarks.md). Blurred noise times like the
    VOC photos (assd321, ONNX Runtime CPU: 0.17 s noise-free, as a photo). cv2 does the blur (no
    hand-written filter)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        smooth = cv2.GaussianBlur(noise, (0, 0), SMOOTHING_SIGMA).astype(np.float32)
        smooth = (smooth - smooth.min()) * (255.0 / max(float(smooth.max() - smooth.min()), 1.0))
        images.append(smooth.round().astype(np.uint8))
    return images


def _now(runner: Runner) -> float:
    runner.synchronize()
    return time.perf_counter()


def time_one_batch(runner: Runner, images: list[np.ndarray], priors: torch.Tensor,
                   postprocess_cfg: PostprocessConfig, times: StageTimes) -> None:
    cfg = runner.cfg
    start = _now(runner)
    batch = preprocess(images, cfg, device=runner.device)
    after_pre = _now(runner)
    loc, conf = runner.infer(batch)
    after_infer = _now(runner)
    detect(loc, conf, cfg, postprocess_cfg, priors)
    end = _now(runner)
    times.preprocess.append(after_pre - start)
    times.inference.append(after_infer - after_pre)
    times.postprocess.append(end - after_infer)


def benchmark(runners: list[Runner], batch_sizes: list[int], iters: int = 20, warmup: int = 3,
              progress=None) -> dict[tuple[int, int], StageTimes]:
    """Timed stages for every (runner index, batch size), interleaved round-robin."""
    pool = synthetic_images(max(batch_sizes))
    priors = {i: priors_for(r.cfg).to(r.device) for i, r in enumerate(runners)}
    postprocess_cfg = {i: PostprocessConfig.from_dict(r.postprocess) for i, r in enumerate(runners)}
    results = {(i, b): StageTimes() for i in range(len(runners)) for b in batch_sizes}
    for round_index in range(warmup + iters):
        for i, runner in enumerate(runners):
            for batch_size in batch_sizes:
                times = results[(i, batch_size)] if round_index >= warmup else StageTimes()
                time_one_batch(runner, pool[:batch_size], priors[i], postprocess_cfg[i], times)
        if progress is not None:
            progress(round_index + 1, warmup + iters)
    return results


def peak_host_memory_mb() -> float:
    """Peak resident memory of this process so far (MB; Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_device_memory_mb(runner: Runner) -> float | None:
    if runner.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(runner.device) / 2**20
