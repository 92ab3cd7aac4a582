#!/usr/bin/env python3
"""The tools around the build: tests/ensure.sh waits for another apt's lock, and
`make help` names every target.

ensure.sh runs here against a fake apt-get and a fake id (root) placed first on PATH,
so nothing is installed and no real lock is needed.

usage: tooling.py PATH_TO_HERMES   (the path is not used; every suite takes it)
Ends with the line "tooling: N passed, N failed".
"""
import os
import re
import stat
import subprocess
import tempfile

from blackbox import ROOT, check_equal
from state import run_suite

TESTS = []
ENSURE = os.path.join(ROOT, "tests", "ensure.sh")
LOCKED = "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)"


def test(function):
    TESTS.append(function)
    return function


def fake_apt(folder, locked_calls, other_failure=""):
    """A PATH whose apt-get fails with the lock message for its first `locked_calls`
    calls (or always with `other_failure`), then logs its arguments and succeeds; and
    whose id says root."""
    scripts = {
        "apt-get": f"""#!/bin/sh
calls=$(cat "{folder}/calls" 2>/dev/null || echo 0); echo $((calls + 1)) > "{folder}/calls"
if [ -n "{other_failure}" ]; then echo "{other_failure}"; exit 100; fi
if [ "$calls" -lt {locked_calls} ]; then echo "{LOCKED}"; exit 100; fi
echo "apt-get $*" >> "{folder}/log"
""",
        "id": "#!/bin/sh\necho 0\n",
    }
    for name, text in scripts.items():
        path = os.path.join(folder, name)
        with open(path, "w") as file:
            file.write(text)
        os.chmod(path, stat.S_IRWXU)
    return dict(os.environ, PATH=folder + ":" + os.environ["PATH"])


def ensure(env, limit):
    return subprocess.run([ENSURE, "command:hermes-no-such-command:hermes-no-such-package"],
                          env=dict(env, HERMES_APT_LOCK_WAIT=str(limit)), capture_output=True, text=True, timeout=60)


def log(folder):
    with open(os.path.join(folder, "log")) as file:
        return file.read().splitlines()


@test
def ensure_waits_for_another_apts_lock_saying_so_once_then_installs():
    with tempfile.TemporaryDirectory(prefix="hermes-tooling-") as folder:
        result = ensure(fake_apt(folder, locked_calls=2), limit=60)
        check_equal(result.returncode, 0, f"exit code; it said {result.stderr!r}")
        check_equal(result.stderr.splitlines(), [
            "hermes: installing hermes-no-such-package",
            "hermes: another apt or dpkg holds its lock; waiting up to 60 s",
        ], "what ensure.sh said")
        check_equal(log(folder), ["apt-get update -qq", "apt-get install -y -qq hermes-no-such-package"], "apt-get runs")


@test
def ensure_gives_up_when_the_lock_outlasts_its_wait():
    with tempfile.TemporaryDirectory(prefix="hermes-tooling-") as folder:
        result = ensure(fake_apt(folder, locked_calls=1000), limit=5)
        check_equal(result.returncode, 1, "exit code")
        check_equal(result.stderr.splitlines(), [
            "hermes: installing hermes-no-such-package",
            "hermes: another apt or dpkg holds its lock; waiting up to 5 s",
            LOCKED,
            "hermes: another apt or dpkg still holds its lock after 5 s",
            "hermes: apt-get install hermes-no-such-package failed",
        ], "what ensure.sh said")


@test
def ensure_stops_at_once_on_a_failure_that_is_not_the_lock():
    with tempfile.TemporaryDirectory(prefix="hermes-tooling-") as folder:
        result = ensure(fake_apt(folder, locked_calls=0, other_failure="E: Unable to locate package x"), limit=60)
        check_equal(result.returncode, 1, "exit code")
        check_equal(result.stderr.splitlines(), [
            "hermes: installing hermes-no-such-package",
            "E: Unable to locate package x",
            "hermes: apt-get install hermes-no-such-package failed",
        ], "what ensure.sh said")


@test
def make_help_names_every_target_of_the_makefile_once():
    with open(os.path.join(ROOT, "Makefile")) as file:
        text = file.read().replace("\\\n", " ")
    phony = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE).group(1).split()
    result = subprocess.run(["make", "--no-print-directory", "-C", ROOT, "help"], capture_output=True, text=True,
                            timeout=30)
    check_equal(result.returncode, 0, "make help's exit code")
    named = set()
    for line in result.stdout.splitlines():
        if line.startswith("make"):  # "make TARGET[, TARGET...]  what it does"
            named.update(word.strip() for word in line.split("  ")[0][len("make"):].split(",") if word.strip())
    missing = [target for target in phony if target not in named and target != "all"]
    check_equal(missing, [], "targets make help leaves out")


if __name__ == "__main__":
    raise SystemExit(run_suite("tooling", TESTS))
