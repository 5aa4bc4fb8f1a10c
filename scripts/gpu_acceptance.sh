#!/usr/bin/env bash
# GPU acceptance of assd in one command: environment, GPU tests, engines, benchmarks, engine accuracy.
#
#   scripts/gpu_acceptance.sh [OUT_DIR]            (default OUT_DIR: runs/gpu-acceptance)
#   scripts/gpu_acceptance.sh --smoke [OUT_DIR]    (default OUT_DIR: runs/gpu-smoke; within 8 minutes)
#
# Writes OUT_DIR/report.md and OUT_DIR/report.json (environment, every step with its status and time,
# the merged benchmark table) plus one log per step, also when a step fails or the run is interrupted.
# Exit 0 when every step that could run passed (steps this machine cannot run are listed as skipped,
# with the reason), 1 otherwise.
#
# --smoke: the environment (what really loads: a CUDA op, a TensorRT builder, ONNX Runtime sessions),
# the CUDA tests (pytest -m "gpu or tensorrt"), then one assd-mini checkpoint (random weights on the
# synthetic label set, or CHECKPOINT evaluated on DATA when both are set) exported and built as fp32,
# fp16 and int8 engines, each `assd eval-engine`d against the checkpoint and all benchmarked at
# batch 1 and 8, with and without --cuda-graph. Every step runs under what is left of SMOKE_BUDGET
# seconds (default 450, leaving time for the report) and is skipped, with the reason, once it is spent. docs/deployment.md has the
# time estimate per step.
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
SMOKE=False
if [ "${1:-}" = "--smoke" ]; then SMOKE=True; shift; fi
SMOKE_BUDGET=${SMOKE_BUDGET:-450}
if [ "$SMOKE" = True ]; then OUT=${1:-runs/gpu-smoke}; else OUT=${1:-runs/gpu-acceptance}; fi
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
  local limit=()
  if [ "$SMOKE" = True ]; then  # the smoke run's budget bounds every step
    local left=$((SMOKE_BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then skip "$name" "the smoke budget of ${SMOKE_BUDGET}s is spent"; return; fi
    limit=(timeout "$left")
  fi
  echo "== $name: $*"
  local start=$SECONDS
  if "${limit[@]}" "$@" > "$OUT/$name.log" 2>&1; then
    record "$name" ok $((SECONDS - start)) "$*"; tail -n 3 "$OUT/$name.log"
  else
    record "$name" failed $((SECONDS - start)) "$* (see $name.log)"; tail -n 20 "$OUT/$name.log"
  fi
}

# ---------------------------------------------------------------------------------------- environment
"$PY" "$REPO/scripts/gpu_env.py" "$OUT/environment.json" 2> "$OUT/environment.log" \
  || echo '{"cuda_available": false, "tensorrt": "environment probe failed (see environment.log)"}' > "$OUT/environment.json"
env_value() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$OUT/environment.json" "$1"; }
HAS_CUDA=$(env_value cuda_available)
TRT="$(env_value tensorrt) (builder: $(env_value tensorrt_builder))"
HAS_TRT=$(env_value tensorrt_usable)
HAS_ORT_CUDA=$(env_value onnxruntime_cuda_usable)
# ---------------------------------------------------------------------------------------- report
finish() {  # the EXIT trap: merge the benchmarks, write report.md/json; status 1 when a step failed
  local status=$?
  trap - EXIT
  mapfile -t BENCH_FILES < <(ls "$OUT"/bench-*.json 2>/dev/null)
  if [ "${#BENCH_FILES[@]}" -gt 0 ]; then
    assd bench --report "${BENCH_FILES[@]}" --markdown "$OUT/bench-table.md" > "$OUT/bench-table.log" 2>&1 || true
  fi
  "$PY" - "$OUT" "$status" <<'EOF'
import datetime, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
env = json.loads((out / "environment.json").read_text())
steps = []
for line in ((out / "steps.tsv").read_text().splitlines() if (out / "steps.tsv").is_file() else []):
    name, status, seconds, detail = line.split("\t", 3)
    steps.append({"step": name, "status": status, "seconds": int(seconds), "detail": detail})
if sys.argv[2] != "0":  # interrupted (a signal, a timeout) or stopped by an error outside any step
    steps.append({"step": "run", "status": "failed", "seconds": 0,
                  "detail": f"the script stopped early (exit status {sys.argv[2]}): later steps did not run"})
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
  exit $?
}

trap finish EXIT  # the report is written whatever happens from here on

# ---------------------------------------------------------------------------------------- smoke run
if [ "$SMOKE" = True ]; then
  if [ "$HAS_CUDA" = True ]; then
    step pytest-gpu "$PY" -m pytest -q -rs -m "gpu or tensorrt" "$REPO/tests"
  else
    skip pytest-gpu "no usable CUDA GPU (torch: $(env_value torch); CUDA: $(env_value cuda))"
  fi
  if [ "$HAS_CUDA" = True ] && [ "$HAS_TRT" = True ]; then
    if [ -n "$CHECKPOINT" ] && [ -n "$DATA" ]; then  # a trained model: a meaningful mAP comparison
      cp "$CHECKPOINT" "$OUT/mini.pt"
      SMOKE_DATA=$DATA SMOKE_CALIB=${CHECKPOINT_CALIB_DATA:-synthetic:16}
    else  # random assd-mini weights on the synthetic label set: the engine path end to end, mAP ~0 on both sides
      step mini-checkpoint "$PY" -c "import sys, torch; from assd.models import build_model, get_config; \
from assd.models.checkpoint import save_checkpoint; from assd.data.synthetic import SYNTHETIC_CLASSES; \
torch.manual_seed(0); \
save_checkpoint(build_model(get_config('assd-mini', class_names=SYNTHETIC_CLASSES)).eval(), sys.argv[1])" \
        "$OUT/mini.pt"
      SMOKE_DATA=synthetic:16 SMOKE_CALIB=synthetic:16
    fi
    step export-mini assd export "$OUT/mini.pt" --onnx -o "$OUT/mini.onnx"
    engines=()
    for precision in fp32 fp16 int8; do
      extra=()
      [ "$precision" = int8 ] && extra=(--calib-data "$SMOKE_CALIB" --calib-images 16)
      step "build-mini-$precision" assd build-engine "$OUT/mini.onnx" "--$precision" --batch 1:8:8 \
        --timing-cache "$OUT/timing.cache" -o "$OUT/mini.$precision.engine" "${extra[@]}"
      [ -f "$OUT/mini.$precision.engine" ] || continue
      engines+=("$OUT/mini.$precision.engine")
      step "eval-engine-mini-$precision" assd eval-engine "$OUT/mini.$precision.engine" --data "$SMOKE_DATA" \
        --limit 64 --reference "$OUT/mini.pt" --device cuda --json "$OUT/eval-engine-mini-$precision.json"
    done
    if [ "${#engines[@]}" -gt 0 ]; then
      step bench-engines-mini assd bench "${engines[@]}" --device cuda --batch 1,8 --iters 20 \
        --json "$OUT/bench-engines-mini.json"
      step bench-engines-mini-cuda-graph assd bench "${engines[@]}" --device cuda --batch 1,8 --iters 20 \
        --cuda-graph --json "$OUT/bench-engines-mini-cuda-graph.json"
    else
      skip bench-engines-mini "no engine was built (see the build-mini-* logs)"
    fi
  else
    skip engines-mini "needs a usable CUDA GPU and TensorRT builder (CUDA: $HAS_CUDA; TensorRT: $TRT): export, \
build-engine fp32/fp16/int8, eval-engine and bench at batch 1 and 8"
  fi
  exit 0  # finish (the EXIT trap) writes the report and sets the status
fi

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
      skip "bench-ort-cuda-$model" "ONNX Runtime's CUDA provider does not load (a session asked for it runs on \
$(env_value onnxruntime_cuda_session)): install the onnxruntime-gpu of torch's CUDA major"
    fi
    step "bench-engines-$model" assd bench "${artifacts[@]}" --device cuda --batch "$BATCHES" --iters "$ITERS" \
      --json "$OUT/bench-engines-$model.json"
    engines=("$OUT/$model".*.engine)
    [ -f "${engines[0]}" ] && step "bench-engines-$model-cuda-graph" assd bench "${engines[@]}" --device cuda \
      --batch "$BATCHES" --iters "$ITERS" --cuda-graph --json "$OUT/bench-engines-$model-cuda-graph.json"
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

exit 0  # finish (the EXIT trap) writes the report and sets the status
