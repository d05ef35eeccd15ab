#!/usr/bin/env bash
# Builds the safetensors libFuzzer target with clang (ASan + UBSan) and runs it
# on a copy of the seed corpus, then prints the figures.
#
#   scripts/fuzz.sh [seconds=600]
#
# Environment: QKV_FUZZ_BUILD_DIR (default build/fuzz), QKV_FUZZ_MAX_LEN
# (default 4096). One core: libFuzzer runs a single job. The grown corpus and
# any crash inputs stay under the build directory; only fuzz/corpus/ (the
# small seed corpus) is in the repository.
set -euo pipefail

seconds="${1:-600}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(realpath -m "${QKV_FUZZ_BUILD_DIR:-$root/build/fuzz}")"
max_len="${QKV_FUZZ_MAX_LEN:-4096}"

# clang on this toolchain has no OpenMP runtime, and the top-level project
# requires OpenMP. The fuzz target does not link it (fuzz/CMakeLists.txt uses a
# sequential stub), so FindOpenMP is told the answer instead of probing clang.
CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DQKV_WERROR=ON -DQKV_BUILD_FUZZ=ON -DQKV_BUILD_TESTS=OFF -DQKV_BUILD_BENCH=OFF \
  -DQKV_BUILD_CLI=OFF -DQKV_BUILD_PYTHON=OFF \
  -DOpenMP_CXX_FLAGS=-fopenmp -DOpenMP_CXX_LIB_NAMES=gomp \
  -DOpenMP_gomp_LIBRARY="$(g++ -print-file-name=libgomp.so)" >/dev/null
ninja -C "$build" safetensors_fuzz

run="$build/fuzz-run-safetensors"
rm -rf "$run"
mkdir -p "$run/corpus" "$run/artifacts"
cp "$root"/fuzz/corpus/safetensors/* "$run/corpus/"
seeds=$(ls "$run/corpus" | wc -l)

command=("$build/fuzz/safetensors_fuzz" -max_total_time="$seconds" -max_len="$max_len"
         -timeout=10 -print_final_stats=1 -artifact_prefix="$run/artifacts/" "$run/corpus")
echo "command: ${command[*]}"
start=$(date +%s)
status=0
"${command[@]}" >"$run/fuzz.log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))

stat() { grep -o "stat::$1: *[0-9]*" "$run/fuzz.log" | grep -o '[0-9]*$' || echo "?"; }
last=$(grep -E '^#[0-9]+' "$run/fuzz.log" | tail -1)
crashes=$(find "$run/artifacts" -type f | wc -l)
echo "duration:        ${elapsed} s (asked ${seconds} s), libFuzzer exit status ${status}"
echo "executions:      $(stat number_of_executed_units)"
echo "exec/s:          $(stat average_exec_per_sec)"
echo "new units:       $(stat new_units_added)"
echo "peak RSS:        $(stat peak_rss_mb) MB"
echo "final line:      ${last}"
echo "coverage:        $(grep -o 'cov: [0-9]*' <<<"$last") $(grep -o 'ft: [0-9]*' <<<"$last")"
echo "corpus:          ${seeds} seeds -> $(ls "$run/corpus" | wc -l) files ($(du -sh "$run/corpus" | cut -f1))"
echo "crash artifacts: ${crashes} in $run/artifacts"
echo "log:             $run/fuzz.log"
[[ $status -eq 0 && $crashes -eq 0 ]]
