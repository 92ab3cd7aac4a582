#!/bin/sh
# run.sh - runs every test suite and ends with one line "N passed, N failed" over all
# of them. Exits non-zero when anything failed or a suite could not run.
cd "$(dirname "$0")/.." || exit 1
mkdir -p build
passed=0
failed=0

# add_counts SUITE PASSED FAILED: adds a suite's counts; empty ones mean it never finished.
add_counts() {
  if [ -z "$2" ] || [ -z "$3" ]; then
    echo "$1: no summary line; it did not run to the end" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + $2))
    failed=$((failed + $3))
  fi
}

# doctest closes with "[doctest] test cases: T | P passed | F failed | S skipped".
for program in unit_tests allocation_tests; do
  build/$program --no-intro=true 2>&1 | tee build/$program.log
  line=$(grep '^\[doctest\] test cases:' build/$program.log | tail -n 1)
  add_counts $program "$(echo "$line" | sed -nE 's/.*\| *([0-9]+) passed.*/\1/p')" \
    "$(echo "$line" | sed -nE 's/.*\| *([0-9]+) failed.*/\1/p')"
done

# The Python suites close with "NAME: P passed, F failed". build/suite-times.log keeps
# how long each took, to find where the minutes of make test go.
: >build/suite-times.log
for suite in tests/blackbox.py tests/statsd_clients.py tests/statsd_tcp.py tests/state.py tests/openmetrics.py tests/pushgateway.py tests/pushgateway_diff.py tests/push_clients.py tests/hostile.py tests/shipping.py tests/e2e_prometheus.py tests/remote_write.py tests/operating.py tests/pressure.py tests/tls.py tests/mapping.py tests/docs.py tests/tooling.py; do
  started=$(date +%s)
  python3 "$suite" ./hermes 2>&1 | tee build/suite.log
  echo "$suite took $(($(date +%s) - started)) s" >>build/suite-times.log
  line=$(grep -E '^[a-z0-9_-]+: [0-9]+ passed, [0-9]+ failed$' build/suite.log | tail -n 1)
  add_counts "$suite" "$(echo "$line" | sed -nE 's/.*: ([0-9]+) passed.*/\1/p')" \
    "$(echo "$line" | sed -nE 's/.* ([0-9]+) failed$/\1/p')"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
