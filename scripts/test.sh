#!/usr/bin/env bash
# Builds qkv and runs every test: the C++ suites (release, with warnings as
# errors), the install check (find_package and pkg-config), the Python package
# and its pytest suite against PyTorch, and the C++ suites again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Run scripts/setup.sh first
# (the README's command does). Set QKV_TEST_SKIP_SANITIZERS=1 to leave out the
# sanitizer pass in a quick local loop; CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)
step() { printf '\n==== %s ====\n' "$*"; }

step "C++ build (release, -Werror)"
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release -DQKV_WERROR=ON -DQKV_BUILD_BENCH=ON \
  -DQKV_BUILD_TESTS=ON -DQKV_BUILD_CLI=ON >/dev/null
cmake --build build/release -j "$jobs"

step "C++ tests (release)"
ctest --test-dir build/release --output-on-failure -j "$jobs"

step "install: find_package(qkv) and pkg-config from another project"
rm -rf build/stage build/consumer
cmake --install build/release --prefix build/stage >/dev/null
cmake -S tests/install -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$root/build/stage" >/dev/null
cmake --build build/consumer
LD_LIBRARY_PATH="$root/build/stage/lib" build/consumer/consumer
PKG_CONFIG_PATH="$root/build/stage/lib/pkgconfig" pkg-config --exists --print-errors qkv
g++ tests/install/consumer.cc -o build/consumer/consumer_pc \
  $(PKG_CONFIG_PATH="$root/build/stage/lib/pkgconfig" pkg-config --cflags --libs qkv)
LD_LIBRARY_PATH="$root/build/stage/lib" build/consumer/consumer_pc

step "qkv command"
build/release/qkv demo --quick

step "Python package (pip install .)"
.venv/bin/python -m pip install -q --no-build-isolation --disable-pip-version-check . 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import qkv; print('qkv', qkv.__version__)"

step "Python tests (pytest against PyTorch)"
QKV_CLI="$root/build/release/qkv" .venv/bin/python -m pytest -q tests/python

if [[ "${QKV_TEST_SKIP_SANITIZERS:-0}" != 1 ]]; then
  step "C++ build and tests under AddressSanitizer + UndefinedBehaviorSanitizer (debug)"
  cmake -S . -B build/asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DQKV_WERROR=ON \
    -DQKV_SANITIZE=address,undefined -DQKV_BUILD_BENCH=OFF -DQKV_BUILD_CLI=OFF >/dev/null
  cmake --build build/asan -j "$jobs"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build/asan --output-on-failure -j "$jobs"
fi
step "all tests passed"
