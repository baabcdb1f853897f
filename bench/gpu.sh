#!/usr/bin/env bash
# GPU readiness (issue 16): the CUDA checks and benchmarks, in one run on a bare GPU machine.
#
# The machine has Python with a CUDA build of torch but no network, and may lack pydantic,
# cryptography, onnxruntime-gpu and prunegate's other dependencies. So, in two steps:
#
#   make gpu-wheels      here, with the network: fills bench/wheels (git-ignored) with the wheels
#                        this script installs (prunegate's runtime dependencies but torch and
#                        torchvision, for GPU_PYTHON, default 3.12: the GPU machine's Python) and
#                        shared/, a small slice of ../shared (1,000 CIFAR-10 test images, 20
#                        ImageNet photos, the frost photographs, ResNet-20), since ../shared does
#                        not travel; it prints the folder's size.
#   device run           carry ["bench/wheels"], command `bash bench/gpu.sh "$OUT"`, timeout_s 600.
#
# The device tool carries ignored paths only when named, 64 MiB in all with the working tree: so
# numpy and onnxruntime (CPU), which every CUDA image has and which weigh 44 MB, are left out
# (GPU_WHEELS_SKIP), and onnxruntime-gpu (several hundred MB) is fetched only with
# `make gpu-wheels ORT_GPU=1`, for a machine reached another way. Without it the ONNX CUDA tests
# skip and the torch parts run all the same.
#
# On the machine it runs from the repository root of the copy: it finds a Python with torch (the
# tree's .venv, else python3; GPU_SH_PYTHON overrides), makes a venv that sees that Python's
# packages, installs only what is missing, from bench/wheels alone (pip --no-index), and prunegate
# itself without build isolation or dependencies, prints the GPU, then runs, each step under
# `timeout` and all within about 8 minutes (GPU_SH_BUDGET_S), going on after a step fails:
#   1. pytest -m cuda (tests/test_cuda.py): CUDA vs CPU for the corruptions, noise, runners, check;
#   2. bench/corruption_speed.py on cuda and cpu;
#   3. bench/pipeline.py on cuda (both backends when ONNX Runtime has CUDA), then on cpu.
# OUTDIR gets at most 8 files (what the device tool brings back): summary.txt (one line per step,
# failed steps named), gpu.log (everything), cuda-junit.xml, corruption-speed.md, pipeline-cuda.md,
# pipeline-cpu.md and logs.tar.gz (each step's log, pip's list).
#
#   GPU_SH_ALLOW_CPU=1 bash bench/gpu.sh /tmp/gpu-dry   # without a GPU: the same steps on the CPU
#                                                        # with tiny sizes, to prove the plumbing
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
WHEELS=bench/wheels

prepare() {
    local python=${PYTHON:-python3} version=${GPU_PYTHON:-3.12} skip=${GPU_WHEELS_SKIP-numpy onnxruntime}
    local shared=${SHARED:-../shared} platforms=() n
    for n in 2_17 2_24 2_27 2_28 2_31 2_34; do platforms+=(--platform "manylinux_${n}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64)
    rm -rf "$WHEELS" && mkdir -p "$WHEELS" || return 1
    # prunegate's runtime dependencies from pyproject.toml, but torch and torchvision
    "$python" - >"$WHEELS/requirements.txt" <<'EOF' || return 1
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[ <>=!~\[;]", d, maxsplit=1)[0] not in ("torch", "torchvision")))
EOF
    echo "downloading for Python $version: $(tr '\n' ' ' <"$WHEELS/requirements.txt")setuptools"
    "$python" -m pip download --quiet --only-binary=:all: --python-version "$version" --implementation cp \
        "${platforms[@]}" -d "$WHEELS" -r "$WHEELS/requirements.txt" 'setuptools>=68' || return 1
    for n in $skip; do rm -f "$WHEELS/$n"-[0-9]*.whl && echo "left out: $n (GPU_WHEELS_SKIP)"; done
    if [ "${ORT_GPU:-0}" = 1 ]; then
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
            --implementation cp "${platforms[@]}" -d "$WHEELS" 'onnxruntime-gpu>=1.18' || return 1
    fi
    if [ -d "$shared/data/cifar10-test-jpeg" ]; then
        local to=$WHEELS/shared c
        for c in "$shared"/data/cifar10-test-jpeg/*/; do
            c=$(basename "$c")
            mkdir -p "$to/data/cifar10-test-jpeg/$c" && cp "$shared/data/cifar10-test-jpeg/$c"/00[0-9][0-9].jpg "$_"/
        done
        mkdir -p "$to/data/imagenet-samples-200" "$to/models/akamaster-resnet-cifar10"
        find "$shared/data/imagenet-samples-200" -name '*.JPEG' | LC_ALL=C sort | head -20 |
            xargs cp -t "$to/data/imagenet-samples-200"
        cp -r "$shared/data/frost-textures" "$to/data/"
        cp "$shared"/models/akamaster-resnet-cifar10/{resnet20-12fca82f.th,LICENSE} "$to/models/akamaster-resnet-cifar10/"
    else
        echo "warning: no $shared: the GPU run's real-data tests will skip" >&2
    fi
    local size tree
    size=$(du -sm --apparent-size "$WHEELS" | cut -f1)
    tree=$(git ls-files -z | xargs -0 du -cm --apparent-size 2>/dev/null | tail -1 | cut -f1)
    echo "$WHEELS: ${size} MiB (the working tree ~${tree} MiB; the device tool carries 64 MiB in all)"
    du -sh --apparent-size "$WHEELS"/* | sort -h | tail -6
    if [ $((size + tree)) -gt 62 ]; then echo "warning: over the device tool's 64 MiB: carry less" >&2; fi
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit $?
fi
if [ $# -ne 1 ]; then
    echo "usage: bash bench/gpu.sh OUTDIR   (or: bash bench/gpu.sh --prepare, i.e. make gpu-wheels)" >&2
    exit 2
fi

OUT=$(mkdir -p "$1" && cd "$1" && pwd) || exit 2
WORK=${GPU_SH_WORK:-$(mktemp -d /tmp/prunegate-gpu.XXXXXX)}
mkdir -p "$WORK/logs"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
exec > >(tee -a "$OUT/gpu.log") 2>&1
START=$(date +%s)
DEADLINE=$((START + ${GPU_SH_BUDGET_S:-480}))
FAILED=()
DRY=${GPU_SH_ALLOW_CPU:-0}
DEVICE=cuda
[ "$DRY" = 1 ] && DEVICE=cpu

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: runs it under timeout (cut to what is left of the budget), its
# output to the console and logs/NAME.log, and records the outcome in the summary.
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((DEADLINE - $(date +%s) - 5))
    if [ "$left" -lt 20 ]; then
        note "SKIPPED $name: out of time"
        FAILED+=("$name")
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        note "ok     $name ($(($(date +%s) - t0)) s)"
    else
        [ "$rc" = 124 ] || [ "$rc" = 137 ] && rc="$rc, timed out after ${limit}s"
        note "FAILED $name (rc $rc, $(($(date +%s) - t0)) s)"
        FAILED+=("$name")
    fi
    return 0
}

note "bench/gpu.sh $(date -u +%FT%TZ) in $ROOT$([ "$DRY" = 1 ] && echo ' -- DRY RUN ON THE CPU (GPU_SH_ALLOW_CPU=1): proves the plumbing only')"

# --- the GPU
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L | tee -a "$SUMMARY"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$SUMMARY"
else
    note "nvidia-smi: not found"
fi

# --- a Python with torch
PY=${GPU_SH_PYTHON:-}
if [ -z "$PY" ]; then
    for candidate in "$ROOT/.venv/bin/python" python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
            PY=$(command -v "$candidate")
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    note "FAILED python: no Python with torch (set GPU_SH_PYTHON)"
    exit 1
fi
"$PY" - <<'EOF' | tee -a "$SUMMARY"
import platform, torch
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()} ({__import__('sys').executable}); torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, available: {cuda}" + (f", {torch.cuda.get_device_name(0)}" if cuda else ""))
EOF
if [ "$DRY" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    note "FAILED cuda: torch.cuda.is_available() is False (GPU_SH_ALLOW_CPU=1 for a dry run on the CPU)"
    FAILED+=(cuda)
fi

# --- a venv that sees that Python's packages (a venv made from a venv would not, hence the .pth)
VPY=$WORK/venv/bin/python
if "$PY" -m venv --without-pip --system-site-packages "$WORK/venv"; then
    "$PY" -c 'import site, sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
        >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_gpu_sh_parent.pth"
fi
if ! "$VPY" -c 'import torch, pip' 2>/dev/null; then
    note "no usable venv: installing into $WORK/site (PYTHONPATH) instead"
    VPY=$PY
    export PIP_TARGET=$WORK/site PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
# CUDA libraries of pip's nvidia-* packages, for onnxruntime-gpu
NVLIBS=$("$VPY" -c 'import glob, sys; print(":".join(sorted({d for p in sys.path for d in glob.glob(p + "/nvidia/*/lib")})))')
[ -n "$NVLIBS" ] && export LD_LIBRARY_PATH=$NVLIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

pip_local() { "$VPY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-cache-dir --disable-pip-version-check "$@"; }

install_missing() {
    local missing req bad=0
    missing=$("$VPY" - <<'EOF'
import tomllib
from importlib import metadata
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
reqs = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] + ["pytest>=8"]
for text in reqs:
    req = Requirement(text)
    try:
        ok = req.specifier.contains(metadata.version(req.name), prereleases=True)
    except metadata.PackageNotFoundError:
        ok = False
    if not ok:
        print(text)
EOF
    ) || return 1
    echo "missing or too old: ${missing:-nothing}"
    while read -r req; do
        [ -z "$req" ] && continue
        pip_local "$req" || { echo "cannot install $req from $WHEELS"; bad=1; }
    done <<<"$missing"
    if compgen -G "$WHEELS/onnxruntime_gpu-*.whl" >/dev/null; then
        pip_local onnxruntime-gpu || { echo "cannot install onnxruntime-gpu"; bad=1; }
    else
        echo "no onnxruntime-gpu wheel in $WHEELS: the ONNX CUDA tests will skip"
    fi
    # prunegate from a copy of what it builds from (so the build writes nothing into the tree)
    # shellcheck disable=SC2015  # (the message runs when any of the steps fails: as meant)
    rm -rf "$WORK/src" && mkdir -p "$WORK/src" && cp -r pyproject.toml README.md prunegate "$WORK/src/" &&
        pip_local --no-build-isolation --no-deps "$WORK/src" || { echo "cannot install prunegate"; bad=1; }
    "$VPY" -m pip list --disable-pip-version-check >"$WORK/logs/pip-list.txt" 2>&1
    "$VPY" -c 'import prunegate.cli, pydantic, cryptography, onnxruntime as o; print("imports ok; onnxruntime",
        o.__version__, o.get_available_providers())' || bad=1
    return $bad
}
export -f install_missing pip_local  # timeout runs programs: the step runs the function in a bash
export VPY WHEELS WORK
step install 150 bash -c install_missing

ORT_CUDA=0
"$VPY" -c 'import sys, onnxruntime as o; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
    2>/dev/null && ORT_CUDA=1
note "onnxruntime CUDAExecutionProvider: $([ $ORT_CUDA = 1 ] && echo yes || echo no)"

# --- the real data: ../shared, else the slice carried in bench/wheels/shared
if [ -d ../shared/data/cifar10-test-jpeg ]; then
    note "data: ../shared"
elif [ -d "$WHEELS/shared/data/cifar10-test-jpeg" ] && [ ! -e ../shared ] && ln -s "$ROOT/$WHEELS/shared" ../shared; then
    note "data: ../shared -> $WHEELS/shared (the slice make gpu-wheels made)"
else
    note "FAILED data: neither ../shared nor $WHEELS/shared: the real-data tests and benchmarks cannot run"
    FAILED+=(data)
fi

# --- 1. the cuda suite
if [ "$DRY" = 1 ]; then
    export PRUNEGATE_CUDA_TESTS_DEVICE=cpu
fi
export PYTHONUNBUFFERED=1
step pytest-cuda 300 "$VPY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -q -rfEs \
    --junitxml="$OUT/cuda-junit.xml"
if [ -f "$OUT/cuda-junit.xml" ]; then
    "$VPY" - "$OUT/cuda-junit.xml" <<'EOF' | tee -a "$SUMMARY"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
a = suite.attrib
print(f"       cuda suite: {a['tests']} tests, {a['failures']} failed, {a['errors']} errors, {a['skipped']} skipped")
EOF
fi

# --- 2. corruption speed, 3. the pipeline
if [ "$DRY" = 1 ]; then
    SPEED=(--devices cpu --n32 20 --n224 2) PIPE=(--images 20 --batch 20) CPU_PIPE=(--images 20 --batch 20)
else
    SPEED=(--devices "cuda,cpu" --n32 1000 --n224 20) PIPE=(--images 1000 --batch 250) CPU_PIPE=(--images 500 --batch 250)
fi
step corruption-speed 150 "$VPY" bench/corruption_speed.py --skip-reference "${SPEED[@]}" --md "$OUT/corruption-speed.md"
BACKENDS=torch
[ $ORT_CUDA = 1 ] && BACKENDS=torch,onnx
step pipeline-$DEVICE 180 "$VPY" bench/pipeline.py --device "$DEVICE" --backends "$BACKENDS" "${PIPE[@]}" --memory \
    --md "$OUT/pipeline-$DEVICE.md"
if [ "$DRY" != 1 ]; then
    step pipeline-cpu 120 "$VPY" bench/pipeline.py --device cpu --backends torch,onnx "${CPU_PIPE[@]}" --memory \
        --md "$OUT/pipeline-cpu.md"
fi

# --- the summary
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
if [ ${#FAILED[@]} -eq 0 ]; then
    note "ALL STEPS OK in $(($(date +%s) - START)) s"
else
    note "FAILED STEPS: ${FAILED[*]} ($(($(date +%s) - START)) s)"
fi
[ ${#FAILED[@]} -eq 0 ]
