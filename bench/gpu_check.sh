#!/usr/bin/env bash
# The GPU figures of docs/results.md in one short run (about 5 minutes on one H100), for a machine with CUDA:
#   1. the supernet bench at batch 64 and 192 px (subnet inside the supernet against its static twin);
#   2. a sandwich training step in fp32, bf16 and fp16 autocast (bench/amp_speed.py);
#   3. a latency table built with --device cuda (torch runtime, tiny space, batch 64) and validated on 50 archs.
# Every output lands in $OUT (default runs/gpu_check): one .txt per step, the table and its validation plot.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh                 # PY=... picks the interpreter (default python3)
#
# A machine without this project's dependencies: put their wheels in .whl/ first (they are installed from there,
# offline, with --no-deps), e.g. for CPython 3.12 on x86-64:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
#       xgboost fvcore iopath yacs termcolor
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index .whl/*.whl
fi
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("torch", "timm", "fvcore", "xgboost", "scipy", "yaml", "tqdm", "matplotlib")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python packages: $missing (see the wheel note at the top of $0)" >&2
    exit 2
fi
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: CUDA is not available here")'
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
} | tee "$OUT/device.txt"
"$PY" bench/supernet_speed.py --device cuda --spaces attentivenas --batch 64 --resolution 192 --rounds 3 \
    --repeats 3 --reference 2>&1 | tee "$OUT/supernet_speed.txt"
"$PY" bench/amp_speed.py --device cuda --space attentivenas --batch 64 2>&1 | tee "$OUT/amp_speed.txt"
"$PY" -m predictors.latency build --space tiny --runtime torch --device cuda --batch 64 --calibration-archs 100 \
    --out "$OUT/latency_tiny_cuda.json" 2>&1 | tee "$OUT/latency_build.txt"
"$PY" -m predictors.latency validate --table "$OUT/latency_tiny_cuda.json" --num-archs 50 \
    --out "$OUT/latency_validate" 2>&1 | tee "$OUT/latency_validate.txt"
