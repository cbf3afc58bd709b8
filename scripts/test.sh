#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs every test. GPU tests skip (exit 77) without a device.
# Then the unit and command-line tests again, built with AddressSanitizer and UBSan (SANITIZE=0 skips that).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-test-assets.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)"
if [ "${SANITIZE:-1}" = 1 ]; then
  echo "== the same tests under AddressSanitizer + UBSan"
  # Except the divergence-tracing searches (ForwardVsReference.*Trace*): they rerun the float64 reference tens
  # of times (minutes under ASan) and follow the exact float32 roundings of the optimized build, which -O1
  # changes. The run above runs them; the reference's flips and alternatives they use run here as unit tests.
  # -O1 -g1 (line tables): stack traces with file:line, and less than half the compile time of -O2 -g.
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DFERRY_SANITIZE=ON -DFERRY_ENABLE_CUDA=OFF >/dev/null
  cmake --build build-asan -j"$(nproc)"
  # scripts/lsan.supp: oneTBB's observer bookkeeping (40 bytes an observed arena), not ferry's.
  ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0" UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -L "unit|e2e" -E "ForwardVsReference\..*Trace"
fi
