#!/usr/bin/env bash
# Create (or check) mmsape's project-local virtual environment in .venv.
#
# Idempotent: a second run on a ready machine only re-verifies the stack (seconds).
# Order matters and every step below exists because of a known trap:
#   1. pip is upgraded first (pip 23.x crashes on the '===' pin used for torch).
#   2. torch===2.13.0 + torchvision 0.28.0 from PyPI: a local '+cpu' torch wheel would
#      otherwise win and torchvision's compiled ops fail to load against it.
#   3. mmcv 2.1.0 is source-only: built with ops, without build isolation (it must see
#      the installed torch) and with setuptools<70 (its setup.py imports pkg_resources).
#      pip caches the built wheel, so only the first build on a machine is slow.
#      Where torch sees a CUDA GPU, mmcv is built with CUDA (mmdet's RoIAlign and NMS on
#      CUDA tensors need its CUDA ops): FORCE_CUDA=1 for the GPUs' compute capabilities,
#      with nvcc; without nvcc the script stops and says what to install.
#      MMSAPE_MMCV_CUDA=0 builds it without CUDA ops on purpose.
#   4. the rest of the stack, with setuptools >=77,<81 restored for run time.
#   5. mmsape itself in editable mode, then an import check of the whole stack.
#
# Environment: MMSAPE_VENV (default: <repo>/.venv), PYTHON (default: python3),
# MMSAPE_MMCV_CUDA (0: mmcv without CUDA ops on a GPU machine), CUDA_HOME (nvcc's toolkit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMSAPE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
REQ="$ROOT/requirements"
STAMP="$VENV/.mmsape-setup-stamp"

say() { printf '[setup_env] %s\n' "$*"; }
fail() { printf '[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
step() {
  # step "description" command...: run a command, and name the step if it fails.
  local what="$1"; shift
  say "$what"
  "$@" || fail "step failed: $what (command: $*). Fix the cause above and re-run; finished steps are reused."
}

# Everything the environment is made from: a change to any of it re-runs the install.
fingerprint() {
  cat "$REQ"/*.txt "$ROOT/tools/setup_env.sh" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}

verify() { "$VENV/bin/python" "$ROOT/tools/verify_env.py"; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" ]]; then
  say "environment at $VENV is up to date; verifying imports"
  if verify; then
    say "ready: $VENV"
    exit 0
  fi
  say "verification failed; reinstalling"
fi

command -v "$PYTHON" >/dev/null || fail "'$PYTHON' not found; install Python 3.9-3.12 or set PYTHON=/path/to/python3"
if [[ ! -x "$VENV/bin/python" ]]; then
  step "creating virtual environment $VENV" "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

step "upgrading pip" "${PIP[@]}" install -q -U pip
PINS=(-c "$REQ/torch.txt" -c "$REQ/mminstall.txt")

step "installing torch 2.13.0 + torchvision 0.28.0 from PyPI (about 3 minutes, 4.8 GB, the first time)" \
  "${PIP[@]}" install -q -r "$REQ/torch.txt"

# The compute capabilities of the GPUs torch sees ('8.0;9.0'), empty without one.
CUDA_ARCHS="$("$VENV/bin/python" -c "import torch; print(';'.join(sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})) if torch.cuda.is_available() else '')")"
TORCH_CUDA="$("$VENV/bin/python" -c "import torch; print(torch.version.cuda or '')")"
if [[ -z "$CUDA_ARCHS" ]] && command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  fail "nvidia-smi lists a GPU, but torch cannot use it (torch.cuda.is_available() is False; torch is built for CUDA ${TORCH_CUDA:-none}): update the NVIDIA driver for CUDA ${TORCH_CUDA:-?}, or set MMSAPE_MMCV_CUDA=0 to set up for the CPU only"
fi
MMCV_CUDA=0
if [[ -n "$CUDA_ARCHS" && "${MMSAPE_MMCV_CUDA:-1}" != 0 ]]; then
  NVCC="$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")"
  [[ -x "$NVCC" ]] || fail "this machine has a CUDA GPU (compute capability $CUDA_ARCHS) but no nvcc (not on PATH, not in \$CUDA_HOME/bin): mmcv's CUDA ops, which mmdet's RoIAlign and NMS need on the GPU, are compiled with it. Install the CUDA toolkit $TORCH_CUDA (the version torch is built with; e.g. NVIDIA's cuda-toolkit-${TORCH_CUDA/./-} package), put its bin/ on PATH or set CUDA_HOME, and re-run. Or set MMSAPE_MMCV_CUDA=0 to build mmcv without CUDA ops (classification and segmentation still train on the GPU; detection does not)."
  NVCC_CUDA="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  [[ "${NVCC_CUDA%%.*}" == "${TORCH_CUDA%%.*}" ]] || fail "nvcc ($NVCC) is CUDA $NVCC_CUDA, but torch is built with CUDA $TORCH_CUDA: PyTorch's extension builder refuses another major version. Install the CUDA toolkit $TORCH_CUDA and put it first on PATH (or set CUDA_HOME), then re-run."
  CUDA_HOME="$(dirname "$(dirname "$NVCC")")"
  export CUDA_HOME
  MMCV_CUDA=1
fi
MMCV_CHECKS=(mmcv.ops)
[[ "$MMCV_CUDA" == 1 ]] && MMCV_CHECKS+=("mmcv.ops (CUDA)")

if "$VENV/bin/python" "$ROOT/tools/verify_env.py" --only "${MMCV_CHECKS[@]}" >/dev/null 2>&1 \
    && "$VENV/bin/python" -c "import mmcv; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  say "mmcv 2.1.0 with ops already installed (CUDA ops: $([[ $MMCV_CUDA == 1 ]] && echo yes || echo no))"
else
  MMCV_PIP=()
  if [[ "$MMCV_CUDA" == 1 ]]; then
    # pip's wheel cache may hold a CPU-only build of the same version: build afresh.
    MMCV_PIP=(--no-cache-dir)
    say "building mmcv 2.1.0 from source with CUDA ops for compute capability $CUDA_ARCHS (nvcc $NVCC_CUDA): tens of minutes"
    "$VENV/bin/python" -m pip uninstall -y -q mmcv 2>/dev/null || true
  elif compgen -G "${PIP_CACHE_DIR:-$HOME/.cache/pip}/wheels/*/*/*/*/mmcv-2.1.0-*.whl" >/dev/null; then
    say "installing mmcv 2.1.0 from pip's wheel cache"
  else
    say "building mmcv 2.1.0 from source with ops: this takes about 35 minutes on 2 cores, once per machine (pip caches the wheel)"
  fi
  step "installing mmcv build requirements (setuptools<70 for the build only)" \
    "${PIP[@]}" install -q -r "$REQ/build.txt" "${PINS[@]}"
  step "installing mmcv 2.1.0 (MMCV_WITH_OPS=1, FORCE_CUDA=$MMCV_CUDA, --no-build-isolation)" \
    env MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA="$MMCV_CUDA" \
    TORCH_CUDA_ARCH_LIST="${CUDA_ARCHS:-}" \
    "${PIP[@]}" install --no-build-isolation ${MMCV_PIP[@]+"${MMCV_PIP[@]}"} -r "$REQ/mminstall.txt" "${PINS[@]}" mmengine==0.10.7
fi

step "installing the OpenMMLab stack (mmengine, mmdet, mmsegmentation, mmpretrain, timm) and test tools" \
  "${PIP[@]}" install -q -r "$REQ/runtime.txt" -r "$REQ/tests.txt" "${PINS[@]}"
step "installing mmsape (editable)" \
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
step "verifying the stack imports" verify

fingerprint > "$STAMP"
say "ready: $VENV  (activate with: source $VENV/bin/activate)"
