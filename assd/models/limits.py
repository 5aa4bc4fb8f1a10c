"""What a model may be and what a run of it needs: sane ``ModelConfig`` bounds and a memory estimate.

``check_config(cfg, source)`` refuses, in one line, a config no real network has (a checkpoint or ONNX
file saying ``input_size: -5`` or ``100000``, a non-positive std, ...) before anything is allocated.

``check_memory(cfg, batch, device, ...)`` refuses a run whose estimated memory exceeds what the machine
has available, before allocating it (the OOM killer gives no message). The estimate, for inference:

- weights: parameters x bytes per value;
- activations: the prediction maps (all alive until the heads) + three times the largest single layer
  output (its input, its output and a residual branch alive together) + the heads' outputs (twice:
  per-map outputs and their concatenation); the largest layer output comes from a forward pass on the
  meta device (no memory, no compute);
- attention: per image, the score matrix ``[N, N]`` and its softmax of the largest map (N = H x W
  positions; the maps are attended one after the other), which grows with the square of the positions.

It is a lower bound of what frameworks really allocate (allocator caches, workspaces): the refusal is
for runs that cannot fit, not a promise that every accepted run fits. docs/reliability.md compares it
with measured peaks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from assd.errors import UserError
from assd.models.config import ModelConfig

MAX_INPUT_SIZE = 4096  # pixels per side; the paper's largest is 513
MAX_CLASSES = 100_000
MAX_CHANNELS = 16_384
GB = 1e9


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_finite(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in values)


def _config_problem(cfg: ModelConfig) -> str | None:
    """What is wrong with ``cfg`` (None when it is sane)."""
    from assd.models.assd import feature_sizes, priors_for

    if not _is_int(cfg.input_size) or not 1 <= cfg.input_size <= MAX_INPUT_SIZE:
        return f"input_size {cfg.input_size!r} is not a whole number of pixels in 1..{MAX_INPUT_SIZE}"
    if not _is_int(cfg.num_classes) or not 2 <= cfg.num_classes <= MAX_CLASSES:
        return f"num_classes {cfg.num_classes!r} is not in 2..{MAX_CLASSES}"
    if not _is_int(cfg.fusion_channels) or not 1 <= cfg.fusion_channels <= MAX_CHANNELS:
        return f"fusion_channels {cfg.fusion_channels!r} is not in 1..{MAX_CHANNELS}"
    for layer in cfg.extras:
        numbers = (layer.mid, layer.out, layer.stride, layer.padding + 1)
        if not all(_is_int(v) for v in numbers) or not all(1 <= v <= MAX_CHANNELS for v in numbers):
            return f"extra layer {layer} has channels/stride/padding out of range"
    scales = (*cfg.min_scales, *cfg.max_scales)
    if not _positive_finite(scales) or max(scales) > 2:
        return "anchor scales must be numbers in (0, 2]"
    if not all(_is_int(r) and 1 <= r <= 16 for ratios in cfg.aspect_ratios for r in ratios):
        return "aspect ratios must be whole numbers in 1..16"
    if not _positive_finite((*cfg.variances, *cfg.std)) or len(cfg.variances) != 2:
        return "variances and std must be two / three positive numbers"
    if len(cfg.mean) != 3 or len(cfg.std) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                          for v in cfg.mean):
        return "mean and std must be three finite numbers each"
    try:
        sizes = feature_sizes(cfg)
    except Exception as exc:  # noqa: BLE001 - an unknown backbone or layout: reported as one line
        return f"its layout cannot be built ({type(exc).__name__}: {exc})"
    if len(sizes) != cfg.num_maps:
        return f"{len(sizes)} prediction maps from backbone + extras but {cfg.num_maps} anchor scales"
    if min(h for h, _ in sizes) < 1:
        return f"input_size {cfg.input_size} is too small for this network (a prediction map would be empty)"
    try:
        priors_for(cfg)  # the prior geometry (steps, offset, clip) as every run computes it
    except Exception as exc:  # noqa: BLE001 - conventions no network has: reported as one line
        return f"its priors cannot be built ({type(exc).__name__}: {exc})"
    return None


def check_config(cfg: ModelConfig, source: str) -> ModelConfig:
    """``cfg`` if it is sane, else a one-line ``UserError`` naming ``source`` (the file it came from)."""
    problem = _config_problem(cfg)
    if problem is not None:
        raise UserError(f"{source}: model config is not usable: {problem}: use a checkpoint or ONNX file "
                        "written by assd")
    return cfg


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a forward pass of ``batch`` images needs (see the module docstring)."""

    batch: int
    weights: int
    activations: int
    attention: int

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.attention

    def describe(self) -> str:
        return (f"about {self.total / GB:.2f} GB (weights {self.weights / GB:.2f}, activations "
                f"{self.activations / GB:.2f}, attention scores {self.attention / GB:.2f})")


def _largest_layer_output(cfg: ModelConfig) -> int:
    """Elements of the largest leaf-module output for one image (forward pass on the meta device)."""
    from assd.models.assd import ASSD

    largest = 0

    def note(module, inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel())

    with torch.device("meta"):
        model = ASSD(cfg).eval()
        images = torch.empty(1, 3, cfg.input_size, cfg.input_size)
    for module in model.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(note)
    with torch.no_grad():
        model(images)
    return largest


def estimate_memory(cfg: ModelConfig, batch: int, bytes_per_value: int = 4,
                    attention_bytes_per_value: int = 4) -> MemoryEstimate:
    """Estimated memory of one inference forward pass of ``batch`` images (module docstring)."""
    from assd.models.assd import feature_channels, feature_sizes
    from assd.models.stats import count_parameters

    with torch.device("meta"):
        from assd.models.assd import ASSD

        num_params = count_parameters(ASSD(cfg))
    sizes, channels = feature_sizes(cfg), feature_channels(cfg)
    maps = sum(h * w * c for (h, w), c in zip(sizes, channels))
    anchors = sum(h * w * n for (h, w), n in zip(sizes, cfg.anchors_per_location))
    heads = 2 * anchors * (4 + cfg.num_classes)
    per_image = maps + 3 * _largest_layer_output(cfg) + heads
    positions = max(h * w for h, w in sizes)
    attention = 2 * positions * positions * attention_bytes_per_value if cfg.attention else 0
    return MemoryEstimate(batch=batch, weights=num_params * bytes_per_value,
                          activations=batch * per_image * bytes_per_value, attention=batch * attention)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), None when unlimited/unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            base, limit_file, usage_file = Path("/sys/fs/cgroup") / group.lstrip("/"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / group.lstrip("/")
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        try:
            limit = (base / limit_file).read_text().strip()
            usage = int((base / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(int(limit) - usage, 0)
    return None


def available_memory(device: torch.device | str = "cpu") -> tuple[int, str]:
    """``(bytes available, what they are)`` on ``device``: free GPU memory for CUDA; for the CPU,
    MemAvailable of /proc/meminfo (else free pages from sysconf), capped by a cgroup limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {torch.cuda.get_device_name(device)}"
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room()
    if room is not None and room < available:
        return room, "left under this process's memory limit (cgroup)"
    return available, "available host memory"


def check_memory(cfg: ModelConfig, batch: int, device: torch.device | str = "cpu", what: str = "this run",
                 bytes_per_value: int = 4, extra_bytes: int = 0, hint: str = "use a smaller --batch",
                 estimate: MemoryEstimate | None = None) -> MemoryEstimate:
    """Refuse (UserError) when ``estimate_memory`` + ``extra_bytes`` exceeds ``available_memory(device)``;
    ``estimate``: that of ``cfg``, ``batch`` and ``bytes_per_value`` when the caller already has it."""
    estimate = estimate or estimate_memory(cfg, batch, bytes_per_value)
    needed = estimate.total + extra_bytes
    available, where = available_memory(device)
    if needed > available:
        raise UserError(f"{what}: batch {batch} at {cfg.input_size}x{cfg.input_size} needs {estimate.describe()}"
                        f"{f' + {extra_bytes / GB:.2f} GB' if extra_bytes else ''}, but only "
                        f"{available / GB:.2f} GB is {where}: {hint}")
    return estimate


def check_runners_memory(runners, batch_size: int, command: str) -> None:
    """``check_memory`` for runners (``assd.runtime`` objects with ``cfg``, ``device``, ``precision``,
    ``artifact``) that stay loaded together while each runs ``batch_size`` images: each one's estimate
    plus the weights of the others must fit."""
    def value_bytes(runner) -> int:
        return 2 if runner.precision in ("fp16", "bf16") else 4  # int8 graphs compute in float on CPUs

    estimates = [estimate_memory(r.cfg, batch_size, value_bytes(r)) for r in runners]  # the slow part
    weights = [estimate.weights for estimate in estimates]  # the same for every batch size
    for index, runner in enumerate(runners):
        check_memory(runner.cfg, batch_size, runner.device, what=f"{command} {runner.artifact}",
                     bytes_per_value=value_bytes(runner), extra_bytes=sum(weights) - weights[index],
                     estimate=estimates[index],
                     hint="use a smaller --batch" + ("" if command == "bench" else "-size"))
