#!/usr/bin/env bash
# The CUDA path of mmsape, checked and measured on one GPU in one go.
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh                   # on the GPU machine
#   bash benchmarks/gpu_check.sh --fetch-wheels    # beforehand, where PyPI is reachable
#
# Steps (GPU_CHECK_STEPS picks some; each has a time limit, and a step that no
# longer fits in GPU_CHECK_BUDGET seconds, default 480, is skipped and marked so):
#   env        GPU, torch, Triton; tools/verify_env.py (mmcv's RoIAlign on a CUDA tensor)
#   tests      tests/test_cuda without the tool runs (every encoding under bfloat16
#              autocast vs float32, SaPE2's Triton path vs dense at 1024 / 4096 tokens,
#              a compiled backbone) and the Triton kernels' CUDA tests
#   attention  benchmarks/bench_sape2_triton.py at 1024 / 4096 / 16384 tokens, bfloat16,
#              head dim 64: Triton vs SDPA (flash) vs the PyTorch block kernel (the CUDA
#              path before the Triton kernels) vs dense; peak memory
#   backbone   benchmarks/bench_backbone.py: ViT-B/16 at 1024x1024, global and ViTDet
#              windows, SaPE2 vs APE, bfloat16 autocast, eager and torch.compile
#   upernet    benchmarks/bench_train_step.py: 20 AMP training iterations at 512x512,
#              the SaPE2 UPerNet config vs the APE one
#   maskrcnn   the same for Mask R-CNN at 1024x1024, where mmcv's CUDA ops run
#   tools      tests/test_cuda's tool runs: tools/train.py --amp, tools/dist_train.sh
#              (NCCL), the benchmarks' --device cuda
#   targets    the issue's targets as ratios measured in this run (for a measuring step
#              not in GPU_CHECK_STEPS, from its last run on this machine: two runs on a
#              machine that keeps work_dirs/ can split the work)
# Everything goes to one file, $OUT/gpu_check.md (OUT defaults to work_dirs/gpu_check),
# the full output to $OUT/gpu_check.log.
#
# Environment. The Python of .venv when there is one (tools/setup_env.sh), else
# PYTHON or python3 with torch, Triton and timm installed. What the OpenMMLab stack
# lacks is installed into work_dirs/gpu_check/site from the wheels in .whl/
# (GPU_CHECK_WHEELS), which --fetch-wheels downloads (about 15 MB, for CPython 3.12
# on x86-64 Linux; GPU_CHECK_PYTHON_VERSION changes it); mmcv 2.1.0 is built from its
# source there: with CPU ops first (about 2 minutes on 16 cores; mmdet and mmseg
# import them), then, where nvcc is found, with CUDA ops in the background at low
# priority, for the maskrcnn step. A machine that keeps work_dirs/ between runs
# does this once.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
WORK="$ROOT/work_dirs/gpu_check"
OUT_DIR="${OUT:-$WORK}"
REPORT="$OUT_DIR/gpu_check.md"
LOG="$OUT_DIR/gpu_check.log"
BUDGET="${GPU_CHECK_BUDGET:-480}"
STEPS="${GPU_CHECK_STEPS:-env tests attention backbone upernet maskrcnn tools targets}"
SITE="$WORK/site"                  # the OpenMMLab stack, mmcv with CPU ops
CUDA_MMCV_SITE="$WORK/site-mmcv-cuda"  # mmcv with CUDA ops, once built
BUILD_SITE="$WORK/build-site"      # setuptools<70: mmcv's setup.py imports pkg_resources
UPERNET=configs/upernet/upernet_vit-s16-ape_mln_8xb2-160k_ade20k-512x512.py
UPERNET_SAPE2=configs/upernet/upernet_vit-s16-sape2_mln_8xb2-160k_ade20k-512x512.py
MASKRCNN=configs/mask_rcnn/mask-rcnn_vit-s16-ape_simplefpn_lsj-100e_coco.py
MASKRCNN_SAPE2=configs/mask_rcnn/mask-rcnn_vit-s16-sape2_simplefpn_lsj-100e_coco.py
# Wheels a bare GPU machine with torch, torchvision, Triton and the scientific
# stack lacks, at the versions of tools/setup_env.sh's environment.
WHEEL_PINS=(mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0
  timm==1.0.31 addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0
  terminaltables==3.1.10 pycocotools==2.0.11 shapely==2.2.0 prettytable==3.18.0
  wcwidth==0.9.4 ftfy==6.3.1 mat4py==0.6.0 model-index==0.1.11 ordered-set==4.1.0
  importlib-metadata==10.2.0 lazy-importer==0.1.0 setuptools==69.5.1)

say() { printf '[gpu_check] %s\n' "$*" >&2; }
die() { printf '[gpu_check] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" == --fetch-wheels ]]; then
  mkdir -p "$WHEELS"
  PIP=("${PYTHON:-python3}" -m pip download -q --no-deps -d "$WHEELS")
  "${PIP[@]}" --only-binary=:all: --implementation cp \
    --python-version "${GPU_CHECK_PYTHON_VERSION:-3.12}" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${WHEEL_PINS[@]}" \
    || die "could not download the wheels"
  # mmcv 2.1.0 is source only; --no-build-isolation keeps pip from building it to
  # read its metadata (that needs torch).
  "${PIP[@]}" --no-binary=:all: --no-build-isolation mmcv==2.1.0 \
    || die "could not download mmcv's source"
  say "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry that folder to the GPU machine"
  exit 0
fi

mkdir -p "$OUT_DIR" "$WORK"
: >"$LOG"
# Results of an earlier run of a step run again must not reach this run's targets
# (those of steps not run now stay: a second run can finish what the first left).
for result in attention backbone upernet maskrcnn; do
  [[ " $STEPS " == *" $result "* ]] && rm -f "$WORK/$result.json"
done
START=$(date +%s)

# ------------------------------------------------------------------ set-up
if [[ -n "${PYTHON:-}" ]]; then
  :
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PYTHON="$ROOT/.venv/bin/python"
else
  PYTHON=python3
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHON
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || die "$PYTHON has no torch that sees a CUDA GPU"
NPROC=$(nproc)
CUDA_ARCHS=$("$PYTHON" -c "import torch; print(';'.join(sorted({'%d.%d' % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))")

imports() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
build_mmcv() {  # build_mmcv TARGET FORCE_CUDA JOBS: mmcv 2.1.0 with ops from the carried source
  local source
  source=$(ls "$WHEELS"/mmcv-2.1.0.tar.gz 2>/dev/null) || { echo "no $WHEELS/mmcv-2.1.0.tar.gz"; return 1; }
  env PYTHONPATH="$BUILD_SITE:$PYTHONPATH" MMCV_WITH_OPS=1 FORCE_CUDA="$2" MAX_JOBS="$3" \
    TORCH_CUDA_ARCH_LIST="$CUDA_ARCHS" \
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --no-compile --target "$1" "$source"
}

SETUP_NOTES=()
if ! imports 'mmengine, mmdet, mmseg, mmpretrain, timm, pycocotools, ftfy'; then
  compgen -G "$WHEELS/*.whl" >/dev/null \
    || die "the OpenMMLab stack is not installed and $WHEELS holds no wheels: run 'bash benchmarks/gpu_check.sh --fetch-wheels' where PyPI is reachable and carry .whl/, or tools/setup_env.sh"
  say "installing the carried wheels into $SITE"
  RUNTIME_WHEELS=()
  for wheel in "$WHEELS"/*.whl; do
    [[ "$wheel" == */setuptools-* ]] || RUNTIME_WHEELS+=("$wheel")
  done
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
    "${RUNTIME_WHEELS[@]}" >>"$LOG" 2>&1 || die "installing the wheels failed (see $LOG)"
  SETUP_NOTES+=("installed the wheels of $WHEELS")
fi
build_site() {  # setuptools<70 for mmcv's setup.py, once
  [[ -d "$BUILD_SITE/setuptools" ]] || "$PYTHON" -m pip install -q --no-index --no-deps \
    --target "$BUILD_SITE" "$WHEELS"/setuptools-*.whl >>"$LOG" 2>&1 \
    || die "no setuptools<70 wheel in $WHEELS"
}
if ! imports mmcv.ops; then
  build_site
  say "building mmcv 2.1.0 with CPU ops ($NPROC jobs)"
  BUILD_START=$(date +%s)
  build_mmcv "$SITE" 0 "$NPROC" >>"$LOG" 2>&1 || die "building mmcv failed (see $LOG)"
  SETUP_NOTES+=("built mmcv 2.1.0 with CPU ops in $(( $(date +%s) - BUILD_START )) s")
fi
# mmcv with CUDA ops for the maskrcnn step: installed, built by an earlier run on
# this machine, or built now in the background, in its own process group (ended
# on exit), at low priority while the other steps run.
MMCV_CUDA_BUILD=''
if [[ "$(cat "$WORK/mmcv_cuda_build.rc" 2>/dev/null)" == 0 ]]; then
  SETUP_NOTES+=("mmcv with CUDA ops: built by an earlier run ($CUDA_MMCV_SITE)")
elif [[ " $STEPS " == *" maskrcnn "* ]] && ! "$PYTHON" tools/verify_env.py --only 'mmcv.ops (CUDA)' >/dev/null 2>&1; then
  if command -v nvcc >/dev/null || [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
    build_site
    JOBS=$(( NPROC > 4 ? NPROC - 4 : 1 ))
    say "building mmcv 2.1.0 with CUDA ops in the background (nice 19, $JOBS jobs)"
    rm -f "$WORK/mmcv_cuda_build.rc"
    setsid nice -n 19 bash -c "$(declare -f build_mmcv); WHEELS='$WHEELS' BUILD_SITE='$BUILD_SITE' CUDA_ARCHS='$CUDA_ARCHS' PYTHON='$PYTHON' build_mmcv '$CUDA_MMCV_SITE' 1 $JOBS; echo \$? >'$WORK/mmcv_cuda_build.rc'" \
      >"$WORK/mmcv_cuda_build.log" 2>&1 &
    MMCV_CUDA_BUILD=$!
    trap '[[ -n "$MMCV_CUDA_BUILD" ]] && kill -- -"$MMCV_CUDA_BUILD" 2>/dev/null' EXIT
    SETUP_NOTES+=("mmcv with CUDA ops was compiling in the background (nice 19, $JOBS jobs) during the steps before maskrcnn")
  else
    SETUP_NOTES+=("no nvcc: mmcv's CUDA ops cannot be built, the maskrcnn step is skipped")
  fi
fi
SETUP_SECONDS=$(( $(date +%s) - START ))
DEADLINE=$(( $(date +%s) + BUDGET ))

# ------------------------------------------------------------------- report
{
  echo "# GPU check of mmsape's CUDA path"
  echo
  echo "\`bash benchmarks/gpu_check.sh\` (steps: $STEPS; budget ${BUDGET} s after ${SETUP_SECONDS} s of set-up), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
  "$PYTHON" -c "import sys, torch, triton; print(f'python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, {torch.cuda.get_device_name()} (compute capability {torch.cuda.get_device_capability()})')" 2>&1
  for note in ${SETUP_NOTES[@]+"${SETUP_NOTES[@]}"}; do echo "set-up: $note"; done
  echo '```'
} >"$REPORT"

# run_step NAME LIMIT_SECONDS MIN_SECONDS command...: run a step within the budget; its
# output goes to the log, its markdown tables and pytest's summary to the report.
run_step() {
  local name=$1 limit=$2 minimum=$3 left status; shift 3
  left=$(( DEADLINE - $(date +%s) ))
  [[ " $STEPS " == *" $name "* ]] || return 0
  printf '\n## %s\n\n' "$name" >>"$REPORT"
  if (( left < minimum )); then
    echo "skipped: ${left} s of the budget left, the step needs about ${minimum} s (GPU_CHECK_STEPS=$name runs it alone)" >>"$REPORT"
    say "$name: skipped (${left} s left)"
    return 0
  fi
  (( limit > left )) && limit=$left
  say "$name (at most ${limit} s): $*"
  echo "\$ $(printf '%q ' "$@")" >>"$REPORT"
  echo >>"$REPORT"
  local step_start step_log="$WORK/step_$name.log"
  step_start=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$step_log" 2>&1
  status=$?
  cat "$step_log" >>"$LOG"
  # Table titles and tables, pytest's short summary and last line.
  grep -E '^(\| |[A-Z][^|]*(median|iterations|backbone|attention|heads).*\.$|(PASSED|FAILED|ERROR|SKIPPED|XFAIL) |[0-9]+ (passed|failed|skipped|errors?|deselected)|  (ok|FAIL) )' \
    "$step_log" >>"$REPORT"
  case $status in
    0) echo -e "\nstatus: ok, $(( $(date +%s) - step_start )) s" >>"$REPORT" ;;
    124|137) echo -e "\nstatus: stopped at its time limit (${limit} s); output so far above" >>"$REPORT" ;;
    *) echo -e "\nstatus: FAILED (exit $status), $(( $(date +%s) - step_start )) s; last lines:" >>"$REPORT"
       echo '```' >>"$REPORT"; tail -n 15 "$step_log" >>"$REPORT"; echo '```' >>"$REPORT" ;;
  esac
}

PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider -rfEs)
run_step env 60 10 "$PYTHON" tools/verify_env.py
run_step tests 240 60 "${PYTEST[@]}" tests/test_cuda/test_cuda_paths.py \
  tests/test_ops/test_sape2_triton.py -k 'not train_with_amp and not dist_train and not benchmarks_run and (test_cuda_paths or cuda)'
run_step attention 180 60 "$PYTHON" benchmarks/bench_sape2_triton.py --tokens 1024 4096 16384 \
  --heads 12 --head-dims 64 --batch 1 --dtype bfloat16 --repeats 5 --json "$WORK/attention.json"
run_step backbone 240 90 "$PYTHON" benchmarks/bench_backbone.py --device cuda --arch base \
  --tokens 4096 --batch 2 --amp --repeats 5 --json "$WORK/backbone.json" --encodings ape \
  sape2 ape_window sape2_window sape2_window_compiled
run_step upernet 150 60 "$PYTHON" benchmarks/bench_train_step.py --device cuda --amp \
  --iters 20 --batch 2 --size 512 --json "$WORK/upernet.json" "$UPERNET" "$UPERNET_SAPE2"
if [[ " $STEPS " == *" maskrcnn "* ]]; then
  if [[ -n "$MMCV_CUDA_BUILD" ]]; then
    say "waiting for the background build of mmcv's CUDA ops"
    while kill -0 "$MMCV_CUDA_BUILD" 2>/dev/null && (( $(date +%s) < DEADLINE - 90 )); do sleep 5; done
    kill -- -"$MMCV_CUDA_BUILD" 2>/dev/null
    MMCV_CUDA_BUILD=''
    tail -n 30 "$WORK/mmcv_cuda_build.log" >>"$LOG"
  fi
  if [[ "$(cat "$WORK/mmcv_cuda_build.rc" 2>/dev/null)" == 0 ]]; then
    export PYTHONPATH="$CUDA_MMCV_SITE:$PYTHONPATH"
  fi
  if "$PYTHON" tools/verify_env.py --only 'mmcv.ops (CUDA)' >>"$LOG" 2>&1; then
    run_step maskrcnn 150 60 "$PYTHON" benchmarks/bench_train_step.py --device cuda --amp \
      --iters 20 --batch 2 --size 1024 --json "$WORK/maskrcnn.json" "$MASKRCNN" "$MASKRCNN_SAPE2"
  else
    printf '\n## maskrcnn\n\nskipped: mmcv has no CUDA ops here (%s)\n' \
      "$( [[ -f "$WORK/mmcv_cuda_build.log" ]] && echo "their build did not finish in time or failed: the end of its log is in gpu_check.log" || echo 'no nvcc to build them' )" >>"$REPORT"
  fi
fi
run_step tools 300 120 "${PYTEST[@]}" tests/test_cuda/test_cuda_paths.py \
  -k 'train_with_amp or dist_train or benchmarks_run'

# The issue's targets, from the JSON results of this run.
if [[ " $STEPS " == *" targets "* ]]; then
  printf '\n## targets (ratios measured in this run)\n\n' >>"$REPORT"
  "$PYTHON" - "$WORK" >>"$REPORT" 2>>"$LOG" <<'EOF'
import json, os, sys

work = sys.argv[1]


def load(name):
    path = os.path.join(work, f'{name}.json')
    return json.load(open(path)) if os.path.exists(path) else None


def ratio(rows, case, reference, key='fwdbwd_ms'):
    try:
        return rows[case][key] / rows[reference][key]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


lines = ['| target | measured | met? |', '|---|---:|---|']


def add(target, value, limit=None, smaller=True):
    if value is None:
        lines.append(f'| {target} | not measured | - |')
        return
    met = '(no target)' if limit is None else (
        'yes' if (value <= limit if smaller else value >= limit) else '**no**')
    lines.append(f'| {target} | {value:.2f}x | {met} |')


attention = load('attention') or {}
for tokens, limit in (('4096', 3.), ('16384', 3.5)):
    rows = attention.get(tokens)
    add(f'exact SaPE² attention fwd+bwd (Triton) <= {limit}x SDPA flash, {tokens} tokens',
        ratio(rows, 'triton', 'sdpa'), limit)
for tokens in ('4096', '16384'):
    rows = attention.get(tokens)
    speedup = ratio(rows, 'block', 'triton')
    add(f'Triton >= 10x faster than the PyTorch block kernel (CUDA before), {tokens} tokens',
        speedup, 10., smaller=False)
small, large = attention.get('4096'), attention.get('16384')
try:
    growth = large['triton']['fwdbwd_mib'] / small['triton']['fwdbwd_mib']
except (KeyError, TypeError, ZeroDivisionError):
    growth = None
add('peak memory O(N): Triton fwd+bwd growth 4096 -> 16384 tokens (4x is linear, 16x quadratic)',
    growth, 5.)
backbone = (load('backbone') or {}).get('4096')
add('ViT-B/16 backbone fwd+bwd at 1024x1024, ViTDet windows: SaPE² <= 1.5x APE',
    ratio(backbone, 'sape2_window', 'ape_window'), 1.5)
add('same, SaPE² compiled (torch.compile) vs APE eager',
    ratio(backbone, 'sape2_window_compiled', 'ape_window'), 1.5)
add('ViT-B/16 backbone fwd+bwd at 1024x1024, global attention: SaPE² vs APE',
    ratio(backbone, 'sape2', 'ape'))
for name, limit in (('upernet', 1.3), ('maskrcnn', None)):
    rows = load(name)
    value = None
    if rows:
        times = [row['iter_ms'] for row in rows.values()]
        value = times[1] / times[0]
    label = ('SaPE² UPerNet training iteration at 512 (AMP) <= 1.3x the APE config'
             if name == 'upernet' else
             'SaPE² Mask R-CNN training iteration at 1024 (AMP) vs the APE config')
    add(label, value, limit)
print('\n'.join(lines))
EOF
fi
say "done in $(( $(date +%s) - START )) s: $REPORT"
cat "$REPORT"
