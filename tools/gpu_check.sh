#!/usr/bin/env bash
# The GPU checks in one go, for a session lent a CUDA GPU: what this machine has (GPU, driver,
# TensorRT-RTX / TensorRT, cuda-python, ONNX Runtime, torch), then tests/gpu/ with the reason of
# every skip, then tools/bench_trt_decode.py: decode tokens/s with the KV cache kept on the GPU
# vs the old host round trip, and TensorRT-RTX's runtime cache (docs/benchmarks/trt_decode.md
# and .json; copied to $OUT too). Extra arguments go to pytest (e.g. tests/plugins, -k runtime,
# -x). GPU_CHECK_BENCH=0 skips the benchmark.
#
#   tools/gpu_check.sh                # tests/gpu/
#   tools/gpu_check.sh tests/plugins  # and the plugin kernel tests
#
# Uses $PYTHON, else .venv/bin/python, else python3. Where $OUT is set (the device tool's
# output folder), the log and a JUnit XML are written there too. Exit code: pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LOG=${OUT:+$OUT/gpu_check.log}
JUNIT=${OUT:+--junitxml=$OUT/gpu_check.xml}

{
  echo "== $(date -u +%FT%TZ) $(uname -n)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv \
    2>/dev/null || echo "nvidia-smi: not available"
  "$PYTHON" - <<'PY'
import importlib

from armor_export.runtime.trt_session import cuda_gpus

gpus, why = cuda_gpus()
print("CUDA GPUs:", ", ".join(gpus) if gpus else why)
for name in ("tensorrt_rtx", "tensorrt", "cuda.bindings", "onnxruntime", "polygraphy", "torch"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'installed')}")
    except ImportError as exc:
        print(f"{name}: missing ({exc})")
PY
  echo "== pytest"
} 2>&1 | tee ${LOG:-/dev/null}

# -rs: every skipped test with the reason naming what is missing
"$PYTHON" -m pytest -q -rs ${JUNIT:-} tests/gpu "$@" 2>&1 | tee -a ${LOG:-/dev/null}
status=${PIPESTATUS[0]}

if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  echo "== tools/bench_trt_decode.py" | tee -a ${LOG:-/dev/null}
  "$PYTHON" tools/bench_trt_decode.py --out docs/benchmarks 2>&1 | tee -a ${LOG:-/dev/null}
  [ -n "${OUT:-}" ] && cp docs/benchmarks/trt_decode.md docs/benchmarks/trt_decode.json "$OUT"/
fi
exit "$status"
