#!/usr/bin/env bash
# The whole workflow on the example knowledge base, offline-capable. Run through `make demo`.
#   DATA=/path/to/imagefolder  use your own images (class folders named like the knowledge base,
#                              or pass CLASS_MAP=map.json); default: a small generated image set.
#   KPL_CLIP_MODEL / KPL_CLIP_PRETRAINED  choose the CLIP model (default ViT-B-32 / openai).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo_out}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

rm -rf "$OUT/store" "$OUT/eval" "$OUT/compare"   # a fresh store each run, so the names below are stable
mkdir -p "$OUT"
export KBUILD_STORE="$OUT/store"

step "Choosing the CLIP model"
eval "$(python examples/demo_model.py "$OUT")"
echo "model: $KPL_CLIP_MODEL ${KPL_CLIP_PRETRAINED}" >&2

if [ -z "${DATA:-}" ]; then
  DATA="$OUT/images"
  step "Writing a small synthetic image set to $DATA (pass DATA=/path/to/imagefolder for real images)"
  python examples/make_demo_images.py "$DATA" --per-class 12 >/dev/null
fi
MAP_ARGS=()
if [ -n "${CLASS_MAP:-}" ]; then MAP_ARGS=(--class-map "$CLASS_MAP"); fi

step "kbuild load examples/medical_kb.json --classes examples/classes.txt"
kbuild load examples/medical_kb.json --classes examples/classes.txt

step "kbuild prune v1   (sanitise, duplicates, cross-class collisions, low margin)"
kbuild prune v1

step "kbuild diff v1 v2"
kbuild diff v1 v2

step "kbuild list"
kbuild list

step "kpl eval --kb v2 --data $DATA --out $OUT/eval"
kpl eval --kb v2 --data "$DATA" "${MAP_ARGS[@]}" --out "$OUT/eval"

step "kpl compare --kb v1 --kb v2 --data $DATA --out $OUT/compare"
kpl compare --kb v1 --kb v2 --data "$DATA" "${MAP_ARGS[@]}" --out "$OUT/compare"

step "Done"
if [ "${DEMO_MEANINGFUL:-0}" != 1 ]; then
  echo "Note: no pretrained CLIP was available, so the accuracies above come from a tiny random model and mean nothing." >&2
fi
cat >&2 <<MSG
Snapshots:  $KBUILD_STORE   (kbuild --store $KBUILD_STORE list)
Reports:    $OUT/eval/metrics.json, $OUT/eval/confusion_matrix.png, $OUT/eval/predictions.csv, $OUT/eval/report.html
Comparison: $OUT/compare/
MSG
