#!/usr/bin/env python3
"""Black-box tests of the built hermes binary: start it on loopback port 0 with a
temporary config, push real datagrams, scrape, signal it, and read its exit codes.

usage: blackbox.py PATH_TO_HERMES
Ends with the line "blackbox: N passed, N failed".
"""
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERMES = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./hermes")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = []

SAMPLE_CONFIG = {
    "service_name": "testing-service",
    "gauges": [{"metric_name": "sample_gauge", "metric_description": "gauges are awesome",
                "labels": ["label_1", "label_2"]}],
    "counters": [{"metric_name": "sample_counter", "metric_description": "counters are awesome too",
                  "labels": ["label_1"]},
                 {"metric_name": "plain_counter"}],
}


def test(function):
    TESTS.append(function)
    return function


DEBIAN_PYTHON = "/usr/bin/python3"  # Debian's python3-* packages install where it looks


def debian_module(suite, module, package):
    """Imports `module`; when this python lacks it, runs the suite again under Debian's
    python3, where `package` installs it; without it there either, the suite fails."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON) and os.path.exists(DEBIAN_PYTHON):
            os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)
        print(f"{suite}: {package} is missing (make test-deps installs it)", file=sys.stderr)
        print(f"{suite}: 0 passed, 1 failed")
        sys.exit(1)


def write_config(content):
    handle, path = tempfile.mkstemp(prefix="hermes-", suffix=".json")
    with os.fdopen(handle, "w") as file:
        file.write(content if isinstance(content, str) else json.dumps(content))
    return path


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HERMES_") and k not in ("LISTEN_ADDRESS", "LISTEN_PORT", "LOG_LEVEL", "CONFIG_FILE_PATH")}
    env.update(extra)
    return env


def read_to_end(sock):
    """Everything `sock` gives until the peer closes, as text."""
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


def read_answer(sock):
    """One answer on a connection that stays open, as far as its Content-Length says, as text."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received + body!r}"
        body += chunk
    assert len(body) == length, f"more than the answer: {body[length:]!r}"
    return (head + b"\r\n\r\n" + body).decode("utf-8")


HEALTHY_11 = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\nHermes is Healthy.\n"
READY_11_CLOSE = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
                  "Connection: close\r\n\r\nHermes is Ready.\n")


def kept_alive_answers(sock, count=10):
    """`count` GET /-/healthy on one connection, each answered at once, then one that closes it:
    the seconds each answer took."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: h\r\n\r\n")
        check_equal(read_answer(sock), HEALTHY_11, "an answer on a kept-alive connection")
        took.append(time.monotonic() - started)
    sock.sendall(b"GET /-/healthy HTTP/1.1\r\n\r\nGET /-/ready HTTP/1.1\r\nConnection: close\r\n\r\n")  # sent ahead
    check_equal(read_to_end(sock), HEALTHY_11 + READY_11_CLOSE, "two requests sent ahead, the second closing")
    # Nagle's algorithm with the client's delayed ACK would hold an answer's last part 40 ms.
    assert sorted(took)[count // 2] < 0.02, f"answers took {took}"
    return took


class Hermes:
    """A running hermes on loopback, ports chosen by the kernel."""

    def __init__(self, config=None, env=None, args=None, address="127.0.0.1", preexec_fn=None, command=None):
        self.config_path = write_config(config or SAMPLE_CONFIG)
        base = {"HERMES_UDP_ADDRESS": address, "HERMES_HTTP_ADDRESS": address,
                "HERMES_UDP_PORT": "0", "HERMES_HTTP_PORT": "0"}
        base.update(env or {})
        command = command or [HERMES] + (args if args is not None else [self.config_path])
        self.process = subprocess.Popen(command, env=clean_env(**base), stderr=subprocess.PIPE, text=True,
                                        preexec_fn=preexec_fn)
        self.log = []
        line = self.read_log_line()
        match = re.search(r" udp=(\S+):(\d+) http=(\S+):(\d+) ", line)
        assert match, f"no listening line, got {line!r}"
        self.udp_host, self.udp_port = match.group(1).strip("[]"), int(match.group(2))
        self.http_host, self.http_port = match.group(3).strip("[]"), int(match.group(4))
        tcp = re.search(r" statsd_tcp=\S+:(\d+) ", line)  # with HERMES_STATSD_TCP_PORT only
        self.statsd_tcp_port = int(tcp.group(1)) if tcp else None

    def read_log_line(self):
        line = self.process.stderr.readline()
        self.log.append(line)
        return line

    def push(self, *datagrams):
        """Sends datagrams and waits until hermes has counted them all."""
        before = self.metric("hermes_udp_packets_total")
        family = socket.AF_INET6 if ":" in self.udp_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for datagram in datagrams:
                sock.sendto(datagram if isinstance(datagram, bytes) else datagram.encode(), (self.udp_host, self.udp_port))
        self.wait_for("hermes_udp_packets_total", before + len(datagrams))

    def push_paced(self, datagrams, window=32):
        """Sends many datagrams, `window` at a time, each window counted before the next,
        so that no datagram is lost to a full socket buffer."""
        family = socket.AF_INET6 if ":" in self.udp_host else socket.AF_INET
        counted = self.metric("hermes_udp_packets_total")
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            for start in range(0, len(datagrams), window):
                chunk = datagrams[start:start + window]
                for datagram in chunk:
                    sock.sendto(datagram if isinstance(datagram, bytes) else datagram.encode(), (self.udp_host, self.udp_port))
                counted += len(chunk)
                self.wait_for("hermes_udp_packets_total", counted)

    def metrics(self):
        """Every sample of a scrape, as {series: value}."""
        samples = {}
        for line in self.scrape().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                samples[series] = float(value)
        return samples

    def request(self, raw):
        family = socket.AF_INET6 if ":" in self.http_host else socket.AF_INET
        with socket.create_connection((self.http_host, self.http_port), timeout=5) as sock:
            sock.sendall(raw if isinstance(raw, bytes) else raw.encode())
            return read_to_end(sock)

    def scrape(self):
        response = self.request("GET /metrics HTTP/1.0\r\n\r\n")
        head, _, body = response.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.0 200 OK\r\n"), head
        return body

    def metric(self, series):
        for line in self.scrape().splitlines():
            if line.startswith(series + " "):
                return float(line[len(series) + 1:])
        return None

    def wait_for(self, series, value, seconds=3):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.metric(series) == value:
                return
            time.sleep(0.01)
        raise AssertionError(f"{series} is {self.metric(series)}, expected {value}")

    def stop(self, sig=signal.SIGTERM):
        """Signals hermes; returns its exit code and the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout=5)
        self.log.extend(self.process.stderr.readlines())
        return code, time.monotonic() - started

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()
        os.unlink(self.config_path)


def run_hermes(args, env=None, timeout=5):
    result = subprocess.run([HERMES] + args, env=clean_env(**(env or {})), capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def check_equal(actual, expected, what=""):
    assert actual == expected, f"{what}: expected {expected!r}, got {actual!r}"


# ---- tests ----------------------------------------------------------------------------------

@test
def every_datagram_kind_is_applied_exactly(hermes):
    hermes.push(
        '{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "testing label 1"}}}',
        '{"metric_name":"sample_counter","payload":{"labels":{"label_1":"testing label 1"}}}',
        '{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "x"}, "value": 2.5}}',
        '{"metric_name": "plain_counter"}',
        '{"metric_name":"plain_counter","payload":{"labels":null}}',
        '{"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": 65.4}}',
        '{"metric_name": "sample_gauge", "payload": {"operation": "increment", "labels": {"label_1": "a", "label_2": "b"}, "value": null}}',
        '{"metric_name":"sample_gauge","payload":{"operation":"decrement","value":null,"labels":{"label_1":"c","label_2":"d"}}}',
        '{"metric_name":"sample_gauge","payload":{"operation":"set","value":-3e-7,"labels":{"label_1":"e","label_2":"f"}}}',
        '[{"metric_name": "plain_counter", "payload": {"value": 10}}, {"metric_name": "plain_counter"}]',
    )
    body = hermes.scrape()
    for line in ('sample_counter{label_1="testing label 1"} 2', 'sample_counter{label_1="x"} 2.5', "plain_counter 13",
                 'sample_gauge{label_1="a",label_2="b"} 66.4', 'sample_gauge{label_1="c",label_2="d"} -1',
                 'sample_gauge{label_1="e",label_2="f"} -3e-07', "hermes_samples_accepted_total 11", "hermes_series 6",
                 "hermes_udp_packets_total 10"):
        assert line in body.splitlines(), f"missing {line!r} in\n{body}"


@test
def every_reject_reason_is_counted(_):
    config = dict(SAMPLE_CONFIG, counters=SAMPLE_CONFIG["counters"] + [
        {"metric_name": "limited_counter", "labels": ["id"], "max_series": 1}])
    hermes = Hermes(config)
    try:
        check_every_reject_reason(hermes)
    finally:
        hermes.close()


def check_every_reject_reason(hermes):
    hermes.push(
        '{"metric_name": "limited_counter", "payload": {"labels": {"id": "1"}}}',
        '{"metric_name": "limited_counter", "payload": {"labels": {"id": "2"}}}',
        "{not json",
        '{"metric": "sample_counter"}',
        '{"metric_name": "missing_metric"}',
        '{"metric_name": "sample_counter", "payload": {"labels": {"label_9": "x"}}}',
        b'{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "\xff\xfe"}}}',
        '{"metric_name": "plain_counter", "payload": {"value": -1}}',
        '{"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "operation": "reset"}}',
        "[" + " " * 9000 + "]",
        "users:1|s",
        '{"metric_name": "plain_counter", "payload": {"value": 1}}',
    )
    body = hermes.scrape().splitlines()
    for reason in ("malformed_json", "malformed_sample", "unknown_metric", "label_mismatch", "invalid_label_value",
                   "invalid_value", "invalid_operation", "series_limit", "too_large", "unsupported_type"):
        assert f'hermes_samples_rejected_total{{reason="{reason}"}} 1' in body, f"{reason} not counted once"
    assert "plain_counter 1" in body
    assert 'limited_counter{id="1"} 1' in body
    assert "hermes_samples_accepted_total 2" in body


@test
def the_example_script_pushes_the_sample_metrics(hermes):
    subprocess.run([sys.executable, os.path.join(ROOT, "example", "send_metric.py"), "127.0.0.1", str(hermes.udp_port)],
                   check=True, capture_output=True)
    hermes.wait_for("hermes_udp_packets_total", 2)
    body = hermes.scrape().splitlines()
    assert 'sample_counter{label_1="testing label 1"} 1' in body
    assert 'sample_gauge{label_1="testing label 1",label_2="testing label 2"} 67.4' in body


@test
def a_kept_alive_connection_carries_requests_one_after_another(hermes):
    with socket.create_connection((hermes.http_host, hermes.http_port), timeout=5) as sock:
        kept_alive_answers(sock)
    assert 'hermes_http_requests_total{code="200"} 12' in hermes.scrape().splitlines()


@test
def http_answers(hermes):
    metrics = hermes.request("GET /metrics?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = metrics.partition("\r\n\r\n")
    check_equal(head, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                      f"Content-Length: {len(body.encode())}\r\nConnection: close", "GET /metrics")
    check_equal(hermes.request("HEAD /metrics HTTP/1.0\r\n\r\n").partition("\r\n\r\n")[2], "", "HEAD body")
    check_equal(hermes.request("GET /-/healthy HTTP/1.0\r\n\r\n").partition("\r\n\r\n")[2], "Hermes is Healthy.\n")
    check_equal(hermes.request("GET /-/ready HTTP/1.0\r\n\r\n").partition("\r\n\r\n")[2], "Hermes is Ready.\n")
    assert "/metrics" in hermes.request("GET / HTTP/1.0\r\n\r\n")
    assert hermes.request("GET /nope HTTP/1.0\r\n\r\n").startswith("HTTP/1.0 404 Not Found\r\n")
    answer = hermes.request("PUT /metrics HTTP/1.0\r\n\r\n")
    assert answer.startswith("HTTP/1.0 405 Method Not Allowed\r\n") and "\r\nAllow: GET, HEAD\r\n" in answer, answer
    assert hermes.request("garbage\r\n\r\n").startswith("HTTP/1.0 400 Bad Request\r\n")
    huge = "GET / HTTP/1.0\r\nX: " + "a" * 9000 + "\r\n\r\n"
    assert hermes.request(huge).startswith("HTTP/1.0 431 Request Header Fields Too Large\r\n")
    body = hermes.scrape().splitlines()
    for code, count in (("200", 5), ("404", 1), ("405", 1), ("400", 1), ("431", 1)):
        assert f'hermes_http_requests_total{{code="{code}"}} {count}' in body, f"code {code} not {count}"


@test
def a_silent_client_is_closed_and_stalls_nothing(hermes):
    with socket.create_connection((hermes.http_host, hermes.http_port)) as silent:
        silent.sendall(b"GET /metr")
        started = time.monotonic()
        hermes.push('{"metric_name": "plain_counter"}')
        assert "plain_counter 1" in hermes.scrape().splitlines()
        silent.settimeout(10)
        check_equal(silent.recv(100), b"", "a silent client's connection")
        waited = time.monotonic() - started
        assert 4 < waited < 7, f"closed after {waited:.1f}s, expected the 5s read timeout"


@test
def sigterm_and_sigint_exit_0_within_a_second(hermes):
    hermes.push('{"metric_name": "plain_counter"}')
    code, took = hermes.stop(signal.SIGTERM)
    check_equal(code, 0, "exit code after SIGTERM")
    assert took < 1, f"took {took:.2f}s"
    assert 'level=info msg="hermes stopped"' in "".join(hermes.log)
    other = Hermes()
    try:
        code, took = other.stop(signal.SIGINT)
        check_equal(code, 0, "exit code after SIGINT")
        assert took < 1, f"took {took:.2f}s"
    finally:
        other.close()


def has_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@test
def the_listening_line_names_actual_addresses(hermes):
    line = hermes.log[0]
    assert line.startswith('level=info msg="hermes listening" udp=127.0.0.1:'), line
    assert f"udp=127.0.0.1:{hermes.udp_port} http=127.0.0.1:{hermes.http_port} service=testing-service" in line, line
    assert hermes.udp_port != 0 and hermes.http_port != 0
    if not has_ipv6_loopback():
        print("     this host has no IPv6 loopback: the [::1] half is not run here")
        return
    v6 = Hermes(address="::1")
    try:
        assert f"udp=[::1]:{v6.udp_port} http=[::1]:{v6.http_port}" in v6.log[0], v6.log[0]
        v6.push('{"metric_name": "plain_counter"}')
        assert "plain_counter 1" in v6.scrape().splitlines()
    finally:
        v6.close()


@test
def debug_logging_names_each_reject_reason(hermes):
    debug = Hermes(env={"LOG_LEVEL": "DEBUG"})
    try:
        debug.push('{"metric_name": "nope"}')
        line = debug.read_log_line()
        check_equal(line.strip(), 'level=debug msg="sample rejected" reason=unknown_metric count=1 '
                                  'datagram="{\\"metric_name\\": \\"nope\\"}"', "debug line")
        check_equal(debug.read_log_line().strip(), 'level=warn msg="samples rejected" counts="unknown_metric=1"', "warn")
    finally:
        debug.close()


@test
def config_errors_stop_start_up_with_exit_2(hermes):
    cases = [
        ('{"service_name": "s",\n "counters": [{"metric_name": "ok"}, {"metric_name": "bad-name"}]}',
         ': counters[1].metric_name: "bad-name" is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)'),
        ('{"service_name": "s",\n "gauges": [\n', ": not valid JSON: syntax error at line 3 near: "),
        ('{"gauges": []}', ": service_name: missing: every config names its service"),
        ('{"service_name": "s", "counters": [{"metric_name": "c", "lables": []}]}',
         ": counters[0].lables: unknown key (expected one of: metric_name, metric_description, labels, max_series, ttl_seconds)"),
    ]
    for content, message in cases:
        path = write_config(content)
        try:
            code, out, err = run_hermes([path])
            check_equal(code, 2, f"exit code for {content!r}")
            check_equal(err, f"hermes: {path}{message}\n", "message")
            code, out, err = run_hermes(["--check-config", path])
            check_equal(code, 2, "--check-config exit code")
            check_equal(err, f"hermes: {path}{message}\n", "--check-config message")
        finally:
            os.unlink(path)
    code, _, err = run_hermes(["/nonexistent/config.json"])
    check_equal((code, err), (2, "hermes: /nonexistent/config.json: cannot read: No such file or directory\n"))


@test
def check_config_version_help_and_usage(hermes):
    code, out, err = run_hermes(["--check-config", hermes.config_path])
    path = hermes.config_path
    check_equal((code, err), (0, ""), "--check-config of a good config")
    lines = out.splitlines()
    memory = re.fullmatch(rf"{re.escape(path)}: memory: at most (\d+) bytes with every metric at its max_series "
                          r"\(each series with its room in 2 /metrics bodies, label values of up to 15 bytes\), "
                          r"(\d+) of fixed buffers; budget 67108864 bytes", lines.pop(1))
    assert memory and int(memory.group(1)) > 3 * 10000 * 64, lines
    code, out, _ = run_hermes(["--check-config", hermes.config_path], env={"HERMES_COMPRESSION": "off"})
    plain = re.search(r"(\d+) of fixed buffers", out.splitlines()[1])
    compressor = int(memory.group(2)) - int(plain.group(1))  # zlib's state and the chunk its output waits in
    assert 256 * 1024 + 65536 < compressor < 300 * 1024 + 65536, (memory.group(2), plain.group(1))
    code, out, _ = run_hermes(["--check-config", hermes.config_path], env={"HERMES_STATE_FILE": "/nonexistent/state.json"})
    check_equal(out.splitlines()[0], f"{path}: ok, 3 metrics")
    assert re.fullmatch(rf"{re.escape(path)}: memory: the state file's text takes at most (\d+) bytes more while a write is made",
                        out.splitlines()[2]), out
    code, out, _ = run_hermes(["--check-config", hermes.config_path], env={"HERMES_MAX_MEMORY": "8MiB"})
    assert out.splitlines()[1].endswith("budget 8388608 bytes, so new series are refused as memory_limit once it is used"), out
    check_equal(lines, [f"{path}: ok, 3 metrics",
                                   f"{path}: warning: sample_gauge: metric name should not include type 'gauge'",
                                   f'{path}: warning: sample_counter: counter metrics should have "_total" suffix',
                                   f"{path}: warning: sample_counter: metric name should not include type 'counter'",
                                   f"{path}: warning: plain_counter: no help text",
                                   f'{path}: warning: plain_counter: counter metrics should have "_total" suffix',
                                   f"{path}: warning: plain_counter: metric name should not include type 'counter'"])
    code, out, _ = run_hermes(["--version"])
    assert code == 0 and re.fullmatch(r"hermes \d+\.\d+\.\d+\n", out), out
    code, out, _ = run_hermes(["--help"])
    assert code == 0 and out.startswith("usage: hermes [--check-config]"), out
    code, _, err = run_hermes(["--frobnicate"])
    check_equal((code, err), (2, "hermes: unknown option --frobnicate (see hermes --help)\n"))
    code, _, err = run_hermes(["a.json", "b.json"])
    check_equal((code, err), (2, "hermes: more than one config path: a.json and b.json\n"))


@test
def bad_environment_values_exit_2_naming_the_variable(hermes):
    for name, value, message in (("HERMES_UDP_PORT", "abc", "is not a port number (0-65535)"),
                                 ("LISTEN_PORT", "70000", "is not a port number (0-65535)"),
                                 ("HERMES_HTTP_PORT", "-5", "is not a port number (0-65535)"),
                                 ("HERMES_LOG_LEVEL", "chatty", "is not a log level (debug, info, warn, error)")):
        code, _, err = run_hermes([hermes.config_path], env={name: value})
        check_equal((code, err), (2, f'hermes: {name}: "{value}" {message}\n'), name)


@test
def a_port_in_use_exits_1_naming_address_and_error(hermes):
    code, _, err = run_hermes([hermes.config_path], env={"HERMES_HTTP_ADDRESS": "127.0.0.1",
                                                         "HERMES_HTTP_PORT": str(hermes.http_port), "HERMES_UDP_PORT": "0"})
    check_equal((code, err), (1, f"hermes: bind http 127.0.0.1:{hermes.http_port}: Address already in use\n"))
    code, _, err = run_hermes([hermes.config_path], env={"HERMES_UDP_ADDRESS": "127.0.0.1",
                                                         "HERMES_UDP_PORT": str(hermes.udp_port), "HERMES_HTTP_PORT": "0"})
    check_equal((code, err), (1, f"hermes: bind udp 127.0.0.1:{hermes.udp_port}: Address already in use\n"))


@test
def the_original_environment_names_and_config_keys_work(hermes):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    config = dict(SAMPLE_CONFIG, listen_address="127.0.0.1", listen_port=free_port)
    path = write_config(config)
    env = {"CONFIG_FILE_PATH": path, "HERMES_HTTP_ADDRESS": "127.0.0.1", "HERMES_HTTP_PORT": "0"}
    process = subprocess.Popen([HERMES], env=clean_env(**env), stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert f"udp=127.0.0.1:{free_port} " in line, line
    finally:
        process.terminate()
        check_equal(process.wait(timeout=5), 0, "exit code")
        process.stderr.close()
    env = {"CONFIG_FILE_PATH": path, "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": "0",
           "HERMES_HTTP_ADDRESS": "127.0.0.1", "HERMES_HTTP_PORT": "0"}
    process = subprocess.Popen([HERMES], env=clean_env(**env), stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert "udp=127.0.0.1:" in line and f"udp=127.0.0.1:{free_port} " not in line, line
    finally:
        process.terminate()
        check_equal(process.wait(timeout=5), 0, "exit code")
        process.stderr.close()
        os.unlink(path)


@test
def promtool_parses_the_output_and_lints_only_configured_names(hermes):
    config = {"service_name": "lint",
              "gauges": [{"metric_name": "sample_gauge", "labels": ["label_1", "label_2"]},
                         {"metric_name": "latency_ms", "metric_description": "abbreviated"}],
              "counters": [{"metric_name": "sample_counter", "metric_description": "no suffix", "labels": ["label_1"]},
                           {"metric_name": "jobs_total", "metric_description": "clean", "labels": ["queue"]}]}
    linted = Hermes(config)
    try:
        linted.push('{"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": 1}}',
                    '{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "a"}}}',
                    '{"metric_name": "jobs_total", "payload": {"labels": {"queue": "q\\"\\n"}}}')
        result = subprocess.run(["promtool", "check", "metrics"], input=linted.scrape(), capture_output=True, text=True)
        output = (result.stdout + result.stderr).strip().splitlines()
        assert not any("error" in line for line in output), output
        findings = sorted(output)
        _, advice, _ = run_hermes(["--check-config", linted.config_path])
        prefix = linted.config_path + ": warning: "
        expected = sorted(line[len(prefix):].replace(": ", " ", 1) for line in advice.splitlines() if line.startswith(prefix))
        check_equal(findings, expected, "promtool's findings against --check-config's warnings")
        assert len(expected) == 5, expected
        assert not any(line.startswith(("hermes_", "process_")) for line in findings), findings
    finally:
        linted.close()


@test
def histograms_and_summaries_take_the_original_clients_observations(_):
    config = dict(SAMPLE_CONFIG,
                  histograms=[{"metric_name": "request_seconds", "metric_description": "latency", "labels": ["route"]}],
                  summaries=[{"metric_name": "payload_bytes", "metric_description": "sizes", "labels": ["route"],
                              "objectives": {"0.5": 0.05}}])
    hermes = Hermes(config)
    try:
        for observation in (0.003, 0.2, 0.2, 7, 11):
            hermes.push(json.dumps({"metric_name": "request_seconds",
                                    "payload": {"labels": {"route": "/"}, "observation": observation}}))
        for size in (100, 200, 300):
            hermes.push(json.dumps({"metric_name": "payload_bytes", "payload": {"labels": {"route": "/"}, "observation": size}}))
        samples = hermes.metrics()
        for le, count in (("0.005", 1), ("0.1", 1), ("0.25", 3), ("5", 3), ("10", 4), ("+Inf", 5)):
            check_equal(samples[f'request_seconds_bucket{{route="/",le="{le}"}}'], count, f"bucket le={le}")
        check_equal(samples['request_seconds_sum{route="/"}'], 18.403, "sum")
        check_equal(samples['request_seconds_count{route="/"}'], 5, "count")
        check_equal(samples['payload_bytes{route="/",quantile="0.5"}'], 200, "median")
        check_equal(samples['payload_bytes_count{route="/"}'], 3, "summary count")
    finally:
        hermes.close()


@test
def sighup_reloads_the_config_and_a_bad_one_changes_nothing(hermes):
    hermes.push('{"metric_name": "plain_counter", "payload": {"value": 5}}')
    with open(hermes.config_path, "w") as file:
        json.dump(dict(SAMPLE_CONFIG, gauges=SAMPLE_CONFIG["gauges"] + [{"metric_name": "added_gauge"}]), file)
    hermes.process.send_signal(signal.SIGHUP)
    check_equal(hermes.read_log_line().strip(),
                f'level=info msg="config reloaded" path={hermes.config_path} kept=3 fresh=1 removed=0', "reload log")
    samples = hermes.metrics()
    check_equal(samples["plain_counter"], 5, "a kept metric's value")
    check_equal(samples["added_gauge"], 0, "the added metric")
    check_equal(samples['hermes_config_reloads_total{result="success"}'], 1, "successes")
    with open(hermes.config_path, "w") as file:
        file.write('{"service_name": ')
    hermes.process.send_signal(signal.SIGHUP)
    line = hermes.read_log_line()
    assert line.startswith('level=error msg="config reload failed; the config in force stays" error='), line
    samples = hermes.metrics()
    check_equal(samples['hermes_config_reloads_total{result="failure"}'], 1, "failures")
    check_equal(samples["added_gauge"], 0, "the config in force")
    assert hermes.process.poll() is None


@test
def the_unix_socket_takes_samples(_):
    folder = tempfile.mkdtemp(prefix="hermes-unix-")
    path = os.path.join(folder, "hermes.sock")
    hermes = Hermes(env={"HERMES_UNIX_SOCKET": path, "HERMES_UNIX_SOCKET_MODE": "600"})
    try:
        assert f" unix={path} " in hermes.log[0], hermes.log[0]
        check_equal(oct(os.stat(path).st_mode & 0o777), "0o600", "socket mode")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b'{"metric_name": "plain_counter", "payload": {"value": 2}}', socket.MSG_DONTWAIT, path)
        hermes.wait_for("hermes_unix_datagrams_total", 1)
        check_equal(hermes.metric("plain_counter"), 2, "the sample")
        check_equal(hermes.stop()[0], 0, "exit code")
        assert not os.path.exists(path), "the socket file is removed at exit"
    finally:
        hermes.close()
        os.rmdir(folder)


FORBIDDEN_403 = ("HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n"
                 "Connection: close\r\n\r\n403 Forbidden\n")
UNAUTHORIZED_401 = ("HTTP/1.0 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 17\r\n"
                    "WWW-Authenticate: Bearer\r\nConnection: close\r\n\r\n401 Unauthorized\n")


def request_from(source, port, raw):
    """One HTTP exchange with hermes on 127.0.0.1 from the loopback address `source`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(raw.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8")


@test
def allow_lists_from_the_environment_drop_and_refuse_other_addresses(_):
    hermes = Hermes(env={"HERMES_UDP_ALLOW": "192.0.2.0/24, 127.0.0.1", "HERMES_HTTP_ALLOW": "127.0.0.1/32,::1"})
    try:
        assert " udp_allow=192.0.2.0/24,127.0.0.1 http_allow=127.0.0.1/32,::1 " in hermes.log[0], hermes.log[0]
        sample = b'{"metric_name": "plain_counter", "payload": {"value": 2}}'
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))  # on Linux the whole of 127/8 is loopback
            sock.sendto(sample, ("127.0.0.1", hermes.udp_port))
            sock.sendto(b"not even JSON", ("127.0.0.1", hermes.udp_port))
        hermes.wait_for("hermes_udp_packets_total", 2)
        hermes.push(sample)  # from 127.0.0.1
        samples = hermes.metrics()
        check_equal(samples["plain_counter"], 2, "only the allowed datagram")
        check_equal(samples['hermes_samples_rejected_total{reason="forbidden_source"}'], 2, "forbidden_source")
        check_equal(samples['hermes_samples_rejected_total{reason="malformed_json"}'], 0, "never parsed")
        check_equal(request_from("127.0.0.2", hermes.http_port, "GET /metrics HTTP/1.0\r\n\r\n"), FORBIDDEN_403, "403")
        check_equal(request_from("127.0.0.2", hermes.http_port, "GET /-/healthy HTTP/1.0\r\n\r\n"), FORBIDDEN_403, "403")
        check_equal(hermes.metric('hermes_http_requests_total{code="403"}'), 2, "403s counted")
    finally:
        hermes.close()


@test
def a_token_file_guards_metrics_and_sighup_reads_it_again(_):
    handle, token_path = tempfile.mkstemp(prefix="hermes-token-")
    os.write(handle, b"first-token\n")
    os.close(handle)
    hermes = Hermes(env={"HERMES_HTTP_TOKEN_FILE": token_path})
    try:
        def status(path, token=None):
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            return hermes.request(f"GET {path} HTTP/1.0\r\n{auth}\r\n").partition("\r\n")[0]
        check_equal(hermes.request("GET /metrics HTTP/1.0\r\n\r\n"), UNAUTHORIZED_401, "no token")
        check_equal(status("/metrics", "wrong"), "HTTP/1.0 401 Unauthorized", "a wrong token")
        check_equal(status("/"), "HTTP/1.0 401 Unauthorized", "the index page")
        check_equal(status("/-/healthy"), "HTTP/1.0 200 OK", "the probes stay open")
        check_equal(status("/-/ready"), "HTTP/1.0 200 OK", "the probes stay open")
        check_equal(status("/metrics", "first-token"), "HTTP/1.0 200 OK", "the token")
        with open(token_path, "w") as file:
            file.write("second-token\n")
        hermes.process.send_signal(signal.SIGHUP)
        assert "config reloaded" in hermes.read_log_line()
        check_equal(hermes.read_log_line().strip(), f'level=info msg="token reloaded" path={token_path}', "reload log")
        check_equal(status("/metrics", "first-token"), "HTTP/1.0 401 Unauthorized", "the old token")
        check_equal(status("/metrics", "second-token"), "HTTP/1.0 200 OK", "the new token")
        os.unlink(token_path)
        hermes.process.send_signal(signal.SIGHUP)
        assert "config reloaded" in hermes.read_log_line()
        check_equal(hermes.read_log_line().strip(),
                    'level=error msg="token reload failed; the token in force stays" '
                    f'error="http token file {token_path}: cannot read: No such file or directory"', "failed reload log")
        response = hermes.request("GET /metrics HTTP/1.0\r\nAuthorization: Bearer second-token\r\n\r\n")
        assert response.startswith("HTTP/1.0 200 OK\r\n"), response
        body = response.partition("\r\n\r\n")[2]
        assert '\nhermes_config_reloads_total{result="failure"} 1\n' in body, body
        assert '\nhermes_config_reloads_total{result="success"} 1\n' in body, body
        assert '\nhermes_http_requests_total{code="401"} 4\n' in body, body
    finally:
        hermes.close()
        if os.path.exists(token_path):
            os.unlink(token_path)


@test
def bad_access_settings_stop_start_up_with_exit_2(hermes):
    for name, value, message in (
            ("HERMES_UDP_ALLOW", "10.0.0.0/33",
             '"10.0.0.0/33" (item 1) is not a CIDR range: the prefix length "33" is not a number from 0 to 32'),
            ("HERMES_HTTP_ALLOW", "127.0.0.1,localhost",
             '"localhost" (item 2) is not a CIDR range: "localhost" is not an IPv4 or IPv6 address')):
        code, _, err = run_hermes([hermes.config_path], env={name: value})
        check_equal((code, err), (2, f"hermes: {name}: {message}\n"), name)
    path = write_config(dict(SAMPLE_CONFIG, udp_allow=["10.0.0.1/8"]))
    try:
        code, _, err = run_hermes([path])
        check_equal((code, err), (2, f'hermes: {path}: udp_allow[0]: "10.0.0.1/8" is not a CIDR range: '
                                     "bits are set past the /8 prefix (the network is 10.0.0.0/8)\n"), "config")
    finally:
        os.unlink(path)
    handle, token_path = tempfile.mkstemp(prefix="hermes-token-")
    os.close(handle)
    try:
        env = {"HERMES_HTTP_TOKEN_FILE": token_path, "HERMES_UDP_PORT": "0", "HERMES_HTTP_PORT": "0",
               "HERMES_UDP_ADDRESS": "127.0.0.1", "HERMES_HTTP_ADDRESS": "127.0.0.1"}
        code, _, err = run_hermes([hermes.config_path], env=env)
        check_equal((code, err), (2, f"hermes: http token file {token_path}: empty: it must hold the bearer token\n"), "empty")
        env["HERMES_HTTP_TOKEN_FILE"] = "/nonexistent/token"
        code, _, err = run_hermes([hermes.config_path], env=env)
        check_equal((code, err), (2, "hermes: http token file /nonexistent/token: cannot read: No such file or directory\n"))
    finally:
        os.unlink(token_path)


@test
def tls_in_front_with_stunnel_as_the_readme_shows(_):
    """The README's stunnel config, ports aside: a scrape over TLS reaches hermes with its token."""
    import ssl
    folder = tempfile.mkdtemp(prefix="hermes-tls-")
    token_path, cert, key = (os.path.join(folder, name) for name in ("token", "hermes.crt", "hermes.key"))
    with open(token_path, "w") as file:
        file.write("tls-token\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    hermes = Hermes(env={"HERMES_HTTP_TOKEN_FILE": token_path})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    config = os.path.join(folder, "hermes.conf")
    with open(config, "w") as file:
        file.write(f"foreground = yes\npid =\n[hermes]\naccept = 127.0.0.1:{tls_port}\n"
                   f"connect = 127.0.0.1:{hermes.http_port}\ncert = {cert}\nkey = {key}\n")
    stunnel = subprocess.Popen(["stunnel4", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        context = ssl.create_default_context(cafile=cert)
        deadline = time.monotonic() + 10
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "stunnel did not start"
                time.sleep(0.05)
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nAuthorization: Bearer tls-token\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        response = b"".join(chunks).decode()
        assert response.startswith("HTTP/1.0 200 OK\r\n"), response[:200]
        assert "\nhermes_build_info{" in response, response[:200]
    finally:
        stunnel.terminate()
        stunnel.wait(timeout=5)
        hermes.close()
        shutil.rmtree(folder)


def run_suite(name, tests):
    """Runs each test with a fresh hermes; ends with "NAME: N passed, N failed"."""
    if not os.access(HERMES, os.X_OK):
        print(f"{name}: {HERMES} is not an executable; build it first", file=sys.stderr)
        print(f"{name}: 0 passed, 1 failed")
        return 1
    passed = failed = 0
    for function in tests:
        hermes = None
        try:
            hermes = Hermes()
            function(hermes)
            passed += 1
            print(f"ok   {function.__name__}")
        except Exception:  # a failed assertion or a crash both count as a failure
            failed += 1
            print(f"FAIL {function.__name__}\n{traceback.format_exc()}")
        finally:
            if hermes:
                hermes.close()
    print(f"{name}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_suite("blackbox", TESTS))
