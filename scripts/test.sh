#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs every test. GPU tests skip (exit 77) without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)"
