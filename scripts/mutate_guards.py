"""Remove or alter, one at a time, each line of assd that guards a TensorRT/CUDA rule; the fake-TensorRT
tests must fail for every one (docs/deployment.md, "The fake TensorRT, held to the real bindings").

    python scripts/mutate_guards.py      (about 20 s per mutant; restores every file)
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EX, BUILD, RUNNER = "assd/runtime/tensorrt_execution.py", "assd/engine/build.py", "assd/runtime/tensorrt_runner.py"
MUTANTS = [
    (EX, "        self.stream.wait_stream(caller)  # the input was written on the caller's stream\n", ""),
    (EX, "        caller.wait_stream(self.stream)  # the outputs are read on the caller's stream\n", ""),
    (EX, "        self.stream.wait_stream(caller)\n        with cuda.stream(self.stream):\n            captured.graph.replay()\n",
         "        with cuda.stream(self.stream):\n            captured.graph.replay()\n"),
    (EX, "            captured.graph.replay()\n        caller.wait_stream(self.stream)\n", "            captured.graph.replay()\n"),
    (EX, "        self._launch(context, cuda.current_stream(self.device))\n", ""),
    (EX, "                context.set_device_memory(self.memory.data_ptr(), int(size))\n", ""),
    (EX, "            cudart.cudaGetLastError()  # trtexec: \"Clean up any CUDA error\" (endCaptureOnError)\n", ""),
    (RUNNER, "            self.runtime.engine_host_code_allowed = True  # the plan embeds its own (lean) runtime\n", "            pass\n"),
    (BUILD, "1 << int(strongly_typed)", "int(strongly_typed)"),
    ("assd/runtime/engine_info.py", "built, here = release(info.tensorrt_version), release(tensorrt_version)",
     "built, here = parse_version(info.tensorrt_version), parse_version(tensorrt_version)"),
    ("assd/bench/run.py", "    return [*reports, *artifacts]\n", "    return reports\n"),
    ("assd/runtime/onnxruntime_runner.py", "            providers[0] = (requested[0], tensorrt_options(self.cfg.input_size, self.max_batch, cache_dir))\n", ""),
    ("assd/runtime/onnxruntime_runner.py", "        self.backend = BACKENDS.get(session_provider(self.session), self.providers[0])\n",
     "        self.backend = BACKENDS.get(ort.get_available_providers()[0], self.providers[0])\n"),
    (BUILD, "0 if strongly_typed is None else 1 << int(strongly_typed)", "0"),
    (BUILD, "    if plan is None:\n", "    if False:\n"),
    (BUILD, "        if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=False):\n",
     "        if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=True):\n"),
    (BUILD, "        if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=False):\n",
     "        if timing_cache is None:\n"),
]
TESTS = ["tests/test_tensorrt_runner.py", "tests/test_tensorrt_build.py", "tests/test_tensorrt_build_strict.py",
         "tests/test_bench_options.py"]
bad = 0
for path, old, new in MUTANTS:
    file = ROOT / path
    text = file.read_text()
    assert text.count(old) == 1, (path, old)
    file.write_text(text.replace(old, new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *TESTS],
                              check=False, cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        file.write_text(text)
    failed = [l for l in done.stdout.splitlines() if l.startswith("FAILED")]
    print(("caught " if done.returncode else "MISSED ") + f"{path}: {old.strip()[:70]!r} -> {new.strip()[:40]!r}: "
          + (failed[0][7:110] if failed else ""), flush=True)
    bad += done.returncode == 0
print("missed", bad)
sys.exit(1 if bad else 0)
