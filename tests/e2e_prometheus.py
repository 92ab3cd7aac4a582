#!/usr/bin/env python3
"""End-to-end: a real Prometheus scrapes a real hermes every second.

Runs twice, once with OpenMetrics on (Prometheus asks for it first) and once with
HERMES_OPENMETRICS=off, pushes the same datagrams each time, reads back through
Prometheus' HTTP API what it stored, and compares both runs. A third, short run
guards /metrics with HERMES_HTTP_TOKEN_FILE: Prometheus scrapes through it with
authorization.credentials_file, and a job without the token is refused.

usage: e2e_prometheus.py PATH_TO_HERMES
Ends with the line "e2e_prometheus: N passed, N failed".
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request

HERMES = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./hermes")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = {
    "service_name": "e2e-service",
    "gauges": [{"metric_name": "sample_gauge", "metric_description": "gauges are awesome", "labels": ["label_1", "label_2"]},
               {"metric_name": "edge_values", "metric_description": "numbers at the edges", "labels": ["case"]}],
    "counters": [{"metric_name": "sample_counter", "metric_description": "counters are awesome too", "labels": ["label_1"]},
                 {"metric_name": "jobs_total", "metric_description": "jobs \"done\"\nper queue", "labels": ["queue"]},
                 {"metric_name": "plain_total", "metric_description": "no labels"}],
}

TRICKY = ['quote " here', "back\\slash", "new\nline", "tab\there", "\u00fcn\u00efc\u00f8d\u00e9 \u2713 \U0001F600", ""]
EDGES = {"max": 1.7976931348623157e308, "min_subnormal": 5e-324, "tiny": 1e-300, "big_int": 123456789012345678.0,
         "negative_small": -2.5e-7, "negative_zero": -0.0, "third": 1 / 3}


def dumps(sample):
    """As the original Python client sends: json.dumps with its default separators."""
    return json.dumps(sample)


def datagrams():
    """(datagram, accepted samples, rejected samples) in the order they are sent."""
    sent = []
    for value in TRICKY:
        sent.append(dumps({"metric_name": "jobs_total", "payload": {"labels": {"queue": value}}}))
        sent.append(dumps({"metric_name": "jobs_total", "payload": {"labels": {"queue": value}, "value": 2.5}}))
    for case, value in EDGES.items():
        sent.append(dumps({"metric_name": "edge_values", "payload": {"labels": {"case": case}, "value": value}}))
    gauge = {"label_1": "worker", "label_2": "busy"}
    sent.append(dumps({"metric_name": "sample_gauge", "payload": {"operation": "set", "labels": gauge, "value": 10.0}}))
    for operation in ("increment", "increment", "increment", "decrement"):
        sent.append(dumps({"metric_name": "sample_gauge", "payload": {"operation": operation, "labels": gauge, "value": None}}))
    sent.append(dumps({"metric_name": "sample_gauge", "payload": {"operation": "decrement", "labels": gauge, "value": 0.25}}))
    sent.append('{"metric_name":"plain_total","payload":{"labels":null}}')
    sent.append('[{"metric_name":"plain_total","payload":{"value":41}},{"metric_name":"nope"},{"metric_name":"plain_total","payload":{"value":-1}}]')
    sent.append("{broken")
    return sent


def expected_series():
    """What Prometheus must store for the configured metrics, by (name, labels)."""
    series = {}
    for value in TRICKY:  # to Prometheus an empty label value is no label at all
        series[("jobs_total", (("queue", value),) if value else ())] = 3.5
    for case, value in EDGES.items():
        series[("edge_values", (("case", case),))] = value
    series[("sample_gauge", (("label_1", "worker"), ("label_2", "busy")))] = 11.75
    series[("sample_gauge", (("label_1", "testing label 1"), ("label_2", "testing label 2")))] = 67.4
    series[("sample_counter", (("label_1", "testing label 1"),))] = 1
    series[("plain_total", ())] = 42
    return series


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Stack:
    """hermes and a Prometheus that scrapes it, in a temporary folder."""

    def __init__(self, openmetrics, token=None):
        self.folder = tempfile.mkdtemp(prefix="hermes-e2e-")
        self.processes = []
        config_path = os.path.join(self.folder, "hermes.json")
        with open(config_path, "w") as file:
            json.dump(CONFIG, file)
        env = dict(os.environ, HERMES_UDP_ADDRESS="127.0.0.1", HERMES_UDP_PORT="0", HERMES_HTTP_ADDRESS="127.0.0.1",
                   HERMES_HTTP_PORT="0", HERMES_OPENMETRICS="on" if openmetrics else "off")
        token_path = os.path.join(self.folder, "token")
        if token:
            with open(token_path, "w") as file:
                file.write(token + "\n")
            env["HERMES_HTTP_TOKEN_FILE"] = token_path
        hermes = subprocess.Popen([HERMES, config_path], env=env, stderr=subprocess.PIPE, text=True)
        self.processes.append(hermes)
        line = hermes.stderr.readline()
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        self.udp_port = int(fields["udp"].rsplit(":", 1)[1])
        self.hermes_http = fields["http"]
        self.prometheus = f"127.0.0.1:{free_port()}"
        with open(os.path.join(self.folder, "prometheus.yml"), "w") as file:
            file.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                       "scrape_configs:\n  - job_name: hermes\n    static_configs:\n"
                       f"      - targets: ['{self.hermes_http}']\n")
            if token:
                file.write(f"    authorization:\n      credentials_file: {token_path}\n"
                           "  - job_name: hermes_without_token\n    static_configs:\n"
                           f"      - targets: ['{self.hermes_http}']\n")
        self.processes.append(subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(self.folder, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.folder, "data"), "--web.listen-address=" + self.prometheus,
             "--log.level=error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.wait(lambda: self.ready(), "Prometheus to start")

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.prometheus}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def push(self, sent):
        subprocess.run([sys.executable, os.path.join(ROOT, "example", "send_metric.py"), "127.0.0.1", str(self.udp_port)],
                       check=True, capture_output=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in sent:
                sock.sendto(datagram.encode("utf-8"), ("127.0.0.1", self.udp_port))
                time.sleep(0.001)  # loopback is lossless, but a burst can still overrun the socket buffer

    def query(self, promql):
        url = f"http://{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = get_json(url)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stored(self):
        """Every series of job hermes, as {(name, labels): value}."""
        series = {}
        for result in self.query('{job="hermes"}'):
            labels = dict(result["metric"])
            name = labels.pop("__name__")
            labels.pop("job"), labels.pop("instance")
            series[(name, tuple(sorted(labels.items())))] = float(result["value"][1])
        return series

    def wait(self, condition, what, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.processes and self.processes[0].stderr:
            self.processes[0].stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def run(openmetrics):
    """Pushes, waits until Prometheus has it all, checks, and returns what it stored."""
    stack = Stack(openmetrics)
    try:
        sent = datagrams()
        stack.push(sent)
        total_sent = len(sent) + 2  # and send_metric.py's two
        expected = expected_series()

        def arrived():
            stored = stack.stored()
            return stored.get(("hermes_udp_packets_total", ())) == total_sent and \
                all(key in stored for key in expected)
        stack.wait(arrived, "the pushed samples to reach Prometheus")
        stack.wait(lambda: stack.query("up")[0]["value"][1] == "1", "the target to be up")
        targets = get_json(f"http://{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
        assert len(targets) == 1 and targets[0]["health"] == "up" and targets[0]["lastError"] == "", targets

        stored = stack.stored()
        for key, value in expected.items():
            got = stored[key]
            assert repr(got) == repr(float(value)), f"{key}: stored {got!r}, pushed {value!r}"  # repr tells -0.0 from 0.0
        configured = {"sample_gauge", "edge_values", "sample_counter", "jobs_total", "plain_total"}
        extra = {key for key in stored if key[0] in configured and key not in expected}
        assert not extra, f"series nobody pushed: {extra}"

        # jobs_total twice per value, one per edge, six gauge updates, plain_total once
        # alone and once in the batch, and send_metric.py's counter and gauge.
        accepted = len(TRICKY) * 2 + len(EDGES) + 6 + 2 + 2
        rejected = {"unknown_metric": 1, "invalid_value": 1, "malformed_json": 1}
        assert stored[("hermes_samples_accepted_total", ())] == accepted, stored[("hermes_samples_accepted_total", ())]
        for reason in ("malformed_json", "malformed_sample", "unknown_metric", "label_mismatch", "invalid_label_value",
                       "invalid_value", "invalid_operation", "series_limit", "too_large", "forbidden_source"):
            check = stored[("hermes_samples_rejected_total", (("reason", reason),))]
            assert check == rejected.get(reason, 0), f"{reason}: {check}"
        assert stored[("hermes_series", ())] == len(expected)
        assert stored[("hermes_build_info", (("service", "e2e-service"), ("version", "1.0.0")))] == 1
        return stored
    finally:
        stack.close()


def run_with_token():
    """Prometheus scrapes through the bearer token; a job without it is refused with 401."""
    stack = Stack(True, token="e2e-" + secrets.token_urlsafe(24))
    try:
        def health():
            targets = get_json(f"http://{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
            return {target["labels"]["job"]: (target["health"], target["lastError"]) for target in targets}
        expected = {"hermes": ("up", ""), "hermes_without_token": ("down", "server returned HTTP status 401 Unauthorized")}
        stack.wait(lambda: health() == expected, f"the targets' health to be {expected}")
        stack.push(['{"metric_name": "plain_total", "payload": {"value": 7}}'])
        stack.wait(lambda: stack.stored().get(("plain_total", ())) == 7, "a pushed sample to be scraped through the token")
        refused = stack.query('up{job="hermes_without_token"}')
        assert len(refused) == 1 and refused[0]["value"][1] == "0", refused
        assert not stack.query('{job="hermes_without_token", __name__!~"up|scrape_.*"}'), "a refused job stored series"
    finally:
        stack.close()


CHANGING = ("process_", "hermes_http_requests_total", "hermes_config_last_reload", "scrape_")  # differ run to run


def comparable(stored):
    """The stored series but *_created, with the values that do not change between runs."""
    return {key: (None if key[0].startswith(CHANGING) else value)
            for key, value in stored.items() if not key[0].endswith("_created")}


def main():
    if shutil.which("prometheus") is None:
        print("e2e_prometheus: prometheus is not installed (apt-get install prometheus)", file=sys.stderr)
        print("e2e_prometheus: 0 passed, 1 failed")
        return 1
    passed = failed = 0
    stored = {}
    for name, openmetrics in (("openmetrics", True), ("text", False)):
        try:
            stored[name] = run(openmetrics)
            passed += 1
            print(f"ok   prometheus stores what was pushed ({name})")
        except Exception:
            failed += 1
            print(f"FAIL prometheus stores what was pushed ({name})\n{traceback.format_exc()}")
    try:
        run_with_token()
        passed += 1
        print("ok   prometheus scrapes through the bearer token; a job without it gets 401")
    except Exception:
        failed += 1
        print(f"FAIL prometheus scrapes through the bearer token; a job without it gets 401\n{traceback.format_exc()}")
    try:
        assert len(stored) == 2, "a run failed"
        om, text = stored["openmetrics"], stored["text"]
        # Prometheus 2.42 keeps OpenMetrics' *_created lines as series of their own
        # (prometheus/prometheus#6541): exactly one per pushed series of a *_total counter.
        created = sorted(key for key in om if key[0].endswith("_created"))
        check = sorted(("jobs_created", labels) for (name, labels) in expected_series() if name == "jobs_total")
        assert created == check, created
        assert not any(key[0].endswith("_created") for key in text), "text format has no _created"
        assert comparable(om) == comparable(text), set(comparable(om).items()) ^ set(comparable(text).items())
        scraped = om[("scrape_samples_scraped", ())] - text[("scrape_samples_scraped", ())]
        assert scraped == len(created), f"OpenMetrics scrapes had {scraped} samples more, not the {len(created)} _created"
        passed += 1
        print("ok   both formats store the same series")
    except Exception:
        failed += 1
        print(f"FAIL both formats store the same series\n{traceback.format_exc()}")
    print(f"e2e_prometheus: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
