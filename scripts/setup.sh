#!/usr/bin/env bash
# Installs every system dependency of lorafit on Debian 12 and configures + builds it.
# Idempotent: re-running only rebuilds what changed.
#   scripts/setup.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
shift || true

PKGS=(build-essential cmake pkg-config git python3 python3-venv ccache
      libopenblas-openmp-dev libomp-dev libopenmpi-dev openmpi-bin iproute2
      libdnnl-dev  # oneDNN: BF16 GEMM for --compute-dtype bf16 (CMake builds without it: fp32 only)
      libgtest-dev libgmock-dev libbenchmark-dev
      nlohmann-json3-dev libpcre2-dev libutf8proc-dev libcli11-dev libyaml-cpp-dev python3-pip libpng-dev
      clang-14 libclang-rt-14-dev)  # clang + libFuzzer/ASan/UBSan runtimes for scripts/fuzz.sh
# For running the tests only (scripts/test.sh passes -DLORAFIT_BUILD_TESTS=ON): headless Chromium
# renders report.html to a PNG that the test reads back (libpng, above). Chromium is large
# (~350 MB with its libraries), so a plain build does not install it.
TEST_PKGS=(chromium)
for a in "$@"; do
  case "$a" in -DLORAFIT_BUILD_TESTS=ON|-DLORAFIT_BUILD_TESTS=on|-DLORAFIT_BUILD_TESTS=1) PKGS+=("${TEST_PKGS[@]}") ;; esac
done
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "[setup] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# LORAFIT_SETUP_PACKAGES_ONLY=1: install the packages, do not configure or build.
[ "${LORAFIT_SETUP_PACKAGES_ONLY:-0}" = 1 ] && exit 0
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} "$@"
cmake --build "$BUILD_DIR" -j"$(nproc)"
