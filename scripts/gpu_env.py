"""What this machine can really run, for scripts/gpu_acceptance.sh: python gpu_env.py OUT.json

Each answer comes from using the thing, not from asking what is installed: a CUDA op through torch,
a TensorRT builder (``import tensorrt`` alone does not load the builder libraries), and ONNX Runtime
sessions that ask for the TensorRT and CUDA providers, reporting ``session.get_providers()``
(``get_available_providers()`` lists what the wheel was built with; it is recorded for comparison only).
"""

from __future__ import annotations

import importlib.util
import json
import platform
import shutil
import subprocess
import sys


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def torch_facts() -> dict:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return {"torch": f"not importable ({first_line(exc)})", "cuda_available": False,
                "cuda": "not tried: torch is not importable"}
    facts = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": False}
    if not torch.cuda.is_available():
        facts["cuda"] = "torch.cuda.is_available() is False"
        return facts
    try:  # a real kernel and a copy back, not only the driver query
        ok = float((torch.ones(4, device="cuda") * 2).sum().item()) == 8.0
        facts.update(cuda_available=ok, gpu=torch.cuda.get_device_name(),
                     compute_capability=".".join(map(str, torch.cuda.get_device_capability())))
    except Exception as exc:  # noqa: BLE001
        facts["cuda"] = f"a CUDA op failed ({first_line(exc)})"
    else:
        facts.setdefault("cuda", "ok" if facts["cuda_available"] else "a CUDA op gave a wrong result")
    return facts


def tensorrt_facts(cuda: bool) -> dict:
    if importlib.util.find_spec("tensorrt") is None:
        return {"tensorrt": "not installed", "tensorrt_builder": "not tried"}
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001
        return {"tensorrt": f"not importable ({first_line(exc)})", "tensorrt_builder": "not tried"}
    if not cuda:
        return {"tensorrt": trt.__version__, "tensorrt_builder": "not tried: no usable CUDA device"}
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return {"tensorrt": trt.__version__, "tensorrt_builder": "ok" if builder is not None else "None"}
    except Exception as exc:  # noqa: BLE001
        return {"tensorrt": trt.__version__, "tensorrt_builder": f"failed ({first_line(exc)})"}


def onnxruntime_facts() -> dict:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except Exception as exc:  # noqa: BLE001
        return {"onnxruntime": f"not importable ({first_line(exc)})"}
    facts = {"onnxruntime": ort.__version__, "onnxruntime_built_with": ort.get_available_providers()}
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [value("x", TensorProto.FLOAT, [1, 4])], [value("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for name, chain in (("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
                        ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])):
        try:
            session = ort.InferenceSession(data, options, providers=chain)
            facts[f"onnxruntime_{name}_session"] = session.get_providers()[0]
        except Exception as exc:  # noqa: BLE001
            facts[f"onnxruntime_{name}_session"] = f"failed ({first_line(exc)})"
    return facts


def main(path: str) -> None:
    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    env.update(torch_facts())
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               check=False, capture_output=True, text=True)
        env["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    else:
        env["nvidia_smi"] = "not found"
    env.update(tensorrt_facts(env["cuda_available"]))
    env.update(onnxruntime_facts())
    env["tensorrt_usable"] = env.get("tensorrt_builder") == "ok"
    env["onnxruntime_cuda_usable"] = env.get("onnxruntime_cuda_session") == "CUDAExecutionProvider"
    env["onnxruntime_tensorrt_usable"] = env.get("onnxruntime_tensorrt_session") == "TensorrtExecutionProvider"
    with open(path, "w") as stream:
        json.dump(env, stream, indent=2)
    for key, value in env.items():
        print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main(sys.argv[1])
