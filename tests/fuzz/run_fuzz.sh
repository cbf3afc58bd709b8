#!/usr/bin/env bash
# Builds the safetensors header/index fuzz target with clang's libFuzzer, AddressSanitizer and UBSan, then fuzzes
# a copy of tests/fuzz/corpus for SECONDS (default 60). Exit 0: no finding. Non-zero: a finding (its input is
# kept under WORK/findings and the path printed) or missing tools. Installs nothing.
# Usage: tests/fuzz/run_fuzz.sh [SECONDS]     tests/fuzz/run_fuzz.sh --check (tools only, no build)
# Environment: FERRY_FUZZ_CXX (default: clang++, else clang++-14), FERRY_FUZZ_WORK (default: build-fuzz).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${FERRY_FUZZ_WORK:-$root/build-fuzz}"
# fmt header-only: the error messages' formatting is built into the target, instrumented like the rest.
flags=(-std=c++20 -g -O1 "-fsanitize=fuzzer,address,undefined" -fno-sanitize-recover=undefined -DFMT_HEADER_ONLY)
packages="clang-14 libclang-rt-14-dev"

cxx="${FERRY_FUZZ_CXX:-$(command -v clang++ || command -v clang++-14 || true)}"
if [ -z "$cxx" ] || ! command -v "$cxx" >/dev/null; then
  echo "run_fuzz: clang++ not found; the fuzzer needs clang (Debian 12: apt-get install $packages)" >&2
  exit 2
fi
mkdir -p "$work"
probe="$work/probe.cpp"
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"$probe"
if ! "$cxx" "${flags[@]}" "$probe" -o "$work/probe" 2>"$work/probe.log"; then
  echo "run_fuzz: $cxx cannot link -fsanitize=fuzzer,address,undefined (libFuzzer/sanitizer runtime missing?" \
       "Debian 12: apt-get install $packages); see $work/probe.log" >&2
  exit 2
fi
if ! echo '#include <nlohmann/json.hpp>' | "$cxx" -std=c++20 -fsyntax-only -x c++ - 2>/dev/null; then
  echo "run_fuzz: nlohmann/json.hpp not found (Debian: apt-get install nlohmann-json3-dev)" >&2
  exit 2
fi
if ! echo '#include <fmt/format.h>' | "$cxx" -std=c++20 -fsyntax-only -x c++ - 2>/dev/null; then
  echo "run_fuzz: fmt/format.h not found (Debian: apt-get install libfmt-dev)" >&2
  exit 2
fi
if [ "${1:-}" = "--check" ]; then
  echo "run_fuzz: $cxx with libFuzzer, ASan and UBSan is usable"
  exit 0
fi

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: run_fuzz.sh [SECONDS] | --check" >&2
  exit 2
fi
echo "run_fuzz: building with $cxx"
"$cxx" "${flags[@]}" -I"$root" -o "$work/fuzz_safetensors_header" "$here/fuzz_safetensors_header.cpp" \
  "$root/planner/core/safetensors_header.cpp" "$root/planner/core/dtype.cpp"

# Fuzz a copy: libFuzzer adds every input that reaches new code to its corpus directory. Findings of an earlier
# run are dropped.
rm -rf "$work/corpus" "$work/findings" "$work/tmp"
cp -r "$here/corpus" "$work/corpus"
mkdir -p "$work/findings" "$work/tmp"
# The target's model directory goes here, so that one left behind by a crash is cleared by the next run.
export TMPDIR="$work/tmp"
cat >"$work/safetensors.dict" <<'EOF'
"dtype"
"shape"
"data_offsets"
"__metadata__"
"weight_map"
"metadata"
"shard.safetensors"
"model.safetensors.index.json"
"BF16"
"F16"
"F32"
"F8_E4M3"
"F8_E8M0"
"I8"
"I32"
"I64"
"9223372036854775807"
"18446744073709551615"
EOF

symbolizer="$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)"
export ASAN_SYMBOLIZER_PATH="${ASAN_SYMBOLIZER_PATH:-$symbolizer}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
status=0
"$work/fuzz_safetensors_header" "$work/corpus" -dict="$work/safetensors.dict" -max_total_time="$seconds" \
  -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$work/findings/" || status=$?
if [ "$status" -ne 0 ]; then
  echo "run_fuzz: FINDING (exit $status); inputs in $work/findings:" >&2
  ls -l "$work/findings" >&2
  echo "run_fuzz: reproduce with $work/fuzz_safetensors_header FILE" >&2
  exit "$status"
fi
echo "run_fuzz: no findings in $seconds s"
