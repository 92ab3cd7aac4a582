#!/usr/bin/env python3
"""Remote write: hermes pushes every series to a receiver.

End to end, with the real Prometheus 2.42 as the receiver (--web.enable-remote-write-receiver,
native histograms on): samples of every type pushed over UDP come back through PromQL
with the values, labels and buckets /metrics shows; a native histogram arrives as one;
a series that expires is gone from an instant query within one interval.
Faults, with a receiver of the test's own that decodes every request with Debian's
python3-snappy: 500 and the backoff schedule, 429 with Retry-After, a receiver that
never answers, 400 (the batch dropped and counted), and the accounting: samples in =
sent + failed + dropped once nothing is pending. Prometheus out of reach for a minute
behind a proxy of the test's own, then back: the backoff schedule of the whole outage,
and Prometheus holds every sample Hermes counts as sent; that test runs beside the
others, so that its minute overlaps their waiting.
Over TLS, with certificates made by openssl here: Prometheus serving https with a client
certificate required, and with basic_auth_users (a bcrypt hash from Debian's
python3-bcrypt), a wrong password refused (401, counted as failed); a stranger CA, an
expired certificate and a certificate for another host refused in the handshake.

usage: remote_write.py PATH_TO_HERMES
Ends with the line "remote_write: N passed, N failed".
"""
import os
import sys

try:
    import snappy  # Debian's python3-snappy lives where Debian's python3 looks
except ImportError:
    if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    print("remote_write: python3-snappy is missing (apt-get install python3-snappy)", file=sys.stderr)
    print("remote_write: 0 passed, 1 failed")
    sys.exit(1)

import http.server
import json
import math
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

HERMES = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./hermes")
STALE_NAN = 0x7ff0000000000002
CONFIG = {
    "service_name": "rw-e2e",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}],
    "gauges": [{"metric_name": "depth", "labels": ["pool"]},
               {"metric_name": "lease_seconds", "labels": ["holder"], "ttl_seconds": 2}],
    "histograms": [{"metric_name": "latency_seconds", "labels": ["route"], "buckets": [0.1, 0.5, 1]},
                   {"metric_name": "size_bytes", "native": True}],
    "summaries": [{"metric_name": "rtt_seconds", "objectives": {"0.5": 0.05, "0.9": 0.01}}],
}
SAMPLES = ([{"metric_name": "jobs_total", "payload": {"labels": {"queue": q}, "value": v}} for q, v in
            (("mail", 3), ("mail", 2), ("print", 1), ("t\u00e4sk \"x\"", 7))] +
           [{"metric_name": "depth", "payload": {"labels": {"pool": "a"}, "value": 12.5}},
            {"metric_name": "depth", "payload": {"labels": {"pool": "b"}, "value": -3}}] +
           [{"metric_name": "latency_seconds", "payload": {"labels": {"route": "/"}, "observation": o}} for o in (0.05, 0.3, 0.7, 2)] +
           [{"metric_name": "size_bytes", "payload": {"observation": o}} for o in (1, 3, 3, 100, 0)] +
           [{"metric_name": "rtt_seconds", "payload": {"observation": o}} for o in (0.1, 0.2, 0.3)])


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, what, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode("utf-8")


# ---- what hermes sends, read with python3-snappy and a protobuf reader of our own ----------

def varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data):
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, at = varint(data, at)
        elif kind == 1:
            value, at = data[at:at + 8], at + 8
        elif kind == 2:
            size, at = varint(data, at)
            value, at = data[at:at + size], at + size
        else:
            raise ValueError(f"wire type {kind}")
        yield number, value


def decode_request(body):
    """[(labels dict, value or None, timestamp, is_histogram)] of a WriteRequest."""
    out = []
    for number, series in fields(snappy.uncompress(body)):
        assert number == 1
        labels, value, stamp, histogram = {}, None, None, False
        for field, part in fields(series):
            if field == 1:
                pair = dict(fields(part))
                labels[pair[1].decode()] = pair.get(2, b"").decode()
            elif field == 2:
                sample = dict(fields(part))
                value, stamp = struct.unpack("<d", sample[1])[0], sample.get(2, 0)
            elif field == 4:
                histogram = True
        out.append((labels, value, stamp, histogram))
    return out


class Receiver:
    """A remote-write receiver of the test's own; `answer(request_index)` picks the reply."""

    def __init__(self, answer=lambda index: (204, {}, b""), tls=None):
        self.answer = answer
        self.requests = []  # (monotonic time, decoded series, status)
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                assert headers["content-encoding"] == "snappy" and headers["content-type"] == "application/x-protobuf"
                assert headers["x-prometheus-remote-write-version"] == "0.1.0"
                assert headers["user-agent"].startswith("Hermes/")
                with receiver.lock:
                    index = len(receiver.requests)
                    status, extra, text = receiver.answer(index)
                    receiver.requests.append((time.monotonic(), decode_request(body), status, headers))
                if status is None:  # never answers
                    time.sleep(30)
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:  # a handshake the client refuses ends in accept(), which the server shrugs off
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self):
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Hermes:
    def __init__(self, config, env=None):
        self.folder = tempfile.mkdtemp(prefix="hermes-rw-")
        self.config_path = os.path.join(self.folder, "hermes.json")
        with open(self.config_path, "w") as file:
            json.dump(config, file)
        environment = dict(os.environ, HERMES_UDP_ADDRESS="127.0.0.1", HERMES_UDP_PORT="0", HERMES_HTTP_ADDRESS="127.0.0.1",
                           HERMES_HTTP_PORT="0", **(env or {}))
        self.process = subprocess.Popen([HERMES, self.config_path], env=environment, stderr=subprocess.PIPE, text=True)
        line = self.process.stderr.readline()
        fields_ = dict(part.split("=", 1) for part in line.split() if "=" in part)
        self.udp_port = int(fields_["udp"].rsplit(":", 1)[1])
        self.http = fields_["http"]
        self.log = []
        threading.Thread(target=self.read_log, daemon=True).start()

    def read_log(self):
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))

    def push(self, samples):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for sample in samples:
                sock.sendto(json.dumps(sample).encode("utf-8"), ("127.0.0.1", self.udp_port))
                time.sleep(0.001)

    def metrics(self):
        return http_get(f"http://{self.http}/metrics")

    def figure(self, name, **labels):
        """The sum of a family's series whose labels include `labels`."""
        total, found = 0.0, False
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        assert found, f"no {name} {labels} in /metrics"
        return total

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.process.returncode


def target(url, **settings):
    return dict({"url": url, "interval_seconds": 0.5, "timeout_seconds": 1, "max_backoff_seconds": 4}, **settings)


# ---- the text exposition, to compare with -------------------------------------------------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def unescape(value):
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def exposition(text, names):
    """{(name, sorted labels): value} of the series of `names`' families in a text body."""
    series = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if not match or not any(match.group(1) == n or match.group(1).startswith(n + "_") for n in names):
            continue
        labels = tuple(sorted((k, unescape(v)) for k, v in LABEL.findall(match.group(2) or "") if v != ""))
        series[(match.group(1), labels)] = float(match.group(3))
    return series


# ---- end to end with Prometheus ------------------------------------------------------------

class Prometheus:
    def __init__(self, flags=(), scheme="http", context=None, headers=None):
        self.scheme, self.context, self.headers = scheme, context, headers or {}
        self.folder = tempfile.mkdtemp(prefix="hermes-rw-prom-")
        self.address = f"127.0.0.1:{free_port()}"
        with open(os.path.join(self.folder, "prometheus.yml"), "w") as file:
            file.write("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        self.process = subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(self.folder, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(self.folder, "data"), "--web.listen-address=" + self.address,
             "--web.enable-remote-write-receiver", "--enable-feature=native-histograms", "--log.level=error", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ready, "Prometheus to start")

    def ready(self):
        try:
            return self.get("/-/ready", timeout=1) is not None
        except OSError:
            return False

    def query(self, promql):
        answer = json.loads(self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def get(self, path, timeout=5):
        request = urllib.request.Request(f"{self.scheme}://{self.address}{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
            return response.read().decode("utf-8")

    def close(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def prometheus_end_to_end(checks):
    prometheus = Prometheus()
    config = dict(CONFIG, remote_write=[target(f"http://{prometheus.address}/api/v1/write",
                                               interval_seconds=1, external_labels={"site": "lab"})])
    hermes = Hermes(config)
    try:
        hermes.push(SAMPLES + [{"metric_name": "lease_seconds", "payload": {"labels": {"holder": "h1"}, "value": 30}}])
        wait_for(lambda: prometheus.query('lease_seconds{job="rw-e2e"}'), "the lease to arrive")
        names = [m["metric_name"] for kind in ("counters", "gauges", "histograms", "summaries") for m in CONFIG[kind]
                 if m["metric_name"] != "lease_seconds"]
        time.sleep(2.5)  # two snapshots after the last push: Prometheus holds the final values
        scraped = exposition(hermes.metrics(), names)
        stored = {}
        for result in prometheus.query('{job="rw-e2e", __name__=~"%s"}' % "|".join(n + ".*" for n in names)):
            labels = dict(result["metric"])
            name = labels.pop("__name__")
            assert labels.pop("site") == "lab" and labels.pop("instance") == socket.gethostname(), labels
            labels.pop("job")
            if "histogram" in result:
                stored[(name, "native")] = result["histogram"][1]
            else:
                stored[(name, tuple(sorted(labels.items())))] = float(result["value"][1])
        native = stored.pop(("size_bytes", "native"), None)
        scraped.pop(("size_bytes_bucket", (("le", "+Inf"),)))  # the text format's stand-in for it
        scraped_count, scraped_sum = scraped.pop(("size_bytes_count", ())), scraped.pop(("size_bytes_sum", ()))
        checks["values, labels and buckets in Prometheus are those of /metrics"] = (
            None if stored == scraped else f"only stored: {set(stored.items()) - set(scraped.items())}\n"
                                            f"only scraped: {set(scraped.items()) - set(stored.items())}")
        ok = native is not None and float(native["count"]) == scraped_count == 5 and float(native["sum"]) == scraped_sum == 107
        ok = ok and sum(float(bucket[3]) for bucket in native["buckets"]) == 5
        checks["a native histogram arrives as one, with its count, sum and buckets"] = None if ok else repr(native)
        # The lease expires 2 s after its push; its stale marker must end it within an interval.
        gone = time.monotonic()
        wait_for(lambda: not prometheus.query('lease_seconds{job="rw-e2e"}'), "the expired lease to go stale", 10)
        checks["an expired series is absent from an instant query at once"] = None
        empty = []
        for title, query in remote_write_dashboard_queries(socket.gethostname()):
            if not prometheus.query(query):
                empty.append((title, query))
        checks["the dashboard's remote-write row has data"] = None if not empty else repr(empty)
        own = prometheus.query('hermes_remote_storage_samples_total{job="rw-e2e"}')
        checks["Hermes' own figures arrive too"] = None if own and float(own[0]["value"][1]) > 0 else repr(own)
        del gone
    finally:
        hermes.stop()
        prometheus.close()


def remote_write_dashboard_queries(instance):
    """The queries of example/dashboard.json that show remote write, for one instance."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "example", "dashboard.json")) as file:
        dashboard = json.load(file)
    queries = []
    for panel in dashboard["panels"]:
        for target_ in panel.get("targets", []):
            if "hermes_remote_storage_" in target_["expr"]:
                query = target_["expr"].replace("$instance", re.escape(instance)).replace("$__rate_interval", "5s")
                queries.append((panel["title"], query))
    assert len(queries) >= 5, queries
    return queries


# ---- faults --------------------------------------------------------------------------------

def gaps(receiver, first, count):
    times = [t for t, _, _, _ in receiver.requests[first:first + count + 1]]
    return [round(b - a, 2) for a, b in zip(times, times[1:])]


def small_config(url, **settings):
    return {"service_name": "rw-faults", "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}],
            "remote_write": [target(url, **settings)]}


def jobs_values(receiver):
    """The jobs_total{queue=q} value of each request that carried one, in order."""
    values = []
    for _, series, status, _ in receiver.requests:
        for labels, value, _, _ in series:
            if labels.get("__name__") == "jobs_total" and labels.get("queue") == "q":
                values.append((value, status))
    return values


def accounting_holds(hermes):
    """Once nothing is pending: samples in = sent + failed + dropped, exactly."""
    def settled():
        text = hermes.metrics()
        figures = {}
        for name in ("in", "failed", "dropped", ""):
            family = "hermes_remote_storage_samples_" + (name + "_" if name else "") + "total"
            figures[name] = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(family + "{"))
        pending = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("hermes_remote_storage_pending_snapshots{"))
        return figures if pending == 0 else None
    figures = wait_for(settled, "nothing pending", 15)
    assert figures["in"] == figures[""] + figures["failed"] + figures["dropped"], figures
    return figures


def backoff_after_500():
    """500 five times: retried 0.5, 1, 2, 4, 4 s apart (max_backoff_seconds 4), then 204."""
    receiver = Receiver(lambda i: (500, {}, b"overloaded") if i <= 4 else (204, {}, b""))
    hermes = Hermes(small_config(receiver.url(), interval_seconds=60))
    try:
        hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}}}])
        wait_for(lambda: len(receiver.requests) >= 6, "the retries", 20)
        schedule = gaps(receiver, 0, 5)
        expected = [0.5, 1, 2, 4, 4]
        assert all(abs(g - e) < 0.15 for g, e in zip(schedule, expected)), schedule
        assert [s for _, _, s, _ in receiver.requests[:6]] == [500, 500, 500, 500, 500, 204]
        same = receiver.requests[0][1] == receiver.requests[5][1]
        assert same, "a retry sends the same batch"
        samples = len(receiver.requests[0][1])
        assert hermes.figure("hermes_remote_storage_samples_retried_total") == 5 * samples
        assert hermes.figure("hermes_remote_storage_requests_total", code="500") == 5
        accounting_holds(hermes)
    finally:
        hermes.stop()
        receiver.close()


def retry_after_429():
    """429 with Retry-After: 2 is waited for, then backoff doubles from it."""
    receiver = Receiver(lambda i: (429, {"Retry-After": "2"}, b"slow down") if i <= 1 else (204, {}, b""))
    hermes = Hermes(small_config(receiver.url(), interval_seconds=60))
    try:
        wait_for(lambda: len(receiver.requests) >= 3, "the retries", 10)
        assert [abs(g - e) < 0.15 for g, e in zip(gaps(receiver, 0, 2), [2, 2])] == [True, True], gaps(receiver, 0, 2)
        assert hermes.figure("hermes_remote_storage_requests_total", code="429") == 2
        accounting_holds(hermes)
    finally:
        hermes.stop()
        receiver.close()


def never_answers():
    """A receiver that accepts and never answers: each request times out, scrapes stay quick."""
    receiver = Receiver(lambda i: (None, {}, b""))
    hermes = Hermes(small_config(receiver.url(), timeout_seconds=1, max_backoff_seconds=1))
    try:
        wait_for(lambda: len(receiver.requests) >= 3, "three attempts", 10)
        started = time.monotonic()
        hermes.metrics()
        assert time.monotonic() - started < 0.5, "a scrape waited for the receiver"
        assert hermes.figure("hermes_remote_storage_requests_total", code="0") >= 2
        assert abs(gaps(receiver, 0, 1)[0] - 1.5) < 0.2, gaps(receiver, 0, 1)  # 1 s timeout, then 0.5 s backoff
    finally:
        started = time.monotonic()
        hermes.stop()
        assert time.monotonic() - started < 4, "SIGTERM waited past timeout_seconds"
        receiver.close()


OUTAGE_SECONDS = 60


def out_of_reach_for_a_minute():
    """Prometheus out of reach for 60 s (connections refused), then back: retried 0.5, 1, 2, 4, 5, 5 ... s apart
    (max_backoff_seconds 5); every snapshot lands after, in order; Prometheus stored what Hermes sent, counters right."""
    prometheus = Prometheus()
    gate = Gate(int(prometheus.address.rsplit(":", 1)[1]))
    hermes = Hermes(dict(small_config(f"http://127.0.0.1:{gate.port}/api/v1/write", interval_seconds=1, max_backoff_seconds=5),
                         service_name="rw-outage"))
    series = 'jobs_total{job="rw-outage", queue="q"}'
    try:
        hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}, "value": 5}}])
        wait_for(lambda: prometheus.query(series + " == 5"), "the counter before the outage", 10)
        sends = hermes.figure("hermes_remote_storage_requests_total", code="204")
        wait_for(lambda: hermes.figure("hermes_remote_storage_requests_total", code="204") > sends, "a send", 5)
        gate.shut()  # just after a send: none is under way
        down_at = time.time()
        try:
            socket.create_connection(("127.0.0.1", gate.port), timeout=1).close()
            raise AssertionError("the gate still takes connections")
        except ConnectionRefusedError:
            pass
        attempts = attempt_times(hermes, OUTAGE_SECONDS, pushes={OUTAGE_SECONDS / 3: 3})
        pending = hermes.figure("hermes_remote_storage_pending_snapshots")
        gate.open()
        up_at = time.time()
        expected = [min(0.5 * 2 ** i, 5) for i in range(len(attempts) - 1)]
        schedule = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
        # The first attempt within the interval (1 s), four more by 7.5 s, then one every 5 s.
        assert len(attempts) >= 5 + (OUTAGE_SECONDS - 8.5) // 5, schedule
        assert all(abs(g - e) < 0.15 for g, e in zip(schedule, expected)), schedule
        assert hermes.figure("hermes_remote_storage_unanswered_requests_total", reason="connect") == len(attempts)
        assert pending >= OUTAGE_SECONDS - 3, f"{pending} snapshots pending: one a second waits"
        wait_for(lambda: prometheus.query(series + " == 8"), "the counter after the outage", 10)
        figures = accounting_holds(hermes)
        assert figures["failed"] == 0 and figures["dropped"] == 0 and figures[""] == figures["in"], figures
        wait_for(lambda: stored_is_sent(prometheus, hermes), "Prometheus to hold every sample Hermes counts as sent", 5)
        stored = prometheus.query(f"{series}[{int(time.time() - down_at) + 30}s]")[0]["values"]
        stamps = [float(t) for t, _ in stored]
        assert all(0.9 < b - a < 1.5 for a, b in zip(stamps, stamps[1:])), "a snapshot missing: " + repr(stamps)
        assert sum(down_at < t < up_at for t in stamps) >= OUTAGE_SECONDS - 2, "snapshots of the outage missing"
        values = [float(v) for _, v in stored]
        assert values == sorted(values) and values[0] == 5 and values[-1] == 8, values
    finally:
        hermes.stop()
        gate.shut()
        prometheus.close()


def attempt_times(hermes, seconds, pushes):
    """The times at which hermes' count of unanswered requests grew, looked at every 20 ms
    for `seconds`; `pushes` {after seconds: value} are pushed to jobs_total{queue=q} meanwhile."""
    times, started = [], time.monotonic()
    last = hermes.figure("hermes_remote_storage_requests_total", code="0")
    while time.monotonic() - started < seconds:
        for after in [after for after in pushes if time.monotonic() - started >= after]:
            hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}, "value": pushes.pop(after)}}])
        now = hermes.figure("hermes_remote_storage_requests_total", code="0")
        if now != last:
            assert now == last + 1, f"{now - last} attempts within 20 ms"
            times.append(time.monotonic())
        last = now
        time.sleep(0.02)
    return times


def stored_is_sent(prometheus, hermes):
    """Whether the samples Prometheus appended (it scrapes nothing: all came from remote
    write) are those Hermes counts as sent, read twice around Prometheus' figure."""
    sent = hermes.figure("hermes_remote_storage_samples_total")
    text = prometheus.get("/metrics")
    appended = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("prometheus_tsdb_head_samples_appended_total"))
    return sent == appended == hermes.figure("hermes_remote_storage_samples_total")


class Gate:
    """A TCP proxy on a port of its own in front of `port`: shut() cuts every connection
    and closes the port, so that connections are refused; open() takes the port again."""

    def __init__(self, port):
        self.upstream, self.port, self.sockets = port, free_port(), []
        self.open()

    def open(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        threading.Thread(target=self.accept, args=(self.listener,), daemon=True).start()

    def accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def shut(self):
        # close() alone leaves the port listening while accept() blocks on it; shutdown wakes it.
        for each in [self.listener] + self.sockets:
            try:
                each.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            each.close()
        self.sockets = []


def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                sink.shutdown(socket.SHUT_WR)
                return
            sink.sendall(data)
    except OSError:
        pass


def bad_request_drops_the_batch():
    """400: that batch is dropped, counted as failed, logged with the receiver's message."""
    receiver = Receiver(lambda i: (400, {}, b"out of order sample") if i == 0 else (204, {}, b""))
    hermes = Hermes(small_config(receiver.url(), interval_seconds=2, max_samples_per_send=5))
    try:
        wait_for(lambda: len(receiver.requests) >= 4, "later requests", 10)
        refused = len(receiver.requests[0][1])
        assert refused == 5, refused
        assert hermes.figure("hermes_remote_storage_samples_failed_total") == refused
        assert gaps(receiver, 0, 1)[0] < 0.3, "a 400 is not retried"
        wait_for(lambda: any("batches refused" in line and "out of order sample" in line for line in hermes.log),
                 "the log line with the receiver's message", 5)
        figures = accounting_holds(hermes)
        sent = sum(len(series) for _, series, status, _ in receiver.requests if status == 204)
        assert figures[""] == sent, (figures, sent)  # what the receiver took is what hermes counts as sent
    finally:
        hermes.stop()
        receiver.close()


def last_send_at_sigterm():
    """SIGTERM: one last snapshot goes out, with the samples pushed just before."""
    receiver = Receiver()
    hermes = Hermes(small_config(receiver.url(), interval_seconds=60))
    try:
        wait_for(lambda: receiver.requests, "the first snapshot", 10)
        hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}, "value": 42}}])
        time.sleep(0.3)
    finally:
        assert hermes.stop() == 0
        receiver.close()
    assert jobs_values(receiver)[-1] == (42, 204), jobs_values(receiver)


def stale_markers_after_expiry():
    """A series gone past its ttl gets one StaleNaN in the next snapshot, then no more."""
    receiver = Receiver()
    config = small_config(receiver.url(), interval_seconds=0.5)
    config["counters"][0]["ttl_seconds"] = 1
    hermes = Hermes(config)
    try:
        hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}}}])
        wait_for(lambda: any(v is not None and not math.isnan(v) for v, _ in jobs_values(receiver)), "the series", 5)

        def bits(value):
            return struct.unpack("<Q", struct.pack("<d", value))[0]
        wait_for(lambda: any(bits(v) == STALE_NAN for v, _ in jobs_values(receiver)), "a stale marker", 5)
        time.sleep(1.2)
        markers = [v for v, _ in jobs_values(receiver) if bits(v) == STALE_NAN]
        assert len(markers) == 1, markers
    finally:
        hermes.stop()
        receiver.close()


def pending_snapshots_stay_within_the_budget():
    """Receiver down: snapshots take at most a quarter of the budget, oldest dropped; scrapes and new series go on."""
    config = {"service_name": "rw-memory", "gauges": [{"metric_name": "load", "labels": ["board"]}],
              "remote_write": [target(f"http://127.0.0.1:{free_port()}/w", interval_seconds=0.2, max_backoff_seconds=1)]}
    budget = 16 * 1024 * 1024
    hermes = Hermes(config, {"HERMES_MAX_MEMORY": str(budget)})
    try:
        for start in range(0, 3000, 100):  # batches of 100 samples in one datagram each
            batch = [{"metric_name": "load", "payload": {"labels": {"board": f"board-{i:05d}"}, "value": i}}
                     for i in range(start, start + 100)]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for part in range(0, 100, 25):
                    sock.sendto(json.dumps(batch[part:part + 25]).encode(), ("127.0.0.1", hermes.udp_port))
            time.sleep(0.005)
        wait_for(lambda: hermes.figure("hermes_series") == 3000, "3000 series")
        wait_for(lambda: hermes.figure("hermes_remote_storage_samples_dropped_total") > 0, "a snapshot dropped", 20)
        for _ in range(20):
            text = hermes.metrics()  # raises on anything but 200
            pending = hermes.figure("hermes_remote_storage_pending_bytes")
            assert 0 < pending <= budget / 4, pending
            assert hermes.figure("hermes_memory_committed_bytes") <= budget
            time.sleep(0.1)
        hermes.push([{"metric_name": "load", "payload": {"labels": {"board": f"new-{i}"}, "value": 1}} for i in range(50)])
        wait_for(lambda: hermes.figure("hermes_series") == 3050, "the new series")
        assert hermes.figure("hermes_samples_rejected_total", reason="memory_limit") == 0
        assert "hermes_http_requests_total{code=\"503\"} 0" in text, "a scrape was refused"
    finally:
        hermes.stop()


PUSHED = b"""# TYPE done_total counter
done_total{step="a"} 3
# TYPE took_seconds histogram
took_seconds_bucket{le="1"} 2
took_seconds_bucket{le="+Inf"} 3
took_seconds_sum 4.5
took_seconds_count 3
# TYPE lag_seconds summary
lag_seconds{quantile="0.5"} 0.25
lag_seconds_sum 1
lag_seconds_count 4
"""
PUSHED_FAMILIES = ("done_total", "took_seconds", "lag_seconds", "push_time_seconds", "push_failure_time_seconds")


def pushed_in_snapshot(series):
    """{(name, labels): value} of the pushed families in one request: the group keeps its
    own job and instance, as a scrape with honor_labels."""
    found = {}
    for labels, value, _, _ in series:
        name = labels.get("__name__", "")
        if not any(name == n or name.startswith(n + "_") for n in PUSHED_FAMILIES):
            continue
        assert "exported_job" not in labels and "exported_instance" not in labels, labels
        own = {k: v for k, v in labels.items() if k != "__name__"}
        found[(name, tuple(sorted(own.items())))] = value
    return found


def pushed_groups_are_in_snapshots_and_a_deleted_group_goes_stale():
    """A group pushed over the Pushgateway API is in every snapshot with the series and
    values /metrics shows; once deleted, each of its series gets one stale marker."""
    receiver = Receiver()
    hermes = Hermes(small_config(receiver.url(), interval_seconds=0.5))
    group = f"http://{hermes.http}/metrics/job/batch/instance/b1"
    try:
        request = urllib.request.Request(group, data=PUSHED, method="PUT")
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200, answer.status
        expected = exposition(hermes.metrics(), PUSHED_FAMILIES)
        assert len(expected) == 10, expected  # 1 + 4 + 3 samples, and the two push times
        seen = wait_for(lambda: next((pushed_in_snapshot(s) for _, s, _, _ in reversed(receiver.requests)
                                      if pushed_in_snapshot(s)), None), "the pushed group in a snapshot", 5)
        assert seen == expected, (seen, expected)
        with urllib.request.urlopen(urllib.request.Request(group, method="DELETE"), timeout=5) as answer:
            assert answer.status == 202, answer.status
        deleted_at = len(receiver.requests)

        def bits(value):
            return struct.unpack("<Q", struct.pack("<d", value))[0]
        wait_for(lambda: len(receiver.requests) >= deleted_at + 3, "three snapshots after the delete", 5)
        after = [pushed_in_snapshot(s) for _, s, _, _ in receiver.requests[deleted_at:]]
        while after and after[0] == expected:  # a snapshot taken before the delete, sent after it
            after.pop(0)
        assert after and set(after[0]) == set(expected), f"stale markers for every series: {after}"
        assert all(bits(v) == STALE_NAN for v in after[0].values()), after[0]
        assert len(after) >= 2 and not any(after[1:]), f"one snapshot with stale markers, then none: {after}"
    finally:
        hermes.stop()
        receiver.close()


# ---- over TLS: Prometheus serving https, certificates made with openssl here --------------

def openssl(*args, cwd):
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


class Certificates:
    """A CA that signs the receiver's certificate (localhost, 127.0.0.1), Hermes' client
    certificate, one for localhost that expired in 2020 and one for another host
    (elsewhere.example, 10.9.9.9); and a stranger CA that signs nothing Hermes meets."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="hermes-rw-tls-")
        for name in ("ca", "stranger"):
            self.key(name)
            openssl("req", "-x509", "-new", "-key", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
                    cwd=self.folder)
        self.leaf("receiver", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        self.leaf("client", "extendedKeyUsage=clientAuth")
        self.leaf("elsewhere", "subjectAltName=DNS:elsewhere.example,IP:10.9.9.9")
        self.leaf("expired", "subjectAltName=DNS:localhost,IP:127.0.0.1", valid=("20200101000000Z", "20200102000000Z"))

    def key(self, name):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=self.folder)

    def leaf(self, name, extensions, valid=None):
        """A certificate signed by the CA for a day from now, or from and until `valid`'s
        dates (YYYYMMDDHHMMSSZ): OpenSSL 3.0's `x509 -req` only counts days from now, its
        `ca` takes both dates."""
        self.key(name)
        with open(self.path(f"{name}.ext"), "w") as file:
            file.write(extensions + "\n")
        openssl("req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=self.folder)
        if valid is None:
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=self.folder)
            return
        with open(self.path("signer.cnf"), "w") as file:
            file.write("[ca]\ndefault_ca = signer\n[signer]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
                       "default_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n")
        open(self.path("index.txt"), "w").close()
        with open(self.path("serial"), "w") as file:
            file.write("1000\n")
        openssl("ca", "-batch", "-notext", "-config", "signer.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", f"{name}.csr",
                "-out", f"{name}.pem", "-startdate", valid[0], "-enddate", valid[1], "-extfile", f"{name}.ext", cwd=self.folder)

    def path(self, name):
        return os.path.join(self.folder, name)

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class Recorder:
    """A TCP proxy in front of `port` that keeps every byte the client sent: what a
    network between Hermes and the receiver sees."""

    def __init__(self, port):
        self.sent = bytearray()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, args=(port,), daemon=True).start()

    def accept(self, port):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=self.pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, False), daemon=True).start()

    def pipe(self, source, sink, keep):
        try:
            while data := source.recv(65536):
                if keep:
                    self.sent += data
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def prometheus_receives_over_https_with_a_client_certificate():
    """Prometheus 2.42 over https, CA verified, client certificate required: the series
    arrive, one handshake serves every send, nothing is in clear; a stranger CA or a wrong
    server_name is refused in the handshake, counted, and nothing is sent."""
    certs = Certificates()
    web_config = certs.path("web.yml")
    with open(web_config, "w") as file:
        file.write(f"tls_server_config:\n  cert_file: {certs.path('receiver.pem')}\n  key_file: {certs.path('receiver.key')}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.path('ca.pem')}\n")
    prometheus = Prometheus(["--web.config.file=" + web_config], scheme="https",
                            context=client_context(certs))
    recorder = Recorder(int(prometheus.address.rsplit(":", 1)[1]))
    client = {"cert_file": certs.path("client.pem"), "key_file": certs.path("client.key")}
    good = Hermes(dict(small_config(f"https://127.0.0.1:{recorder.port}/api/v1/write", interval_seconds=0.5,
                                    tls=dict(client, ca_file=certs.path("ca.pem"))), service_name="rw-tls"))
    wrong_ca = Hermes(dict(small_config(f"https://localhost:{prometheus.address.rsplit(':', 1)[1]}/api/v1/write",
                                        tls=dict(client, ca_file=certs.path("stranger.pem"))), service_name="rw-stranger"))
    wrong_name = Hermes(dict(small_config(f"https://{prometheus.address}/api/v1/write",
                                          tls=dict(client, ca_file=certs.path("ca.pem"), server_name="elsewhere.example")),
                             service_name="rw-elsewhere"))
    try:
        for hermes in (good, wrong_ca, wrong_name):
            hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}, "value": 7}}])
        wait_for(lambda: prometheus.query('jobs_total{job="rw-tls", queue="q"} == 7'), "the series over https", 15)
        wait_for(lambda: good.figure("hermes_remote_storage_requests_total", code="204") >= 4, "four sends", 10)
        assert good.figure("hermes_remote_storage_connections_total") == 1, "a handshake per send, not per connection"
        assert good.figure("hermes_remote_storage_requests_total", code="0") == 0
        assert b"POST" not in recorder.sent and b"jobs_total" not in recorder.sent, "sent in clear"
        assert recorder.sent[:1] == b"\x16", "the first byte is a TLS handshake record"
        refused_in_the_handshake(wrong_ca, "signed by the trusted CA")
        refused_in_the_handshake(wrong_name, "expected CN")
        for job in ("rw-stranger", "rw-elsewhere"):
            assert not prometheus.query(f'{{job="{job}"}}'), f"{job} reached Prometheus"
    finally:
        for hermes in (good, wrong_ca, wrong_name):
            hermes.stop()
        recorder.close()
        prometheus.close()
        certs.close()


def refused_in_the_handshake(hermes, why):
    """Every request of `hermes` failed in the TLS handshake (at least two, retried), none
    was answered or took a connection, and the log says `why` in mbedTLS' words."""
    wait_for(lambda: hermes.figure("hermes_remote_storage_unanswered_requests_total", reason="tls_handshake") >= 2,
             "handshakes refused", 10)
    text = hermes.metrics()
    figures = exposition(text, ["hermes_remote_storage_requests_total", "hermes_remote_storage_unanswered_requests_total"])
    requests = sum(v for (name, _), v in figures.items() if name == "hermes_remote_storage_requests_total")
    by_reason = {dict(labels)["reason"]: v for (name, labels), v in figures.items()
                 if name == "hermes_remote_storage_unanswered_requests_total"}
    assert requests == by_reason["tls_handshake"] and sum(by_reason.values()) == requests, (requests, by_reason)
    assert hermes.figure("hermes_remote_storage_samples_total") == 0
    assert hermes.figure("hermes_remote_storage_connections_total") == 0
    wait_for(lambda: any("TLS handshake" in line and why in line for line in hermes.log), f"the log line: {why}", 5)


def expired_or_other_host_certificates_are_refused():
    """A receiver certificate that expired, or one made for another host than the URL's
    (its DNS name, its IP address), fails the handshake: counted, logged, nothing sent; the
    same receiver is reached under the name its certificate holds."""
    import ssl
    certs = Certificates()
    receivers = {}
    for name in ("expired", "elsewhere"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.path(f"{name}.pem"), certs.path(f"{name}.key"))
        receivers[name] = Receiver(tls=context)

    def over_https(host, receiver, service, **tls):
        return Hermes(dict(small_config(f"https://{host}:{receiver.port}/api/v1/write", interval_seconds=0.5,
                                        tls=dict(ca_file=certs.path("ca.pem"), **tls)), service_name=service))
    started = [over_https("127.0.0.1", receivers["expired"], "rw-expired"),
               over_https("localhost", receivers["elsewhere"], "rw-by-name"),
               over_https("127.0.0.1", receivers["elsewhere"], "rw-by-address"),
               over_https("127.0.0.1", receivers["elsewhere"], "rw-named", server_name="elsewhere.example")]
    expired, by_name, by_address, named = started
    try:
        wait_for(lambda: named.figure("hermes_remote_storage_requests_total", code="204") >= 2, "sends under the right name", 10)
        refused_in_the_handshake(expired, "validity has expired")
        refused_in_the_handshake(by_name, "expected CN")
        refused_in_the_handshake(by_address, "expected CN")
        assert not receivers["expired"].requests, "a request reached the receiver with the expired certificate"
        jobs = {labels["job"] for _, series, _, _ in receivers["elsewhere"].requests for labels, _, _, _ in series}
        assert jobs == {"rw-named"}, jobs
    finally:
        for hermes in started:
            hermes.stop()
        for receiver in receivers.values():
            receiver.close()
        certs.close()


def prometheus_takes_basic_auth_over_https():
    """Prometheus 2.42 over https with basic_auth_users (a bcrypt hash): with the right
    password the series arrive; with a wrong one every request gets 401, each batch is
    dropped and counted as failed, logged with Prometheus' answer, and nothing is stored."""
    import base64
    import bcrypt  # Debian's python3-bcrypt
    import ssl
    certs = Certificates()
    password, wrong = "correct horse: battery", "correct horse: battery!"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()  # 4: the fewest Go's bcrypt takes
    with open(certs.path("web.yml"), "w") as file:
        file.write(f"tls_server_config:\n  cert_file: {certs.path('receiver.pem')}\n  key_file: {certs.path('receiver.key')}\n"
                   f"basic_auth_users:\n  hermes: '{hashed}'\n")
    for name, secret in (("right", password), ("wrong", wrong)):
        with open(certs.path(name), "w") as file:
            file.write(secret + "\n")
    authorization = "Basic " + base64.b64encode(f"hermes:{password}".encode()).decode()
    prometheus = Prometheus(["--web.config.file=" + certs.path("web.yml")], scheme="https",
                            context=ssl.create_default_context(cafile=certs.path("ca.pem")),
                            headers={"Authorization": authorization})

    def writer(service, password_file):
        return Hermes(dict(small_config(f"https://localhost:{prometheus.address.rsplit(':', 1)[1]}/api/v1/write",
                                        interval_seconds=0.5, tls={"ca_file": certs.path("ca.pem")},
                                        basic_auth={"username": "hermes", "password_file": certs.path(password_file)}),
                           service_name=service))
    good, refused = writer("rw-basic", "right"), writer("rw-wrong-password", "wrong")
    try:
        prometheus.headers = {}
        try:
            prometheus.get("/api/v1/query?query=up")
            raise AssertionError("Prometheus answered without a password")
        except urllib.error.HTTPError as error:
            assert error.code == 401, error.code
        prometheus.headers = {"Authorization": authorization}
        for hermes in (good, refused):
            hermes.push([{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q"}, "value": 7}}])
        wait_for(lambda: prometheus.query('jobs_total{job="rw-basic", queue="q"} == 7'), "the series with basic auth", 15)
        assert good.figure("hermes_remote_storage_requests_total", code="401") == 0
        wait_for(lambda: refused.figure("hermes_remote_storage_requests_total", code="401") >= 3, "three refusals", 10)
        wait_for(lambda: any("batches refused" in line and "401 Unauthorized" in line for line in refused.log),
                 "the log line with Prometheus' answer", 5)
        figures = accounting_holds(refused)
        assert figures[""] == 0 and figures["dropped"] == 0 and figures["failed"] == figures["in"] > 0, figures
        answered = refused.figure("hermes_remote_storage_requests_total")
        assert answered == refused.figure("hermes_remote_storage_requests_total", code="401"), "a request not refused"
        assert not prometheus.query('{job="rw-wrong-password"}'), "a wrong password reached Prometheus' storage"
        for hermes in (good, refused):
            assert not any(password in line or wrong in line for line in hermes.log), "a password in the log"
    finally:
        for hermes in (good, refused):
            hermes.stop()
        prometheus.close()
        certs.close()


def client_context(certs):
    import ssl
    context = ssl.create_default_context(cafile=certs.path("ca.pem"))
    context.load_cert_chain(certs.path("client.pem"), certs.path("client.key"))
    return context


def failure_of(test):
    """None when `test` passes, else its traceback."""
    try:
        test()
        return None
    except Exception:
        return traceback.format_exc()


def main():
    passed = failed = 0

    def report(what, failure):
        nonlocal passed, failed
        passed, failed = (passed + 1, failed) if failure is None else (passed, failed + 1)
        print(f"ok   {what}" if failure is None else f"FAIL {what}\n{failure}")

    # The minute-long outage runs beside the other tests, so that it costs the suite
    # little more than the time they take anyway.
    outage = {}
    beside = threading.Thread(target=lambda: outage.update(failure=failure_of(out_of_reach_for_a_minute)), daemon=True)
    beside.start()
    if shutil.which("prometheus") is None:
        report("Prometheus is installed", "prometheus is not installed (apt-get install prometheus)")
    else:
        checks = {}
        try:
            prometheus_end_to_end(checks)
        except Exception:
            checks.setdefault("end to end with Prometheus", traceback.format_exc())
        for what, failure in checks.items():
            report(what, failure)
    for test in (backoff_after_500, retry_after_429, never_answers, bad_request_drops_the_batch,
                 last_send_at_sigterm, stale_markers_after_expiry, pending_snapshots_stay_within_the_budget,
                 pushed_groups_are_in_snapshots_and_a_deleted_group_goes_stale,
                 prometheus_receives_over_https_with_a_client_certificate, expired_or_other_host_certificates_are_refused,
                 prometheus_takes_basic_auth_over_https):
        report(test.__doc__.splitlines()[0], failure_of(test))
    beside.join()
    report(out_of_reach_for_a_minute.__doc__.splitlines()[0], outage["failure"])
    print(f"remote_write: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
