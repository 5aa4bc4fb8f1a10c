"""Measured peak memory of one inference forward pass next to ``assd.models.limits.estimate_memory``.

    python scripts/measure_memory.py assd513 4

Builds the preset with random weights in a fresh process, runs one ``torch.no_grad`` forward pass on a
batch of random images (one thread) and prints the peak resident memory the process gained (VmHWM minus
VmRSS before the model existed; Linux) and the estimate. docs/reliability.md lists the results.
"""

from __future__ import annotations

import sys

import torch

from assd.models import ASSD, get_config
from assd.models.limits import estimate_memory


def resident_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def main(name: str, batch: int) -> None:
    torch.set_num_threads(1)
    cfg = get_config(name)
    before = resident_bytes("VmRSS")
    model = ASSD(cfg).eval()
    with torch.no_grad():
        model(torch.randn(batch, 3, cfg.input_size, cfg.input_size))
    measured = resident_bytes("VmHWM") - before
    estimate = estimate_memory(cfg, batch)
    print(f"{name} batch {batch}: measured {measured / 1e9:.2f} GB, estimate {estimate.describe()}, "
          f"measured/estimate {measured / estimate.total:.2f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
