#!/usr/bin/env bash
# One-command setup of PAL on Debian 12: installs the Debian packages it builds against,
# then configures and builds. Safe to run again: it installs only what is missing and
# rebuilds only what changed.
#
#   scripts/setup.sh                     Debian's libtorch-dev 1.13 (CPU); build in build/debian
#   scripts/setup.sh --torch pip         PyPI's torch wheel (CUDA-enabled LibTorch 2.x) in a
#                                        virtual environment build/pip/venv; build in build/pip/build
#   scripts/setup.sh --sanitize          ASan + UBSan build in build/sanitize (Debian flavour)
#   scripts/setup.sh --no-build          install the packages only (--torch pip: and the wheel)
#   scripts/setup.sh --print-build-dir   print the build folder these flags select, do nothing
#   scripts/setup.sh --targets "pal-train pal-infer"   build only these targets (default: all)
#
# Environment: PAL_TORCH_PIP_VERSION (default 2.11.0; the newest wheel is used if that
# version is not served), PAL_JOBS (parallel compile jobs, default: cores).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch=debian
sanitize=0
build=1
print_dir=0
targets=
build_type=Release
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) torch=${2:?--torch needs debian or pip}; shift 2 ;;
    --torch=*) torch=${1#--torch=}; shift ;;
    --sanitize) sanitize=1; shift ;;
    --no-build) build=0; shift ;;
    --debug) build_type=Debug; shift ;;
    --print-build-dir) print_dir=1; shift ;;
    --targets) targets=${2?--targets needs a list of target names}; shift 2 ;;
    --targets=*) targets=${1#--targets=}; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$torch" in debian|pip) ;; *) echo "setup.sh: --torch must be 'debian' or 'pip', not '$torch'" >&2; exit 2 ;; esac
if [ "$sanitize" = 1 ] && [ "$torch" = pip ]; then
  echo "setup.sh: --sanitize builds against Debian's LibTorch only" >&2; exit 2
fi

if [ "$torch" = pip ]; then build_dir=$root/build/pip/build
elif [ "$sanitize" = 1 ]; then build_dir=$root/build/sanitize
else build_dir=$root/build/debian; fi
if [ "$print_dir" = 1 ]; then echo "$build_dir"; exit 0; fi

log() { echo "setup.sh: $*" >&2; }

# ---- Debian packages -------------------------------------------------------------------
packages=(
  g++ cmake ninja-build ccache pkg-config git ca-certificates
  libtorch-dev libopenblas0-pthread    # LibTorch 1.13 (CPU); OpenBLAS: ~25x faster matmul than reference BLAS
  libgloo-dev                          # gloo's headers: the Gloo process group of multi-process CPU training
  libprotobuf-dev libsentencepiece-dev # tokenizers (protobuf must be linked before sentencepiece)
  libsndfile1-dev libsoxr-dev          # audio decoding and resampling
  libyaml-cpp-dev libspdlog-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev
)
[ "$torch" = pip ] && packages+=(python3 python3-venv python3-pip)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}"
    log "install them as root: apt-get update && apt-get install -y ${missing[*]}"
    exit 1
  fi
  log "installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$build" = 1 ] || [ "$torch" = pip ] || exit 0

# ---- LibTorch from PyPI (--torch pip) ----------------------------------------------------
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=$build_type)
if [ "$torch" = pip ]; then
  venv=$root/build/pip/venv
  want=${PAL_TORCH_PIP_VERSION:-2.11.0}
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the virtual environment $venv"
    mkdir -p "$root/build/pip"
    # The interpreter Debian ships: it is what a fresh machine has.
    py=/usr/bin/python3; [ -x "$py" ] || py=python3
    "$py" -m venv "$venv"
  fi
  have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    log "installing torch==$want from PyPI into $venv (large download, cached by pip)"
    if ! "$venv/bin/pip" install -q "torch==$want"; then
      log "torch==$want is not served here; installing the newest torch instead"
      "$venv/bin/pip" install -q torch
    fi
  fi
  [ "$build" = 1 ] || exit 0
  torch_cmake=$("$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
  cmake_args+=(-DTorch_DIR="$torch_cmake/Torch")
  # The wheel's LibTorch is CUDA-enabled; its CMake files need the CUDA toolkit (nvcc).
  if ! command -v nvcc >/dev/null; then
    for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH=$d:$PATH && break; done
  fi
  command -v nvcc >/dev/null || { log "the pip flavour needs the CUDA toolkit (nvcc) to configure; none found"; exit 1; }
fi
[ "$sanitize" = 1 ] && cmake_args+=(-DPAL_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)

# ---- configure + build ---------------------------------------------------------------------
jobs=${PAL_JOBS:-$(nproc)}
# Let ccache cache sources compiled with the tests' precompiled header.
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
log "configuring $build_dir"
mkdir -p "$(dirname "$build_dir")"
cmake -S "$root" -B "$build_dir" "${cmake_args[@]}" >"$build_dir.configure.log" 2>&1 ||
  { cat "$build_dir.configure.log" >&2; log "configure failed"; exit 1; }
log "building ${targets:-everything} with $jobs jobs"
target_args=()
for t in $targets; do target_args+=(--target "$t"); done
cmake --build "$build_dir" -j "$jobs" "${target_args[@]}"
log "done: tools in $build_dir (pal-info), tests: scripts/test.sh"
