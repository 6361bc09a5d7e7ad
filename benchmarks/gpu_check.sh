#!/usr/bin/env bash
# GPU check: kpl eval on generated images on the CPU and on CUDA (fp16 encoding; then fp16 proxy
# loop too), then bench_kpl with a CUDA row; prints one table. On a machine without CUDA it prints
# one line and exits 0.
#
#   bash benchmarks/gpu_check.sh                 # tiny random CLIP, 3 x 200 images, bench_kpl --quick
#   GPU_CHECK_MODEL=local-dir:/path/to/clip GPU_CHECK_IMAGES=1000 GPU_CHECK_FULL=1 bash benchmarks/gpu_check.sh
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BENCH=0 bash benchmarks/gpu_check.sh   # dry run of the same steps on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" ANONYMIZED_TELEMETRY=False

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" "$DEVICE" <<'EOF'
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
from PIL import Image

work, target = Path(sys.argv[1]), sys.argv[2]
per_class = int(os.environ.get("GPU_CHECK_IMAGES", "200"))
colors = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
rng = np.random.default_rng(0)
for name, color in colors.items():
    (work / "images" / name).mkdir(parents=True)
    for i in range(per_class):
        pixels = np.clip(np.array(color) + rng.normal(0, 50, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(work / "images" / name / f"{i:04d}.jpg", quality=90)
(work / "kb.json").write_text(json.dumps({
    "red": ["a red patch", "warm crimson tones", "scarlet colour"],
    "green": ["a green patch", "leafy tones", "grass colour"],
    "blue": ["a blue patch", "cool sky tones", "ocean colour"]}))
model = os.environ.get("GPU_CHECK_MODEL")
if not model:
    sys.path.insert(0, "tests")
    from helpers import build_tiny_clip_dir

    model = f"local-dir:{build_tiny_clip_dir(work / 'tiny_clip')}"
env = {**os.environ, "KBUILD_STORE": str(work / "store"), "KPL_CLIP_MODEL": model}


def cli(prog, *args):
    module = {"kbuild": "kbuild.cli", "kpl": "kpl.cli"}[prog]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", f"from {module} import main; main()", *args], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"gpu_check: {prog} {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout, time.perf_counter() - start


cli("kbuild", "load", str(work / "kb.json"))
rows = []
for device, precision in (("cpu", "fp32"), (target, "auto"), (target, "fp16")):
    out, seconds = cli("kpl", "eval", "--kb", "latest", "--data", str(work / "images"), "--device", device,
                       "--precision", precision, "--no-cache", "--json")
    payload = json.loads(out)
    results = payload["results"]
    rows.append((device, precision, payload["features"].get("precision", "?"), payload["params"]["precision"],
                 seconds, results["kpl.image_ot"]["accuracy"], results["kpl.image_ot"]["seconds"] * 3))
print(f"model {model}; {3 * per_class} images")
print(f"{'device':<7}{'--precision':>12}{'encoding':>16}{'proxy loop':>12}{'eval s':>9}{'image_ot acc':>14}{'kpl s':>8}")
for device, flag, encoding, loop, seconds, accuracy, kpl_seconds in rows:
    print(f"{device:<7}{flag:>12}{encoding:>16}{loop:>12}{seconds:>9.1f}{accuracy * 100:>13.1f}%{kpl_seconds:>8.2f}")
EOF
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
    echo
    "$PY" benchmarks/bench_kpl.py $([ -n "${GPU_CHECK_FULL:-}" ] || echo --quick) --device "$DEVICE" --precision fp16
fi
