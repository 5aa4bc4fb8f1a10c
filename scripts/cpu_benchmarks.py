"""The CPU table of docs/benchmarks.md in one interleaved run: PyTorch eager, torch.compile, ONNX Runtime fp32
and int8, OpenVINO fp32 and int8, for one model, at the given batch sizes.

    python scripts/cpu_benchmarks.py CHECKPOINT_OR_PRESET MODEL.onnx MODEL.int8.onnx --batch 1,8 --iters 5 \
        --json out.json

``assd bench`` times every backend but one torch mode per run (``--compile`` is global); this script opens
both torch modes beside the ONNX graphs so all six share one round-robin (assd.bench.timing.benchmark).
It also records what the numbers depend on: CPU, cores, threads and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from assd.bench.report import add_ratios, make_row, to_markdown
from assd.bench.run import parse_batches
from assd.bench.timing import benchmark
from assd.runtime.runners import open_runner


def open_all(checkpoint: str, fp32: str, int8: str, threads: int | None) -> list:
    """The six runners, in table order."""
    runners = [open_runner(checkpoint, device="cpu"), open_runner(checkpoint, device="cpu", compile=True)]
    for backend in ("onnxruntime", "openvino"):
        runners += [open_runner(path, device="cpu", backend=backend, threads=threads) for path in (fp32, int8)]
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help=".pt checkpoint or preset name (the fp32 reference)")
    parser.add_argument("fp32", help="its fp32 .onnx export")
    parser.add_argument("int8", help="its int8 Q/DQ .onnx graph (assd calibrate)")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime / OpenVINO threads")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    batches = parse_batches(args.batch)
    load_before = os.getloadavg()
    runners = open_all(args.checkpoint, args.fp32, args.int8, args.threads)
    start = time.perf_counter()
    results = benchmark(runners, batches, iters=args.iters, warmup=args.warmup)
    rows = [make_row(runners[i], b, results[(i, b)]) for i in range(len(runners)) for b in batches]
    rows.sort(key=lambda row: row["batch"])
    add_ratios(rows)
    machine = {"cpu": runners[0].describe()["device"], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "openvino_threads": runners[-1].threads, "load_average_before": load_before,
               "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - start,
               "command": " ".join(["python", *sys.argv])}
    print(to_markdown(rows))
    print(json.dumps(machine))
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump({"machine": machine, "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
