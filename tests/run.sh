#!/bin/sh
# run.sh - runs every test suite and ends with one line "N passed, N failed" over all
# of them. Exits non-zero when anything failed or a suite could not run.
cd "$(dirname "$0")/.." || exit 1
passed=0
failed=0

# doctest: its summary line reads "[doctest] test cases: T | P passed | F failed | ...".
build/unit_tests --no-intro=true 2>&1 | tee build/unit_tests.log
line=$(grep '^\[doctest\] test cases:' build/unit_tests.log | tail -n 1)
if [ -z "$line" ]; then
  echo "unit tests: no summary line; they did not run to the end" >&2
  failed=$((failed + 1))
else
  passed=$((passed + $(echo "$line" | sed -E 's/.*\| *([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$line" | sed -E 's/.*\| *([0-9]+) failed.*/\1/')))
fi

# Python suites print "suite: N passed, N failed" as their last line.
for suite in tests/blackbox.py; do
  python3 "$suite" ./hermes 2>&1 | tee build/suite.log
  line=$(grep -E '^[a-z_-]+: [0-9]+ passed, [0-9]+ failed$' build/suite.log | tail -n 1)
  if [ -z "$line" ]; then
    echo "$suite: no summary line; it did not run to the end" >&2
    failed=$((failed + 1))
  else
    passed=$((passed + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')))
    failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')))
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
