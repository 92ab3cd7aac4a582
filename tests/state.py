#!/usr/bin/env python3
"""Black-box tests of the state file and of time: the built hermes is stopped with
SIGTERM or killed with SIGKILL and started again on the same file; a file that is not
state, a path it cannot write and a changed config; and a run under a stepped wall
clock (Debian's faketime, installed when missing) with the monotonic clock untouched.

usage: state.py PATH_TO_HERMES
Ends with the line "state: N passed, N failed".
"""
import glob
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blackbox import HERMES, ROOT, Hermes, check_equal  # noqa: E402  (blackbox reads sys.argv the same way)

TESTS = []

EVERY_TYPE = {
    "service_name": "state-service",
    "counters": [{"metric_name": "jobs_total", "metric_description": "jobs", "labels": ["queue"]},
                 {"metric_name": "plain_total"}],
    "gauges": [{"metric_name": "temperature", "labels": ["room"], "ttl_seconds": 3600},
               {"metric_name": "level"}],
    "histograms": [{"metric_name": "latency_seconds", "labels": ["route"], "buckets": [0.1, 1, 10]}],
    "summaries": [{"metric_name": "size_bytes", "labels": ["route"], "objectives": {"0.5": 0.05, "0.9": 0.01}},
                  {"metric_name": "plain_summary"}],
}

AWKWARD = ['quote " here', "back\\slash", "new\nline", "\U0001F600 emoji", ""]


def sample(metric, labels=None, **payload):
    body = dict(payload)
    if labels is not None:
        body["labels"] = labels
    return json.dumps({"metric_name": metric, "payload": body})


def every_type_datagrams():
    sent = []
    for value in AWKWARD:
        sent.append(sample("jobs_total", {"queue": value}, value=2.5))
        sent.append(sample("temperature", {"room": value}, value=-0.0))
        for observation in (0.05, 0.5, 5, 50):
            sent.append(sample("latency_seconds", {"route": value}, observation=observation))
        for observation in range(1, 101):
            sent.append(sample("size_bytes", {"route": value}, observation=observation))
    sent.append(sample("jobs_total", {"queue": "max"}, value=1.7976931348623157e308))
    sent.append(sample("jobs_total", {"queue": "max"}, value=1.7976931348623157e308))  # +Inf
    sent.append(sample("temperature", {"room": "tiny"}, value=5e-324))
    sent.append(sample("plain_total", value=41))
    sent.append(sample("level", value=1.7976931348623157e308))
    sent.append(sample("plain_summary", observation=1.7976931348623157e308))
    sent.append(sample("plain_summary", observation=1.7976931348623157e308))  # a sum of +Inf
    return sent


def user_series(body):
    """The lines of the user's families, without Hermes' own and the process'."""
    kept = []
    for line in body.splitlines():
        name = line[7:] if line.startswith(("# HELP ", "# TYPE ")) else line
        if not name.startswith(("hermes_", "process_")):
            kept.append(line)
    return kept


def scrape_openmetrics(hermes):
    response = hermes.request("GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    return response.partition("\r\n\r\n")[2]


def both_formats(hermes):
    return user_series(hermes.scrape()), user_series(scrape_openmetrics(hermes))


class StateDir:
    """A temporary directory for a state file, removed with all it holds."""

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="hermes-state-")
        self.file = os.path.join(self.path, "state.json")
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def start(config, state_file, interval="0.2", **kwargs):
    env = {"HERMES_STATE_FILE": state_file, "HERMES_STATE_INTERVAL": interval}
    env.update(kwargs.pop("env", {}))
    return Hermes(config, env=env, **kwargs)


def wait_for_line(hermes, pattern, seconds=5):
    """Reads the log until a line matches; returns the match."""
    deadline = time.monotonic() + seconds
    for line in hermes.log:
        if re.search(pattern, line):
            return re.search(pattern, line)
    while time.monotonic() < deadline:
        line = hermes.read_log_line()
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no log line matching {pattern!r} in {hermes.log!r}")


def read_text(path):
    with open(path) as file:
        return file.read()


def test(function):
    TESTS.append(function)
    return function


# ---- tests ----------------------------------------------------------------------------------

@test
def sigterm_then_start_again_shows_every_series_identical():
    with StateDir() as state:
        first = start(EVERY_TYPE, state.file, interval="3600")  # only the stop writes
        try:
            first.push_paced(every_type_datagrams())
            before = both_formats(first)
            check_equal(first.stop()[0], 0, "exit code")
            assert any('msg="hermes stopped"' in line for line in first.log), first.log
        finally:
            first.close()
        assert os.path.exists(state.file), "SIGTERM writes the state"
        again = start(EVERY_TYPE, state.file)
        try:
            match = wait_for_line(again, r'msg="state restored" path=\S+ series=(\d+) skipped=0')
            after = both_formats(again)
            check_equal(after[0], before[0], "text format")
            check_equal(after[1], before[1], "OpenMetrics, _created included")
            restored = int(match.group(1))
            check_equal(again.metric("hermes_state_restored_series"), float(restored), "restored series")
            check_equal(restored, 5 * 4 + 2 + 3, "series: jobs, temperature, latency, size per label; 2 more; 3 label-less")
            assert 'jobs_total{queue="max"} +Inf' in after[0], after[0]
            assert 'plain_summary_sum +Inf' in after[0], after[0]
        finally:
            again.close()


@test
def samples_queued_at_sigterm_are_written():
    with StateDir() as state:
        hermes = start(EVERY_TYPE, state.file, interval="3600")
        try:
            hermes.push(sample("plain_total", value=1))
            hermes.process.send_signal(signal.SIGSTOP)  # the next datagrams wait on the socket
            import socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(500):
                    sock.sendto(sample("plain_total", value=1).encode(), (hermes.udp_host, hermes.udp_port))
            hermes.process.send_signal(signal.SIGTERM)
            hermes.process.send_signal(signal.SIGCONT)
            check_equal(hermes.process.wait(timeout=5), 0, "exit code")
        finally:
            hermes.close()
        with open(state.file) as file:
            saved = json.load(file)
        plain = [m for m in saved["metrics"] if m["name"] == "plain_total"][0]
        check_equal(plain["series"][0]["value"], 501, "every queued sample applied before the write")


@test
def kill_9_two_intervals_after_the_last_push_loses_nothing():
    with StateDir() as state:
        first = start(EVERY_TYPE, state.file, interval="0.3")
        try:
            first.push_paced(every_type_datagrams())
            before = both_formats(first)
            pushed = time.time()
            first.wait_for('hermes_state_writes_total{result="success"}', 1)
            time.sleep(max(0.0, pushed + 0.6 - time.time()))
            first.stop(signal.SIGKILL)
        finally:
            first.close()
        again = start(EVERY_TYPE, state.file)
        try:
            wait_for_line(again, r'msg="state restored"')
            check_equal(both_formats(again), before, "series after kill -9")
        finally:
            again.close()


@test
def state_is_written_only_after_a_change_and_sighup_leaves_it():
    with StateDir() as state:
        hermes = start(EVERY_TYPE, state.file, interval="0.1")
        try:
            hermes.push(sample("plain_total", value=1))
            hermes.wait_for('hermes_state_writes_total{result="success"}', 1)
            written = os.stat(state.file)
            stamp = hermes.metric("hermes_state_last_write_timestamp_seconds")
            assert abs(stamp - time.time()) < 5, stamp
            hermes.process.send_signal(signal.SIGHUP)
            wait_for_line(hermes, r'msg="config reloaded"')
            time.sleep(0.5)  # five intervals
            check_equal(hermes.metric('hermes_state_writes_total{result="success"}'), 1, "writes")
            check_equal(os.stat(state.file).st_mtime_ns, written.st_mtime_ns, "file untouched")
            check_equal(sorted(os.listdir(os.path.dirname(state.file))), ["state.json"], "files")
        finally:
            hermes.close()


@test
def a_file_that_is_not_state_is_set_aside_and_hermes_starts_empty():
    cases = {"garbage": b"garbage\x00\xff", "truncated": None, "other program": b'{"groups": [{"name": "x"}]}\n',
             "newer format": b'{"format": "hermes-state", "version": 3, "metrics": []}\n', "empty": b""}
    for case, content in cases.items():
        with StateDir() as state:
            if content is None:  # a real state file, cut in the middle
                first = start(EVERY_TYPE, state.file, interval="3600")
                try:
                    first.push_paced(every_type_datagrams()[:50])
                    first.stop()
                finally:
                    first.close()
                with open(state.file, "rb") as file:
                    content = file.read()[:-100]
            with open(state.file, "wb") as file:
                file.write(content)
            hermes = start(EVERY_TYPE, state.file)
            try:
                match = wait_for_line(hermes, r'level=error msg="state file is not state; set aside, starting empty" '
                                              r'path=(\S+) error=.* moved_to=(\S+)$')
                check_equal(match.group(1), state.file, case)
                aside = match.group(2)
                assert aside.startswith(state.file + ".corrupt-"), aside
                with open(aside, "rb") as file:
                    check_equal(file.read(), content, f"{case}: the file kept as it was")
                assert not os.path.exists(state.file), case
                check_equal(hermes.metric("hermes_state_restored_series"), 0, case)
                check_equal(hermes.metric("plain_total"), 0, case)
                hermes.push(sample("plain_total", value=7))
                hermes.wait_for('hermes_state_writes_total{result="success"}', 1)
                check_equal(sorted(os.listdir(state.path)), sorted(["state.json", os.path.basename(aside)]), case)
            finally:
                hermes.close()


@test
def a_version_1_file_restores_its_summaries_and_is_written_again_as_version_2():
    """Version 1 kept a buffer in each of a window's five streams; each stream merges its
    own, so the quantiles are those of a Hermes that took the same observations."""
    stream = {"entries": [], "buffer": list(range(1, 101))}
    window = {"head": 0, "turns_in": 120, "streams": [stream] * 5}
    series = {"labels": ["/"], "sum": 5050, "count": 100, "window": window, "created": 1764000000, "pushed_ago": 0}
    shape = {"name": "size_bytes", "type": "summary", "labels": ["route"], "objectives": [[0.5, 0.05], [0.9, 0.01]],
             "max_age_seconds": 600, "series": [series]}
    with StateDir() as state:
        with open(state.file, "w") as file:
            json.dump({"format": "hermes-state", "version": 1, "written_at": 1764000000, "service_name": "s",
                       "metrics": [shape]}, file)
        fed = Hermes(EVERY_TYPE)
        try:
            fed.push_paced([sample("size_bytes", {"route": "/"}, observation=n) for n in range(1, 101)])
            expected = [line for line in user_series(fed.scrape()) if line.startswith("size_bytes{")]
        finally:
            fed.close()
        hermes = start(EVERY_TYPE, state.file)
        try:
            wait_for_line(hermes, r'msg="state restored" path=\S+ series=1 skipped=0')
            restored = [line for line in user_series(hermes.scrape()) if line.startswith("size_bytes{")]
            check_equal(restored, expected, "quantiles")
            check_equal(restored[0], 'size_bytes{route="/",quantile="0.5"} 49', "median")
            hermes.push(sample("plain_total", value=1))  # a change: the next interval writes the file
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and '"version": 2' not in read_text(state.file):
                time.sleep(0.05)
            written = json.loads(read_text(state.file))
            check_equal(written["version"], 2, "written again")
            size_bytes = next(m for m in written["metrics"] if m["name"] == "size_bytes")
            check_equal(size_bytes["series"][0]["window"]["buffer"], [], "one buffer, merged")
        finally:
            hermes.close()


@test
def an_unwritable_path_is_counted_and_logged_once_per_interval_while_serving_goes_on():
    with StateDir() as state:
        path = os.path.join(state.path, "missing", "state.json")
        hermes = start(EVERY_TYPE, path, interval="0.2")
        try:
            started = time.monotonic()
            hermes.push(sample("plain_total", value=1))
            hermes.wait_for('hermes_state_writes_total{result="failure"}', 3, seconds=5)
            hermes.push(sample("plain_total", value=1))
            check_equal(hermes.metric("plain_total"), 2, "serving goes on")
            failures = hermes.metric('hermes_state_writes_total{result="failure"}')
            elapsed = time.monotonic() - started
            hermes.stop()
            lines = [line for line in hermes.log if "state write failed" in line]
            assert len(lines) <= elapsed / 0.2 + 2, (len(lines), elapsed)
            assert len(lines) >= failures, (lines, failures)
            assert f"create {path}.XXXXXX: No such file or directory" in lines[0], lines[0]
        finally:
            hermes.close()


@test
def a_path_under_a_regular_file_has_no_state_yet_and_hermes_serves_on():
    with StateDir() as state:
        parent = os.path.join(state.path, "hermes")  # /var/lib/hermes as a file
        with open(parent, "w") as file:
            file.write("not a directory\n")
        path = os.path.join(parent, "state.json")
        hermes = start(EVERY_TYPE, path, interval="0.2")
        try:
            match = wait_for_line(hermes, r'level=warn msg="no state file yet; starting empty" path=(\S+) error="(.*)"$')
            check_equal(match.groups(), (path, "stat: Not a directory"), "the start-up line")
            check_equal(hermes.metric("hermes_state_restored_series"), 0, "restored")
            hermes.push(sample("plain_total", value=1))
            hermes.wait_for('hermes_state_writes_total{result="failure"}', 2, seconds=5)
            hermes.push(sample("plain_total", value=1))
            check_equal(hermes.metric("plain_total"), 2, "serving goes on")
            check_equal(hermes.metric('hermes_state_writes_total{result="success"}'), 0, "successes")
            check_equal(hermes.stop()[0], 0, "exit code")  # the last write fails too; the stop is still clean
            lines = [line for line in hermes.log if "state write failed" in line]
            assert lines and all(f'error="create {path}.XXXXXX: Not a directory"' in line for line in lines), lines
            assert not any("aside" in line for line in hermes.log), hermes.log
            check_equal(sorted(os.listdir(state.path)), ["hermes"], "files")
            with open(parent) as file:
                check_equal(file.read(), "not a directory\n", "the file in the way")
        finally:
            hermes.close()


def limit_file_size():
    """A disk that is full: writes past 4 KiB fail with EFBIG instead of killing hermes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@test
def a_write_that_fails_for_a_full_disk_leaves_the_previous_file_whole():
    with StateDir() as state:
        hermes = start(EVERY_TYPE, state.file, interval="0.1", preexec_fn=limit_file_size)
        try:
            hermes.push(sample("plain_total", value=1))
            hermes.wait_for('hermes_state_writes_total{result="success"}', 1)
            with open(state.file, "rb") as file:
                previous = file.read()
            hermes.push_paced(every_type_datagrams())  # the next state is larger than 4 KiB
            hermes.wait_for('hermes_state_writes_total{result="failure"}', 1)
            with open(state.file, "rb") as file:
                check_equal(file.read(), previous, "the previous file")
            check_equal(sorted(os.listdir(state.path)), ["state.json"], "no temporary file left")
            line = wait_for_line(hermes, r'msg="state write failed.*error="(write|fsync) \S+: File too large"')
            assert line, hermes.log
        finally:
            hermes.close()


@test
def a_changed_config_restores_what_still_fits_and_names_the_rest_once():
    with StateDir() as state:
        first = start(EVERY_TYPE, state.file, interval="3600")
        try:
            first.push_paced(every_type_datagrams())
            before = user_series(first.scrape())
            first.stop()
        finally:
            first.close()
        changed = json.loads(json.dumps(EVERY_TYPE))
        changed["counters"][0]["labels"] = ["queue", "host"]          # jobs_total: labels changed
        changed["gauges"] = [changed["gauges"][0]]                     # level: removed
        changed["histograms"][0]["buckets"] = [0.1, 1, 5]              # latency_seconds: buckets changed
        changed["summaries"][0]["metric_description"] = "new help"     # size_bytes: same shape
        again = start(changed, state.file)
        try:
            match = wait_for_line(again, r'msg="state restored" path=\S+ series=(\d+) skipped=(\d+)')
            check_equal((int(match.group(1)), int(match.group(2))), (5 + 1 + 5 + 2, 6 + 1 + 5), "restored, skipped")
            warnings = sorted(line.strip() for line in again.log if 'msg="state not restored"' in line)
            check_equal(warnings, sorted([
                f'level=warn msg="state not restored" path={state.file} metric="{text}"' for text in (
                    "jobs_total: type, labels, buckets or objectives changed, 6 series not restored",
                    "latency_seconds: type, labels, buckets or objectives changed, 5 series not restored",
                    "level: no longer configured, 1 series not restored")]), "one line each")
            after = user_series(again.scrape())
            for line in before:
                if line.startswith(("temperature", "plain_total", "size_bytes{", "size_bytes_sum", "plain_summary")):
                    assert line in after, line
            assert not any(line.startswith("jobs_total{") for line in after), after
        finally:
            again.close()


SLOW_FSYNC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>
/* fsync as an SD card may do it: 1.5 s each. */
int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  usleep(1500000);
  return real(fd);
}
"""


@test
def a_slow_fsync_stalls_neither_ingest_nor_scrapes():
    with StateDir() as state:
        source, shim = os.path.join(state.path, "slow_fsync.c"), os.path.join(state.path, "slow_fsync.so")
        with open(source, "w") as file:
            file.write(SLOW_FSYNC)
        subprocess.run([os.environ.get("CC", "gcc"), "-shared", "-fPIC", "-o", shim, source, "-ldl"], check=True)
        hermes = start(EVERY_TYPE, os.path.join(state.path, "state.json"), interval="0.2", env={"LD_PRELOAD": shim})
        try:
            import socket
            started = time.monotonic()
            sent, slowest = 0, 0.0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                while time.monotonic() < started + 4:  # 20k datagrams a second, each a change
                    for _ in range(200):
                        sock.sendto(sample("plain_total", value=1).encode(), (hermes.udp_host, hermes.udp_port))
                    sent += 200
                    if sent % 4000 == 0:
                        before = time.monotonic()
                        hermes.scrape()
                        slowest = max(slowest, time.monotonic() - before)
                    time.sleep(max(0.0, started + sent / 20000 - time.monotonic()))
            hermes.wait_for("plain_total", sent, seconds=5)
            check_equal(hermes.metric("hermes_udp_receive_drops_total"), 0, "datagrams the kernel dropped")
            writes = hermes.metric('hermes_state_writes_total{result="success"}')
            assert 1 <= writes <= 2, f"{writes} writes in 4 s: each takes 3 s of fsync"  # the shim took effect
            assert slowest < 0.5, f"a scrape took {slowest:.2f} s during a write"
        finally:
            hermes.close()


# ---- a stepped wall clock -------------------------------------------------------------------

def faketime_library():
    """libfaketime, installed with Debian's faketime package when missing."""
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        subprocess.run([os.path.join(ROOT, "tests", "ensure.sh"), "command:faketime:faketime"], check=True)
        found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert found, "libfaketime.so.1 not found after installing faketime"
    return found[0]


class SteppedClock:
    """The wall clock of a process under libfaketime, stepped through a timestamp file
    read at every call; its monotonic clock stays the real one."""

    def __init__(self, directory):
        self.file = os.path.join(directory, "faketime")
        self.set("+0")
        self.env = {"LD_PRELOAD": faketime_library(), "FAKETIME_TIMESTAMP_FILE": self.file, "FAKETIME_NO_CACHE": "1",
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1"}

    def set(self, offset):
        with open(self.file, "w") as file:
            file.write(offset + "\n")


def created(hermes, series):
    for line in scrape_openmetrics(hermes).splitlines():
        if line.startswith(series + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"no {series}")


TWO_DAYS = 2 * 86400
TTL_CONFIG = {"service_name": "time", "counters": [{"metric_name": "pushes_total", "labels": ["step"]}],
              "gauges": [{"metric_name": "minute", "labels": ["w"], "ttl_seconds": 60},
                         {"metric_name": "short", "labels": ["w"], "ttl_seconds": 3}]}


@test
def under_a_stepped_wall_clock_ttl_counts_on_the_monotonic_clock():
    with StateDir() as state:
        clock = SteppedClock(state.path)
        hermes = Hermes(TTL_CONFIG, env=clock.env)
        try:
            hermes.push(sample("minute", {"w": "a"}, value=1), sample("pushes_total", {"step": "none"}))
            before = created(hermes, 'pushes_created{step="none"}')
            assert abs(before - time.time()) < 5, before
            clock.set(f"+{TWO_DAYS}")  # the first NTP sync of a board that booted in the past
            hermes.push(sample("pushes_total", {"step": "forward"}))
            forward = created(hermes, 'pushes_created{step="forward"}')
            assert abs(forward - before - TWO_DAYS) < 5, (forward, before)  # the step took effect
            time.sleep(2.2)  # two sweeps
            check_equal(hermes.metric('minute{w="a"}'), 1, "ttl 60 s after a two-day step forward")
            check_equal(hermes.metric("hermes_series_expired_total"), 0, "expired")

            clock.set("+0")
            hermes.push(sample("short", {"w": "b"}, value=2))
            pushed = time.monotonic()
            clock.set(f"-{TWO_DAYS}")  # and two days back
            hermes.push(sample("pushes_total", {"step": "back"}))
            back = created(hermes, 'pushes_created{step="back"}')
            assert abs(time.time() - TWO_DAYS - back) < 5, back
            while time.monotonic() < pushed + 2.5:
                check_equal(hermes.metric('short{w="b"}'), 2, "before its 3 s")
                time.sleep(0.1)
            while hermes.metric('short{w="b"}') is not None:
                assert time.monotonic() < pushed + 4.5, "still there 4.5 s after its last push"
                time.sleep(0.05)
            gone = time.monotonic() - pushed
            assert 2.9 <= gone <= 4.5, gone
            check_equal(hermes.metric('minute{w="a"}'), 1, "ttl 60 s after the step back")
        finally:
            hermes.close()


def run_suite(name, tests):
    if not os.access(HERMES, os.X_OK):
        print(f"{name}: {HERMES} is not an executable; build it first", file=sys.stderr)
        print(f"{name}: 0 passed, 1 failed")
        return 1
    passed = failed = 0
    for function in tests:
        try:
            function()
            passed += 1
            print(f"ok   {function.__name__}")
        except Exception:  # a failed assertion or a crash both count as a failure
            failed += 1
            print(f"FAIL {function.__name__}\n{traceback.format_exc()}")
    print(f"{name}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_suite("state", TESTS))
