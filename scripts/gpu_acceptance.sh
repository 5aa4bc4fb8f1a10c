#!/usr/bin/env bash
# GPU acceptance of assd in one command: environment, GPU tests, engines, benchmarks, engine accuracy.
#
#   scripts/gpu_acceptance.sh [OUT_DIR]            (default OUT_DIR: runs/gpu-acceptance)
#
# Writes OUT_DIR/report.md and OUT_DIR/report.json (environment, every step with its status and time,
# the merged benchmark table) plus one log per step. Exit 0 when every step that could run passed
# (steps this machine cannot run are listed as skipped, with the reason), 1 otherwise.
#
# Needs no network and installs nothing: the project runs from this checkout (PYTHONPATH) with the
# first of $PYTHON, ./.venv/bin/python, python3 whose environment has assd's dependencies (a GPU image
# with PyTorch+CUDA needs onnx, onnxruntime(-gpu), opencv, click, pycocotools, tqdm and pytest, and
# TensorRT for the engine steps: pip install -e '.[tensorrt-cu12]' or '.[tensorrt-cu13]').
#
# Settings (environment variables):
#   MODELS="assd321 assd513"  presets to export, build and benchmark (random weights: speed only)
#   BATCHES=1,8,32            benchmark batch sizes (the engines' profile is 1:8:32)
#   ITERS=20                  timed iterations per benchmark configuration
#   CALIB_DATA=synthetic:64   INT8 calibration images for the presets' engines
#   CHECKPOINT=path.pt        a trained checkpoint: its engines are built and `assd eval-engine`d on
#   DATA=voc:ROOT:2007-test   ... this data spec (the evaluation split)
#   CHECKPOINT_CALIB_DATA=voc:ROOT:2012-trainval   INT8 calibration images for the checkpoint's engine: a
#                             training split, never DATA (calibrating on the evaluated images would leak
#                             the test set into the INT8 scales); CHECKPOINT, DATA and this are all needed
#                             for the accuracy step, which is skipped with the reason otherwise
#   TRAIN_DATA=synthetic:64   data for the AMP training-step timing
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-runs/gpu-acceptance}
MODELS=${MODELS:-assd321 assd513}
BATCHES=${BATCHES:-1,8,32}
ITERS=${ITERS:-20}
CALIB_DATA=${CALIB_DATA:-synthetic:64}
TRAIN_DATA=${TRAIN_DATA:-synthetic:64}
CHECKPOINT=${CHECKPOINT:-}
DATA=${DATA:-}
CHECKPOINT_CALIB_DATA=${CHECKPOINT_CALIB_DATA:-}

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
assd() { "$PY" -m assd.cli "$@"; }

if ! mkdir -p "$OUT" 2>/dev/null || ! touch "$OUT/.writable" 2>/dev/null; then
  echo "error: $OUT: cannot write the report there: pass another folder" >&2
  exit 2
fi
rm -f "$OUT/.writable" "$OUT/steps.tsv"
OUT=$(cd "$OUT" && pwd)

record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/steps.tsv"; }
skip() { echo "skipped: $1: $2"; record "$1" skipped 0 "$2"; }
step() {  # step NAME COMMAND...: run it, log to OUT/NAME.log, record ok/failed and the seconds taken
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    record "$name" ok $((SECONDS - start)) "$*"; tail -n 3 "$OUT/$name.log"
  else
    record "$name" failed $((SECONDS - start)) "$* (see $name.log)"; tail -n 20 "$OUT/$name.log"
  fi
}

# ---------------------------------------------------------------------------------------- environment
"$PY" - "$OUT/environment.json" <<'EOF'
import json, platform, shutil, subprocess, sys
env = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), compute_capability=".".join(map(str, torch.cuda.get_device_capability())))
except Exception as exc:  # noqa: BLE001
    env.update(torch=f"not importable ({exc})", cuda_available=False)
if shutil.which("nvidia-smi"):
    query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
    env["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
else:
    env["nvidia_smi"] = "not found"
import importlib.util
if importlib.util.find_spec("tensorrt") is None:
    env["tensorrt"] = "not installed"
elif not env.get("cuda_available"):
    env["tensorrt"] = "installed (not imported: no CUDA device)"
else:
    try:
        import tensorrt
        env["tensorrt"] = tensorrt.__version__
    except Exception as exc:  # noqa: BLE001
        env["tensorrt"] = f"not importable ({str(exc).splitlines()[0]})"
try:
    import onnxruntime
    env.update(onnxruntime=onnxruntime.__version__, onnxruntime_providers=onnxruntime.get_available_providers())
except Exception as exc:  # noqa: BLE001
    env["onnxruntime"] = f"not importable ({exc})"
json.dump(env, open(sys.argv[1], "w"), indent=2)
for key, value in env.items():
    print(f"{key:>22}: {value}")
EOF
env_value() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$OUT/environment.json" "$1"; }
HAS_CUDA=$(env_value cuda_available)
TRT=$(env_value tensorrt)
HAS_TRT=False
[[ "$TRT" =~ ^[0-9] ]] && HAS_TRT=True
HAS_ORT_CUDA=False
[[ "$(env_value onnxruntime_providers)" == *CUDAExecutionProvider* ]] && HAS_ORT_CUDA=True

# ---------------------------------------------------------------------------------------- GPU tests
if [ "$HAS_CUDA" = True ]; then
  step pytest-gpu "$PY" -m pytest -q -rs -m "gpu or tensorrt" "$REPO/tests"
else
  skip pytest-gpu "no CUDA GPU (torch.cuda.is_available() is False)"
fi

# ---------------------------------------------------------------------------------------- PyTorch CUDA path
if [ "$HAS_CUDA" = True ]; then
  for model in $MODELS; do
    step "bench-torch-$model-fp32" assd bench "$model" --device cuda --batch "$BATCHES" --iters "$ITERS" \
      --json "$OUT/bench-torch-$model-fp32.json"
    step "bench-torch-$model-fp16" assd bench "$model" --device cuda --precision fp16 --batch "$BATCHES" \
      --iters "$ITERS" --json "$OUT/bench-torch-$model-fp16.json"
    step "bench-torch-$model-compile" assd bench "$model" --device cuda --compile --batch "$BATCHES" \
      --iters "$ITERS" --json "$OUT/bench-torch-$model-compile.json"
  done
  first_model=${MODELS%% *}
  step "train-amp-$first_model" assd train --model "$first_model" --data "$TRAIN_DATA" --amp fp16 --device cuda \
    --max-steps 20 --epochs 1 --workers 2 --out "$OUT/train-amp-$first_model" --force
  skip "bench-torch-channels-last-cuda-graph" "assd bench offers no channels_last / CUDA-graph option for PyTorch"
else
  skip bench-torch "no CUDA GPU: the PyTorch CUDA timings (fp32, fp16, torch.compile) and the AMP training step"
fi

# ---------------------------------------------------------------------------------------- ONNX + engines
if [ "$HAS_CUDA" = True ] && [ "$HAS_TRT" = True ]; then
  for model in $MODELS; do
    step "export-$model" assd export "$model" --onnx -o "$OUT/$model.onnx"
    artifacts=("$OUT/$model.onnx")
    for precision in fp32 fp16 int8; do
      extra=()
      [ "$precision" = int8 ] && extra=(--calib-data "$CALIB_DATA" --calib-images 64)
      step "build-$model-$precision" assd build-engine "$OUT/$model.onnx" "--$precision" --batch 1:8:32 \
        --timing-cache "$OUT/timing.cache" -o "$OUT/$model.$precision.engine" "${extra[@]}"
      [ -f "$OUT/$model.$precision.engine" ] && artifacts+=("$OUT/$model.$precision.engine")
    done
    if [ "$HAS_ORT_CUDA" != True ]; then
      artifacts=("${artifacts[@]:1}")
      skip "bench-ort-cuda-$model" "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    fi
    step "bench-engines-$model" assd bench "${artifacts[@]}" --device cuda --batch "$BATCHES" --iters "$ITERS" \
      --json "$OUT/bench-engines-$model.json"
  done
else
  skip engines "TensorRT: $TRT${HAS_CUDA:+, CUDA available: $HAS_CUDA} (export/build-engine/bench of fp32, fp16, int8 engines)"
fi

# ---------------------------------------------------------------------------------------- engine accuracy
if [ -n "$DATA" ] && [ "$CHECKPOINT_CALIB_DATA" = "$DATA" ]; then
  skip eval-engine "CHECKPOINT_CALIB_DATA is DATA ('$DATA'): calibrate INT8 on a training split, not on the evaluated one"
elif [ "$HAS_CUDA" = True ] && [ "$HAS_TRT" = True ] && [ -n "$CHECKPOINT" ] && [ -n "$DATA" ] \
    && [ -n "$CHECKPOINT_CALIB_DATA" ]; then
  step export-checkpoint assd export "$CHECKPOINT" --onnx -o "$OUT/checkpoint.onnx"
  for precision in fp32 fp16 int8; do
    extra=()
    [ "$precision" = int8 ] && extra=(--calib-data "$CHECKPOINT_CALIB_DATA")
    step "build-checkpoint-$precision" assd build-engine "$OUT/checkpoint.onnx" "--$precision" \
      -o "$OUT/checkpoint.$precision.engine" "${extra[@]}"
    step "eval-engine-$precision" assd eval-engine "$OUT/checkpoint.$precision.engine" --data "$DATA" \
      --reference "$CHECKPOINT" --device cuda --json "$OUT/eval-engine-$precision.json"
  done
else
  skip eval-engine "needs a CUDA GPU, TensorRT, CHECKPOINT=trained.pt, DATA=spec and CHECKPOINT_CALIB_DATA=training spec (have: CUDA $HAS_CUDA, TensorRT $TRT, CHECKPOINT '${CHECKPOINT}', DATA '${DATA}', CHECKPOINT_CALIB_DATA '${CHECKPOINT_CALIB_DATA}')"
fi

# ---------------------------------------------------------------------------------------- report
mapfile -t BENCH_FILES < <(ls "$OUT"/bench-*.json 2>/dev/null)
if [ "${#BENCH_FILES[@]}" -gt 0 ]; then
  assd bench --report "${BENCH_FILES[@]}" --markdown "$OUT/bench-table.md" > /dev/null 2>&1 || true
fi
"$PY" - "$OUT" <<'EOF'
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
env = json.loads((out / "environment.json").read_text())
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds, detail = line.split("\t", 3)
    steps.append({"step": name, "status": status, "seconds": int(seconds), "detail": detail})
evals = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("eval-engine-*.json"))}
table = (out / "bench-table.md").read_text() if (out / "bench-table.md").is_file() else ""
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "environment": env, "steps": steps, "eval_engine": evals,
          "bench_reports": sorted(p.name for p in out.glob("bench-*.json")),
          "passed": all(s["status"] != "failed" for s in steps)}
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
lines = ["# GPU acceptance report", "", f"Date (UTC): {report['date']}", "", "## Environment", "",
         "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]
lines += ["", "## Steps", "", "| step | status | seconds | detail |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['detail'].replace('|', '/')} |" for s in steps]
if evals:
    lines += ["", "## Engine accuracy (assd eval-engine)", "", "| engine | mAP | reference | Δ mAP (points) | passed |",
              "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['mAP_artifact']:.4f} | {r['mAP_reference']:.4f} | {r['delta_mAP_points']:+.2f} | "
              f"{r['passed']} |" for name, r in evals.items()]
if table:
    lines += ["", "## Benchmarks (assd bench, merged)", "", table]
(out / "report.md").write_text("\n".join(lines) + "\n")
skipped = [s for s in steps if s["status"] == "skipped"]
failed = [s for s in steps if s["status"] == "failed"]
print(f"report: {out / 'report.md'} and {out / 'report.json'}: {len(steps) - len(skipped) - len(failed)} steps ok, "
      f"{len(failed)} failed, {len(skipped)} skipped")
for s in skipped:
    print(f"  skipped {s['step']}: {s['detail']}")
sys.exit(1 if failed else 0)
EOF
