#!/usr/bin/env bash
# run_cli.sh EXIT PATTERN COMMAND...
#   EXIT: the exit status COMMAND must return ("nonzero" for any failure).
#   On failure statuses, stderr must be exactly one line matching PATTERN (an extended regex);
#   on status 0 or 3 (`ferry plan`: does not fit), stdout must match PATTERN.
set -u
expect_exit=$1 pattern=$2
shift 2
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
"$@" >"$out" 2>"$err"
status=$?
fail() { echo "FAIL: $*"; echo "--- command: $*"; echo "--- stdout:"; head -40 "$out"; echo "--- stderr:"; cat "$err"; exit 1; }
if [ "$expect_exit" = nonzero ]; then
  [ "$status" -ne 0 ] || fail "expected a non-zero exit, got 0"
else
  [ "$status" -eq "$expect_exit" ] || fail "expected exit $expect_exit, got $status"
fi
if [ "$status" -eq 0 ] || [ "$status" -eq 3 ]; then
  grep -Eq -- "$pattern" "$out" || fail "stdout does not match /$pattern/"
else
  lines=$(wc -l <"$err")
  [ "$lines" -eq 1 ] || fail "expected one line on stderr, got $lines"
  grep -Eq -- "$pattern" "$err" || fail "stderr does not match /$pattern/"
fi
echo "ok: exit $status"
