#!/usr/bin/env bash
# Installs the test toolchains (PoCL OpenCL, NVRTC/ptxas wheels, numpy) and runs every check:
# fmt, clippy, the whole test suite, `rlobj check` on the stdlib and the catalog, and the
# verl/TRL parity script (on the interp, cpu, candle and opencl backends) when
# ../shared/tools/parity is present.
# Idempotent: installed pieces are detected and skipped, so a second run only runs the checks.
# usage: bash .ci/setup-and-test.sh      (from anywhere; exit status 0 only if everything passed)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$PWD

say() { printf '\n== %s\n' "$*"; }
free_disk() { df -Pk . | awk 'NR==2 { printf "%.1f GB free on %s", $4 / 1048576, $6 }'; }

# Say how much disk there is, and (in the summary) how much target/ took, so that a full disk is
# obvious in the log rather than a wall of rustc I/O errors.
say "disk: $(free_disk)"
# CI builds from cold, so incremental caches only cost disk.
export CARGO_INCREMENTAL=0

# --- 1. toolchains ---------------------------------------------------------------------------
sudo_=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo_="sudo"; fi
if ! dpkg -s pocl-opencl-icd ocl-icd-opencl-dev >/dev/null 2>&1; then
  say "installing PoCL (OpenCL on the CPU)"
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq pocl-opencl-icd ocl-icd-opencl-dev >/dev/null \
    || echo "warning: could not install pocl-opencl-icd / ocl-icd-opencl-dev; OpenCL tests will skip"
fi
py_pkgs="numpy nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12"
if ! python3 -m pip show $py_pkgs >/dev/null 2>&1; then
  say "installing Python wheels: $py_pkgs"
  python3 -m pip install -q --no-cache-dir $py_pkgs 2>/dev/null \
    || python3 -m pip install -q --no-cache-dir --break-system-packages $py_pkgs \
    || echo "warning: could not install $py_pkgs; NVRTC tests will skip"
fi
# Make the wheels' NVRTC and ptxas visible, and make the suites fail (not skip) when the
# toolchains are installed but do not work.
if site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null); then
  export LD_LIBRARY_PATH="$site/nvidia/cuda_nvrtc/lib:$site/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$site/nvidia/cuda_nvcc/bin:$PATH"
  [ -e "$site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ] && export RLOBJ_REQUIRE_NVRTC=1
fi
dpkg -s pocl-opencl-icd >/dev/null 2>&1 && export RLOBJ_REQUIRE_OPENCL=1
export POCL_CACHE_DIR="$root/target/pocl-cache"

# --- 2. checks -------------------------------------------------------------------------------
failed=()
step() {
  local name=$1; shift
  say "$name: $*"
  if "$@"; then echo "-- $name: ok"; else echo "-- $name: FAILED"; failed+=("$name"); fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test cargo test --workspace
step build cargo build --release -p rlobj-runtime --bin rlobj
shopt -s globstar nullglob
obj_files=(stdlib/**/*.obj objectives/**/*.obj)
if [ -x target/release/rlobj ] && [ ${#obj_files[@]} -gt 0 ]; then
  step check-catalog target/release/rlobj check "${obj_files[@]}"
  step demo target/release/rlobj demo
fi
if [ -x ../shared/tools/parity ]; then
  for backend in interp cpu candle opencl; do
    step "parity-$backend" ../shared/tools/parity "$backend"
  done
fi

say "summary"
echo "disk: $(free_disk); target/ is $(du -sh target 2>/dev/null | cut -f1)"
if [ ${#failed[@]} -eq 0 ]; then
  echo "all checks passed"
else
  echo "failed: ${failed[*]}"
  exit 1
fi
