#!/usr/bin/env bash
# Installs every build and test dependency of ferry from Debian 12 packages.
# The CUDA toolkit and NCCL are optional and are not Debian packages: when /usr/local/cuda (or nvcc on PATH)
# is present the build picks them up, otherwise ferry builds CPU-only.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git python3
  libopenmpi-dev openmpi-bin       # transport: MPI ranks across nodes
  libtbb-dev                       # CPU parallelism (oneTBB)
  libhwloc-dev                     # topology: RAM, NUMA nodes, cores
  nlohmann-json3-dev               # JSON: config.json, safetensors headers, plans
  libcli11-dev                     # command-line parsing
  libfmt-dev libspdlog-dev         # formatting and logging
  libgtest-dev libgmock-dev        # tests
  libpcre2-dev                     # the tokenizer's pre-tokenizer regexes (UTF + Unicode properties)
  libcpp-httplib-dev               # `ferry serve`: the HTTP server
  zlib1g-dev                       # CRC-32 of saved KV sessions
  clang-14 libclang-rt-14-dev      # the libFuzzer target (tests/fuzz): clang with its fuzzer and sanitizer runtimes
)

missing=()
# Node.js and npm run the JavaScript peers the tests compare against (scripts/fetch-test-assets.sh); a Node.js
# already installed (e.g. from NodeSource) is kept.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
