#!/usr/bin/env bash
# Installs the dependencies (Debian packages) and builds ferry into ./build.
# BUILD_DIR and CMAKE_BUILD_TYPE may be set; extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@"
cmake --build "$build_dir" -j"$(nproc)"
echo "setup: built $build_dir/ferry"
