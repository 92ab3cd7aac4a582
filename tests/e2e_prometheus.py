#!/usr/bin/env python3
"""End-to-end: a real Prometheus scrapes a real hermes every second.

Runs three times: with OpenMetrics on (Prometheus asks for it first), with
HERMES_OPENMETRICS=off, and with Prometheus' native histograms on (it asks for protobuf
first); pushes the same datagrams each time, reads back through Prometheus' HTTP API
what it stored, and compares the runs. A fourth run pushes observations into native
histograms and checks what PromQL makes of them against the exact figures. Prometheus
asks for gzip in every run, and hermes answers it (its hermes_http_metrics_bytes_total
says so); a scraper without Accept-Encoding, or with gzip;q=0, gets plain text. Prometheus
loads example/alerts.yml; in the first run every rule must evaluate without error, and
every query of example/dashboard.json must return data.
A last, short run guards /metrics with HERMES_HTTP_TOKEN_FILE: Prometheus scrapes
through it with authorization.credentials_file, and a job without the token is refused.

usage: e2e_prometheus.py PATH_TO_HERMES
Ends with the line "e2e_prometheus: N passed, N failed".
"""
import gzip
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERMES = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./hermes")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALERTS = os.path.join(ROOT, "example", "alerts.yml")
DASHBOARD = os.path.join(ROOT, "example", "dashboard.json")
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

    def __init__(self, openmetrics, native=False, config=CONFIG, keep_state=False, token=None):
        self.folder = tempfile.mkdtemp(prefix="hermes-e2e-")
        self.processes = []
        self.config_path = os.path.join(self.folder, "hermes.json")
        with open(self.config_path, "w") as file:
            json.dump(config, file)
        self.env = dict(os.environ, HERMES_UDP_ADDRESS="127.0.0.1", HERMES_UDP_PORT="0", HERMES_HTTP_ADDRESS="127.0.0.1",
                        HERMES_HTTP_PORT="0", HERMES_OPENMETRICS="on" if openmetrics else "off")
        if keep_state:  # a restart keeps its series, and its address so that Prometheus finds it again
            self.env.update(HERMES_STATE_FILE=os.path.join(self.folder, "state.json"), HERMES_HTTP_PORT=str(free_port()))
        token_path = os.path.join(self.folder, "token")
        if token:
            with open(token_path, "w") as file:
                file.write(token + "\n")
            self.env["HERMES_HTTP_TOKEN_FILE"] = token_path
        self.processes.append(self.start_hermes())
        self.prometheus = f"127.0.0.1:{free_port()}"
        with open(os.path.join(self.folder, "prometheus.yml"), "w") as file:
            file.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                       f"rule_files:\n  - {json.dumps(ALERTS)}\n"
                       "scrape_configs:\n  - job_name: hermes\n    honor_labels: true\n    static_configs:\n"
                       f"      - targets: ['{self.hermes_http}']\n")
            if token:
                file.write(f"    authorization:\n      credentials_file: {token_path}\n"
                           "  - job_name: hermes_without_token\n    static_configs:\n"
                           f"      - targets: ['{self.hermes_http}']\n")
        self.processes.append(subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(self.folder, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.folder, "data"), "--web.listen-address=" + self.prometheus,
             "--log.level=error"] + (["--enable-feature=native-histograms"] if native else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.wait(lambda: self.ready(), "Prometheus to start")

    def start_hermes(self):
        hermes = subprocess.Popen([HERMES, self.config_path], env=self.env, stderr=subprocess.PIPE, text=True)
        line = hermes.stderr.readline()
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        self.udp_port = int(fields["udp"].rsplit(":", 1)[1])
        self.hermes_http = fields["http"]
        return hermes

    def restart_hermes(self):
        """SIGTERM, then the same hermes again: same config, state file and HTTP port."""
        old = self.processes[0]
        old.send_signal(signal.SIGTERM)
        assert old.wait(timeout=10) == 0
        old.stderr.close()
        self.processes[0] = self.start_hermes()

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
        """Every series of job hermes, as {(name, labels): value}, but the alerts' own."""
        series = {}
        for result in self.query('{job="hermes"}'):
            labels = dict(result["metric"])
            name = labels.pop("__name__")
            if name in ("ALERTS", "ALERTS_FOR_STATE"):
                continue
            labels.pop("job"), labels.pop("instance")
            if "histogram" in result:  # a native histogram: its count stands for it
                series[(name, tuple(sorted(labels.items())))] = ("histogram", float(result["histogram"][1]["count"]))
            else:
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


def run(openmetrics, native=False, checks=(), outcomes=None):
    """Pushes, waits until Prometheus has it all, checks, and returns what it stored.
    Then runs each of checks on the stack, recording {name: None or the traceback}."""
    stack = Stack(openmetrics, native)
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
        for metric in configured:  # each metric's own count of series, beside its max_series
            series = stored[("hermes_metric_series", (("metric", metric),))]
            assert series == len([key for key in expected if key[0] == metric]), (metric, series)
            assert stored[("hermes_metric_max_series", (("metric", metric),))] == 10000, metric
        assert stored[("hermes_build_info", (("service", "e2e-service"), ("version", "1.0.0")))] == 1
        # Prometheus asks for gzip (Accept-Encoding: gzip) and reads it: every body hermes sent
        # it was gzip, and smaller than the text it holds.
        gzip_bytes = ("hermes_http_metrics_bytes_total", (("encoding", "gzip"),))
        stack.wait(lambda: stack.stored().get(gzip_bytes, 0) > 0, "a gzip body to be counted")
        stored = stack.stored()
        assert stored[("hermes_http_metrics_bytes_total", (("encoding", "identity"),))] == 0, stored
        assert 0 < stored[gzip_bytes] < stored[("hermes_http_metrics_gzip_uncompressed_bytes_total", ())], stored
        for check in checks:
            try:
                check(stack)
                outcomes[check.__doc__] = None
            except Exception:
                outcomes[check.__doc__] = traceback.format_exc()
        return stored
    finally:
        stack.close()


def dashboard_queries(instance_regex, rate_interval):
    """Every query of the dashboard, with its variables as Grafana substitutes them."""
    with open(DASHBOARD) as file:
        dashboard = json.load(file)
    panels = []
    for panel in dashboard["panels"]:
        panels += [panel] + panel.get("panels", [])
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            query = target["expr"].replace("${instance}", instance_regex).replace("$instance", instance_regex)
            query = query.replace("$__rate_interval", rate_interval)
            assert "$" not in query, f"{panel['title']}: a variable left in {query}"
            queries.append((panel["title"], query))
    return queries


def check_dashboard(stack):
    """every dashboard query returns data"""
    instance = stack.hermes_http
    # A multi-value variable, "All" too, becomes an alternation of the values, each
    # regex-escaped (Grafana writes the escape as \\ inside the string): here this
    # instance alone, and with one that does not exist. $__rate_interval is four scrape
    # intervals at least, here 4 s.
    def escape(value):
        return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\\\1", value)
    queries = dashboard_queries(f"({escape(instance)})", "4s") + \
        dashboard_queries(f"({escape(instance)}|{escape('gone.invalid:8080')})", "4s")
    # The remote-write row needs a Hermes that writes: tests/remote_write.py checks it.
    queries = [(title, query) for title, query in queries if "hermes_remote_storage_" not in query]
    assert len(queries) >= 2 * 20, f"only {len(queries)} queries in the dashboard"
    values = get_json(f"http://{stack.prometheus}/api/v1/label/instance/values?"
                      + urllib.parse.urlencode({"match[]": "hermes_build_info"}))["data"]
    assert values == [instance], f"the instance variable's query found {values}, not [{instance!r}]"

    def answer(title, query):
        try:
            return stack.query(query)
        except urllib.error.HTTPError as error:  # Prometheus says why a query does not parse
            raise AssertionError(f"{title}: {query}: {error.read().decode()}") from None

    def empty():
        return [(title, query) for title, query in queries if not answer(title, query)]
    try:
        stack.wait(lambda: not empty(), "every dashboard query to return data", seconds=15)
    except AssertionError:
        raise AssertionError(f"queries without data: {empty()}")


def check_rules(stack):
    """prometheus evaluates every alerting rule on a real hermes"""
    with open(ALERTS) as file:
        text = file.read()
    names = re.findall(r"^\s*- alert: (\w+)$", text, re.M)
    assert len(names) == len(set(names)) >= 10, names
    served = set(result["metric"]["__name__"] for result in stack.query('{job="hermes"}'))
    used = set(re.findall(r"\b(hermes_[a-z_]+|process_[a-z_]+)\b", text))
    # Remote write's and TLS' families are served only where they are on: tests/remote_write.py
    # and tests/tls.py check those.
    used = {name for name in used if not name.startswith(("hermes_remote_storage_", "hermes_tls_"))}
    missing = used - served
    assert not missing, f"the rules use names Hermes does not serve: {sorted(missing)}"

    def rules():
        groups = get_json(f"http://{stack.prometheus}/api/v1/rules")["data"]["groups"]
        assert [group["name"] for group in groups] == ["hermes"], groups
        return groups[0]["rules"]

    def evaluated():
        return all(rule["health"] == "ok" and not rule["lastEvaluation"].startswith("0001") for rule in rules())
    try:
        stack.wait(evaluated, "every rule to be evaluated without error", seconds=15)
    except AssertionError:
        raise AssertionError(f"rules not evaluated or in error: {rules()}")
    got = rules()
    assert [rule["name"] for rule in got] == names, [rule["name"] for rule in got]
    assert all(rule.get("lastError", "") == "" for rule in got), got
    # One sample more for each reason of the pushes above, now that Prometheus has stored
    # the counters (a rate needs a rise between two scrapes): HermesSamplesRejected waits
    # out its 15 minutes for those three, and nothing else stirs.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in ('{"metric_name": "nope"}', "{broken", '{"metric_name": "plain_total", "payload": {"value": -1}}'):
            sock.sendto(datagram.encode(), ("127.0.0.1", stack.udp_port))
    stack.wait(lambda: len([a for r in rules() for a in r["alerts"]]) == 3, "the three pending alerts", seconds=15)
    states = sorted((rule["name"], alert["state"], alert["labels"].get("reason"))
                    for rule in rules() for alert in rule["alerts"])
    assert states == [("HermesSamplesRejected", "pending", reason)
                      for reason in ("invalid_value", "malformed_json", "unknown_metric")], states


def check_encodings(stack):
    """a scraper without Accept-Encoding, or with gzip;q=0, gets plain text; with gzip, the same compressed"""
    def scrape(encoding):
        request = urllib.request.Request(f"http://{stack.hermes_http}/metrics",
                                         headers={"Accept-Encoding": encoding} if encoding else {})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.headers.get("Content-Encoding"), response.read()

    def series(body):  # the configured metrics' lines: Hermes' own change from scrape to scrape
        return [line for line in body.decode("utf-8").split("\n") if line and not line.startswith(("hermes_", "process_", "#"))]

    plain_encoding, plain = scrape(None)
    assert plain_encoding is None and plain.startswith(b"# HELP edge_values "), (plain_encoding, plain[:40])
    refused_encoding, refused = scrape("gzip;q=0")
    assert refused_encoding is None and refused.startswith(b"# HELP edge_values "), (refused_encoding, refused[:40])
    gzip_encoding, compressed = scrape("gzip")
    assert gzip_encoding == "gzip" and compressed[:2] == b"\x1f\x8b", (gzip_encoding, compressed[:2])
    assert series(gzip.decompress(compressed)) == series(plain) == series(refused) and len(series(plain)) > 10


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


def run_with_pushes():
    """Prometheus scrapes a group pushed over the Pushgateway API with honor_labels, and
    PromQL returns the pushed values with the grouping labels."""
    stack = Stack(False)
    try:
        body = (b"# TYPE backup_last_success_seconds gauge\nbackup_last_success_seconds 1700000000\n"
                b"# TYPE backup_files_total counter\nbackup_files_total{kind=\"db\"} 42\n")
        request = urllib.request.Request(f"http://{stack.hermes_http}/metrics/job/backup/path@base64/L3Zhci9saWI",
                                         data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, response.status

        def pushed():
            return stack.query('{job="backup"}')
        stack.wait(lambda: len(pushed()) >= 4, "the pushed group to be scraped")
        got = sorted((result["metric"]["__name__"], tuple(sorted(result["metric"].items())), result["value"][1])
                     for result in pushed() if not result["metric"]["__name__"].startswith("push_"))
        assert got == [("backup_files_total", (("__name__", "backup_files_total"), ("job", "backup"),
                                               ("kind", "db"), ("path", "/var/lib")), "42"),
                       ("backup_last_success_seconds", (("__name__", "backup_last_success_seconds"),
                                                        ("job", "backup"), ("path", "/var/lib")), "1700000000")], got
        failure = stack.query('push_failure_time_seconds{job="backup",path="/var/lib"}')
        assert len(failure) == 1 and failure[0]["value"][1] == "0", failure
    finally:
        stack.close()


CHANGING = ("process_", "hermes_http_requests_total", "hermes_http_metrics_", "hermes_config_last_reload", "scrape_")  # differ run to run


def comparable(stored):
    """The stored series but *_created, with the values that do not change between runs."""
    return {key: (None if key[0].startswith(CHANGING) else value)
            for key, value in stored.items() if not key[0].endswith("_created")}


NATIVE_CONFIG = {
    "service_name": "e2e-native",
    "histograms": [
        {"metric_name": "latency_seconds", "metric_description": "native only", "labels": ["route"], "native": True},
        {"metric_name": "coarse_bytes", "metric_description": "native, coarse, few buckets", "native": True,
         "native_bucket_factor": 1.5, "native_max_buckets": 12, "native_zero_threshold": 0.001},
        {"metric_name": "classic_seconds", "metric_description": "classic buckets", "buckets": [0.25, 0.5, 2.5]}],
    "summaries": [{"metric_name": "rpc_seconds", "metric_description": "a summary", "objectives": {"0.5": 0.05}}],
}


def observations(count, seed):
    """Values spread over six decades, a tenth negative and a twentieth exactly zero."""
    import random
    generator = random.Random(seed)
    values = []
    for i in range(count):
        value = 10 ** generator.uniform(-3, 3)
        values.append(0.0 if i % 20 == 0 else -value if i % 10 == 1 else value)
    return values


def exact_quantile(values, q):
    """The value of rank q: what a histogram_quantile estimate should come close to."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.5) - 1))]


def push_observations(stack, metric, labels, values):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for start in range(0, len(values), 50):
            batch = [{"metric_name": metric, "payload": {"labels": labels, "observation": value}}
                     for value in values[start:start + 50]]
            sock.sendto(json.dumps(batch).encode(), ("127.0.0.1", stack.udp_port))
            time.sleep(0.001)


def native_buckets(stack, selector):
    """The buckets Prometheus holds for a native histogram: [(lower, upper, count)]."""
    histogram = stack.query(selector)[0]["histogram"][1]
    return [(float(lower), float(upper), float(count)) for _, lower, upper, count in histogram["buckets"]]


def check_native(stack, selector, values, growth):
    """histogram_count and _sum exact; buckets `growth` wide; quantiles within one bucket's width."""
    count = float(stack.query(f"histogram_count({selector})")[0]["value"][1])
    assert count == len(values), f"{selector}: histogram_count {count}, pushed {len(values)}"
    total = float(stack.query(f"histogram_sum({selector})")[0]["value"][1])
    expected = 0.0
    for value in values:  # in the order hermes adds them
        expected += value
    assert total == expected, f"{selector}: histogram_sum {total!r}, pushed {expected!r}"
    buckets = native_buckets(stack, selector)
    zero_edges = {upper for lower, upper, _ in buckets if lower <= 0 <= upper}  # it cuts the lowest bucket short
    widths = {round(upper / lower, 9) for lower, upper, _ in buckets if lower > 0 and lower not in zero_edges}
    assert widths == {round(growth, 9)}, f"{selector}: buckets grow by {widths}, not {growth}"
    assert sum(count for _, _, count in buckets) == len(values)
    for q in (0.5, 0.9, 0.99):
        estimate = float(stack.query(f"histogram_quantile({q}, {selector})")[0]["value"][1])
        exact = exact_quantile(values, q)
        assert exact > 0 and exact / growth <= estimate <= exact * growth, \
            f"{selector}: quantile {q} estimated {estimate}, exact {exact}, bucket growth {growth}"
    return buckets


def run_native():
    """Native histograms through the protobuf format, and the other kinds beside them."""
    stack = Stack(True, native=True, config=NATIVE_CONFIG)
    try:
        fine, coarse = observations(1000, 1), observations(1000, 2)
        push_observations(stack, "latency_seconds", {"route": "/a"}, fine)
        push_observations(stack, "coarse_bytes", {}, coarse)
        push_observations(stack, "classic_seconds", {}, [0.1, 0.25, 0.3, 3, -1])
        push_observations(stack, "rpc_seconds", {}, [1, 2, 3])
        stack.wait(lambda: stack.query("histogram_count(latency_seconds)") and
                   float(stack.query("histogram_count(latency_seconds)")[0]["value"][1]) == len(fine) and
                   stack.query("histogram_count(coarse_bytes)") and
                   float(stack.query("histogram_count(coarse_bytes)")[0]["value"][1]) == len(coarse) and
                   stack.stored().get(("rpc_seconds_count", ())) == 3,
                   "the observations to reach Prometheus")
        # Factor 1.1 is schema 3, but six decades on either side take more than the 160
        # buckets it may have: hermes halves the resolution once, to schema 2.
        check_native(stack, 'latency_seconds{route="/a"}', fine, 2 ** (1 / 4))
        # Six decades on either side of the zero bucket do not fit 12 buckets of schema 1
        # (factor 1.5): hermes halves the resolution three times, to schema -2, 16 wide.
        buckets = check_native(stack, "coarse_bytes", coarse, 16)
        assert len([b for b in buckets if b[0] != b[1] and not (b[0] < 0 < b[1])]) <= 12, buckets
        zero = [count for lower, upper, count in buckets if lower <= 0 <= upper]
        assert zero == [sum(1 for v in coarse if abs(v) <= 0.001)], (zero, buckets)
        stored = stack.stored()
        assert stored[("latency_seconds", (("route", "/a"),))] == ("histogram", len(fine))
        assert stored[("coarse_bytes", ())] == ("histogram", len(coarse))
        assert not any(name.startswith(("latency_seconds_", "coarse_bytes_")) for name, _ in stored), \
            "a native histogram stored as classic series"
        classic = {labels: value for (name, labels), value in stored.items() if name == "classic_seconds_bucket"}
        assert classic == {(("le", "0.25"),): 3, (("le", "0.5"),): 4, (("le", "2.5"),): 4, (("le", "+Inf"),): 5}, classic
        assert stored[("classic_seconds_count", ())] == 5 and stored[("classic_seconds_sum", ())] == 2.65
        assert stored[("rpc_seconds", (("quantile", "0.5"),))] == 2 and stored[("rpc_seconds_sum", ())] == 6
        return stored
    finally:
        stack.close()


SIGNED_CONFIG = {
    "service_name": "e2e-signed",
    "histograms": [
        {"metric_name": "offset_seconds", "metric_description": "negative bounds", "labels": ["host"], "buckets": [-1, 0, 1]},
        {"metric_name": "drift_seconds", "metric_description": "bounds from 0 up", "labels": ["host"], "buckets": [0.5, 1]}],
}


def run_signed_openmetrics():
    """Histograms with negative bounds and observations, scraped as OpenMetrics: the
    buckets of every series are stored, _sum and _count exactly where the sum is a counter."""
    stack = Stack(True, config=SIGNED_CONFIG)
    try:
        sent = [json.dumps({"metric_name": metric, "payload": {"labels": {"host": host}, "observation": value}})
                for metric, host, values in (("offset_seconds", "a", [-2, -0.5, 0.25, 3]),
                                             ("drift_seconds", "up", [-0.25, 0.75]), ("drift_seconds", "down", [-0.25, 0.1]))
                for value in values]
        stack.push(sent)
        stack.wait(lambda: stack.stored().get(("hermes_samples_accepted_total", ())) == len(sent) and
                   ("drift_seconds_bucket", (("host", "down"), ("le", "+Inf"))) in stack.stored(),
                   "the observations to reach Prometheus")
        targets = get_json(f"http://{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
        assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")], targets
        signed = {(name, labels): value for (name, labels), value in stack.stored().items()
                  if name.startswith(("offset_seconds", "drift_seconds")) and not name.endswith("_created")}
        expected = {("offset_seconds_bucket", (("host", "a"), ("le", le))): count
                    for le, count in (("-1", 1), ("0", 2), ("1", 3), ("+Inf", 4))}
        expected.update({("drift_seconds_bucket", (("host", host), ("le", le))): count
                         for host, counts in (("up", (1, 2, 2)), ("down", (2, 2, 2)))
                         for le, count in zip(("0.5", "1", "+Inf"), counts)})
        expected.update({("drift_seconds_sum", (("host", "up"),)): 0.5, ("drift_seconds_count", (("host", "up"),)): 2})
        assert signed == expected, set(signed.items()) ^ set(expected.items())
        median = float(stack.query('histogram_quantile(0.5, offset_seconds_bucket{host="a"})')[0]["value"][1])
        assert median == 0, median  # rank 2 of 4 closes the bucket (-1, 0]
    finally:
        stack.close()


def no_reset_across_a_restart():
    """A counter scraped across a restart of hermes with a state file: Prometheus sees no reset."""
    stack = Stack(openmetrics=True, keep_state=True)
    try:
        series = 'jobs_total{queue="restart"}'

        def push(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(count):
                    sock.sendto(json.dumps({"metric_name": "jobs_total", "payload": {"labels": {"queue": "restart"}}}).encode(),
                                ("127.0.0.1", stack.udp_port))
                    time.sleep(0.001)

        def stored_value():
            result = stack.query(series)
            return float(result[0]["value"][1]) if result else None
        push(5)
        stack.wait(lambda: stored_value() == 5, "5 to be scraped")
        stack.restart_hermes()
        push(3)
        stack.wait(lambda: stored_value() == 8, "8 to be scraped after the restart")
        started = stack.query("changes(process_start_time_seconds[5m])")
        assert started and float(started[0]["value"][1]) == 1, f"Prometheus did not scrape both runs: {started}"
        resets = stack.query(f"resets({series}[5m])")
        assert resets and float(resets[0]["value"][1]) == 0, f"resets over the restart: {resets}"
    finally:
        stack.close()


def main():
    if shutil.which("prometheus") is None:
        print("e2e_prometheus: prometheus is not installed (apt-get install prometheus)", file=sys.stderr)
        print("e2e_prometheus: 0 passed, 1 failed")
        return 1
    passed = failed = 0
    stored = {}
    checks = (check_rules, check_dashboard, check_encodings)
    outcomes = {check.__doc__: "it did not run: the run above failed" for check in checks}
    for name, openmetrics, native in (("openmetrics", True, False), ("text", False, False), ("protobuf", True, True)):
        try:
            stored[name] = run(openmetrics, native, checks if name == "openmetrics" else (), outcomes)
            passed += 1
            print(f"ok   prometheus stores what was pushed ({name})")
        except Exception:
            failed += 1
            print(f"FAIL prometheus stores what was pushed ({name})\n{traceback.format_exc()}")
    for what, failure in outcomes.items():
        passed, failed = (passed + 1, failed) if failure is None else (passed, failed + 1)
        print(f"ok   {what}" if failure is None else f"FAIL {what}\n{failure}")
    try:
        run_with_token()
        passed += 1
        print("ok   prometheus scrapes through the bearer token; a job without it gets 401")
    except Exception:
        failed += 1
        print(f"FAIL prometheus scrapes through the bearer token; a job without it gets 401\n{traceback.format_exc()}")
    try:
        assert len(stored) == 3, "a run failed"
        om, text, protobuf = stored["openmetrics"], stored["text"], stored["protobuf"]
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
        print("ok   OpenMetrics and text store the same series")
    except Exception:
        failed += 1
        print(f"FAIL OpenMetrics and text store the same series\n{traceback.format_exc()}")
    try:
        assert len(stored) == 3, "a run failed"
        # created_timestamp is no series of its own: protobuf and text store the same.
        assert comparable(protobuf) == comparable(text), \
            set(comparable(protobuf).items()) ^ set(comparable(text).items())
        assert protobuf[("scrape_samples_scraped", ())] == text[("scrape_samples_scraped", ())]
        passed += 1
        print("ok   protobuf and text store the same series")
    except Exception:
        failed += 1
        print(f"FAIL protobuf and text store the same series\n{traceback.format_exc()}")
    try:
        run_native()
        passed += 1
        print("ok   native histograms: exact count and sum, quantiles within a bucket")
    except Exception:
        failed += 1
        print(f"FAIL native histograms: exact count and sum, quantiles within a bucket\n{traceback.format_exc()}")
    try:
        run_signed_openmetrics()
        passed += 1
        print("ok   OpenMetrics histograms with negative bounds and observations are stored whole")
    except Exception:
        failed += 1
        print(f"FAIL OpenMetrics histograms with negative bounds and observations are stored whole\n{traceback.format_exc()}")
    try:
        run_with_pushes()
        passed += 1
        print("ok   Prometheus scrapes the pushed groups with honor_labels")
    except Exception:
        failed += 1
        print(f"FAIL Prometheus scrapes the pushed groups with honor_labels\n{traceback.format_exc()}")
    try:
        no_reset_across_a_restart()
        passed += 1
        print("ok   a counter shows no reset across a restart with a state file")
    except Exception:
        failed += 1
        print(f"FAIL a counter shows no reset across a restart with a state file\n{traceback.format_exc()}")
    print(f"e2e_prometheus: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
