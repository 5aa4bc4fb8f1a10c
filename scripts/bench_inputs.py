"""Does an artifact's speed depend on what it is fed? Seconds per image (batch 1) on a VOC photo, raw
uniform noise and the blurred noise ``assd bench`` times, plus the denormal floats each leaves in an ONNX
graph's tensors (docs/benchmarks.md, "What the bench feeds the network").

usage: python scripts/bench_inputs.py PHOTO ARTIFACT[:BACKEND] ... [--repeats 3]
  e.g. python scripts/bench_inputs.py ../shared/data/voc-mini/VOCdevkit/VOC2012/JPEGImages/2008_000008.jpg \
       assd321.onnx:onnxruntime assd321.onnx:openvino assd321:torch
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _inputs(photo: str) -> dict[str, np.ndarray]:
    import cv2

    from assd.bench.timing import synthetic_images

    image = cv2.imread(photo)
    if image is None:
        raise SystemExit(f"error: {photo}: not a readable image")
    noise = np.random.default_rng(0).integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    return {"photo": image[:, :, ::-1].copy(), "uniform noise": noise, "blurred noise (bench)": synthetic_images(1)[0]}


def seconds_per_image(runner, batch, repeats: int) -> float:
    runner.infer(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        runner.infer(batch)
    return (time.perf_counter() - start) / repeats


def denormals(onnx_path: str, batch: np.ndarray) -> int:
    """Denormal float32 values over every node output of the graph for ``batch`` (ONNX Runtime, CPU)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(onnx_path)
    outputs = {value.name for value in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for node in model.graph.node for name in node.output
                              if name and name not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tiny = np.finfo(np.float32).tiny
    return sum(int(((np.abs(v) < tiny) & (v != 0)).sum()) for v in session.run(None, {"images": batch})
               if isinstance(v, np.ndarray) and v.dtype == np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo")
    parser.add_argument("artifacts", nargs="+", help="ARTIFACT[:BACKEND], e.g. model.onnx:openvino")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from assd.runtime.preprocess import preprocess
    from assd.runtime.runners import open_runner

    images = _inputs(args.photo)
    print("| artifact | backend | " + " | ".join(f"{name} (s)" for name in images) + " |")
    for spec in args.artifacts:
        artifact, _, backend = spec.partition(":")
        runner = open_runner(artifact, backend=backend or None, fp16_preview=False)
        batches = {name: preprocess([image], runner.cfg) for name, image in images.items()}
        times = [seconds_per_image(runner, batch, args.repeats) for batch in batches.values()]
        print(f"| {artifact} | {runner.backend} | " + " | ".join(f"{t:.3f}" for t in times) + " |")
        if artifact.endswith(".onnx"):
            counts = {name: denormals(artifact, batch.numpy()) for name, batch in batches.items()}
            print("  denormal float32 values in its tensors: "
                  + ", ".join(f"{name} {count:,}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
