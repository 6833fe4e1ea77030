#!/usr/bin/env bash
# The CUDA checks in one run (`make gpu-check`): the gpu-marked tests (bf16 autocast, FSDP on
# CUDA, torch.compile, checkpointing memory) and the full-size Wan2.2-5B + TSCM sampler bench
# (random weights, bf16, 4 steps at 544x960: fps and peak memory), in a few minutes.
#
# It uses the machine's own CUDA build of torch, never installs one. On a machine without
# network, first run `scripts/gpu_check.sh wheels` where there is one: it puts the other
# packages the tests import into .whl/, which is then installed from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-gpu-check}
WHEELS=(diffusers av jsonschema jsonschema-specifications referencing rpds-py safetensors)

if [[ "${1:-}" == "wheels" ]]; then
  "$PY" -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${WHEELS[@]}"
  echo "wheels in .whl/: carry them to the GPU machine with the working tree"
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "error: no CUDA device here (torch.cuda.is_available() is False); run this on a GPU machine" >&2
  exit 1
fi
mkdir -p "$OUT"
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/yume-site .whl/*.whl
  export PYTHONPATH="/tmp/yume-site:$PWD"
else
  "$PY" -m pip install -q -e .  # torch already installed satisfies the package's range
fi

status=0
"$PY" -m pytest -m gpu tests/test_gpu.py -rs -q -p no:cacheprovider \
  --junitxml "$OUT/test_gpu.xml" || status=1
"$PY" -m tests.bench.gpu_sampler | tee "$OUT/gpu_sampler.json" || status=1
exit $status
