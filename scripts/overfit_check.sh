#!/usr/bin/env bash
# Overfit check: assd-mini, trained from scratch on 16 real VOC photos without augmentation for a fixed
# number of steps, must detect them again (train-set VOC07 mAP >= 0.9), and the exported ONNX must score
# the same (assd eval-engine: |delta mAP| within its fp32 tolerance). It proves that matching -> loss ->
# decode -> NMS -> evaluation learns real detection end to end. Numbers: docs/training.md.
#
# usage: scripts/overfit_check.sh [WORK_DIR]      (default: a new temp folder, removed on success)
# env:   PYTHON (default: python), VOC_MINI (default: ../shared/data/voc-mini beside the checkout)
# exit:  0 pass, 1 fail, 77 skipped (no voc-mini data)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
VOC_MINI="${VOC_MINI:-$REPO/../shared/data/voc-mini}"
VOC="$VOC_MINI/VOCdevkit/VOC2012"
IMAGES=16
EPOCHS=40     # x 2 steps of 8 images = 80 optimizer steps (quick recipe: lr x0.1 after epoch 27)
MIN_MAP=0.9

if [ ! -f "$VOC/ImageSets/Main/trainval.txt" ]; then
    echo "overfit check SKIPPED: no voc-mini data at $VOC_MINI (it lives beside the project checkout)" >&2
    exit 77
fi
if [ $# -ge 1 ]; then
    WORK="$1"
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/assd-overfit.XXXXXX")"
fi
# Idle OpenMP threads sleep instead of spinning (on a shared CPU spinning made training several times slower).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
assd() { "$PYTHON" -m assd.cli "$@"; }

# The first 16 photos of voc-mini's trainval list, as a VOC2012 folder of links (the data stays read-only).
DATA="$WORK/VOC2012"
rm -rf "$DATA"
mkdir -p "$DATA/Annotations" "$DATA/JPEGImages" "$DATA/ImageSets/Main"
head -n "$IMAGES" "$VOC/ImageSets/Main/trainval.txt" > "$DATA/ImageSets/Main/trainval.txt"
while read -r id _; do
    ln -s "$(cd "$VOC" && pwd)/Annotations/$id.xml" "$DATA/Annotations/$id.xml"
    ln -s "$(cd "$VOC" && pwd)/JPEGImages/$id.jpg" "$DATA/JPEGImages/$id.jpg"
done < "$DATA/ImageSets/Main/trainval.txt"

started=$(date +%s)
assd train --model assd-mini --data "voc:$DATA" --out "$WORK/run" --force --augment none --epochs "$EPOCHS" \
    --batch-size 8 --seed 0 --workers 0 --device cpu --no-progress --no-tensorboard
trained=$(date +%s)
assd export "$WORK/run/last.pt" --onnx -o "$WORK/model.onnx" --parity-images "$DATA/JPEGImages"
assd eval-engine "$WORK/model.onnx" --data "voc:$DATA" --reference "$WORK/run/last.pt" --metric voc07 \
    --device cpu --json "$WORK/parity.json"
finished=$(date +%s)

"$PYTHON" - "$WORK/parity.json" "$MIN_MAP" "$((trained - started))" "$((finished - started))" <<'EOF'
import json
import sys

parity, min_map = json.load(open(sys.argv[1])), float(sys.argv[2])
torch_map, onnx_map = parity["mAP_reference"], parity["mAP_artifact"]
print(f"overfit check: train-set voc07 mAP {torch_map:.4f} (torch), {onnx_map:.4f} (ONNX); "
      f"training {int(sys.argv[3]) / 60:.1f} min, all {int(sys.argv[4]) / 60:.1f} min")
if min(torch_map, onnx_map) < min_map:
    sys.exit(f"overfit check FAILED: mAP below {min_map}")
print("overfit check PASSED")
EOF
if [ $# -eq 0 ]; then
    rm -rf "$WORK"
fi
