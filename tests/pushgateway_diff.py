#!/usr/bin/env python3
"""The Pushgateway API against the real thing: the same requests (every method, base64
keys, bad bodies, conflicts, timestamps, label collisions) go to the built hermes and to
Debian's prometheus-pushgateway 1.5.1 on loopback; the status codes, the messages of
bad paths and bodies, and the pushed groups on /metrics (less Pushgateway's
pushgateway_*, go_* and process_* families and Hermes' own) must match line for line,
push times aside, which are each gateway's clock. Where Hermes differs on purpose (see
README, "What differs from Pushgateway"), the case says so and checks both answers.

usage: pushgateway_diff.py PATH_TO_HERMES
Ends with the line "pushgateway_diff: N passed, N failed".
"""
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blackbox import Hermes, check_equal  # noqa: E402
from state import run_suite  # noqa: E402

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
CONFIG = {"service_name": "diff-service", "gauges": [{"metric_name": "configured_gauge"}]}
TESTS = []
OWN = re.compile(r"^(# (HELP|TYPE) )?(go_|process_|pushgateway_|hermes_|configured_gauge)")
TIME = re.compile(r"^(push_time_seconds|push_failure_time_seconds)(\{.*\}) (\S+)$")


def test(function):
    TESTS.append(function)
    return function


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Pushgateway:
    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{self.port}", "--persistence.file="],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("prometheus-pushgateway did not start")

    def close(self):
        self.process.kill()
        self.process.wait()


def send(port, method, path, body=None, headers=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def groups(port):
    """The pushed groups as /metrics shows them, push times as 0 or T (a time)."""
    lines = []
    for line in send(port, "GET", "/metrics")[1].splitlines():
        if OWN.match(line):
            continue
        match = TIME.match(line)
        lines.append(f"{match.group(1)}{match.group(2)} {'0' if match.group(3) == '0' else 'T'}" if match else line)
    return lines


def same_groups(gateway, hermes):
    """Pushgateway applies a delete after it answers: wait a little for it to agree."""
    deadline = time.monotonic() + 3
    while True:
        ours, theirs = groups(hermes.http_port), groups(gateway.port)
        if ours == theirs or time.monotonic() > deadline:
            return ours, theirs
        time.sleep(0.05)


def both(function):
    def run():
        gateway, hermes = Pushgateway(), Hermes(CONFIG)
        try:
            function(gateway, hermes)
        finally:
            hermes.close()
            gateway.close()
    run.__name__ = function.__name__
    return test(run)


def step(gateway, hermes, method, path, body=None, compare_message=True, headers=None):
    """One request to both: the same status, and the same message unless told otherwise."""
    data = body.encode() if isinstance(body, str) else body
    theirs = send(gateway.port, method, path, data, headers)
    ours = send(hermes.http_port, method, path, data, headers)
    check_equal(ours[0], theirs[0], f"status of {method} {path} {body!r}")
    if compare_message:
        check_equal(ours[1], theirs[1], f"message of {method} {path} {body!r}")
    return ours


def check_groups(gateway, hermes, what):
    ours, theirs = same_groups(gateway, hermes)
    check_equal(ours, theirs, f"/metrics after {what}")


@both
def every_method_and_the_group_semantics(gateway, hermes):
    step(gateway, hermes, "PUT", "/metrics/job/a/instance/i1",
         '# HELP x_total Things done.\n# TYPE x_total counter\nx_total{kind="k"} 3\ny 1.5\n')
    step(gateway, hermes, "PUT", "/metrics/job/a/instance/i2", "y 2\n")
    check_groups(gateway, hermes, "two PUTs")
    step(gateway, hermes, "POST", "/metrics/job/a/instance/i1", "y 7\nz -1\n")
    check_groups(gateway, hermes, "a POST")
    step(gateway, hermes, "PUT", "/metrics/job/a/instance/i1", "z 9\n")
    check_groups(gateway, hermes, "a PUT over it")
    step(gateway, hermes, "PUT", "/metrics/job/a/instance/i1", "")
    check_groups(gateway, hermes, "an empty PUT")
    step(gateway, hermes, "DELETE", "/metrics/job/a/instance/i2")
    step(gateway, hermes, "DELETE", "/metrics/job/never")
    check_groups(gateway, hermes, "deletes")


@both
def base64_keys_and_escapes(gateway, hermes):
    step(gateway, hermes, "PUT", "/metrics/job@base64/YmFja3VwL2Ri/path@base64/L3Zhci9saWI=", "g 1\n")
    step(gateway, hermes, "PUT", "/metrics/job/j/empty@base64/=", "g 2\n")
    step(gateway, hermes, "PUT", "/metrics/job/j/empty/", "g 3\n")
    step(gateway, hermes, "PUT", "/metrics/job/j/a%2Fb/c%20d", "g 4\n")
    step(gateway, hermes, "PUT", "/metrics/job/job@base64/4pyTIMOgIGxhIG1vZGU", 'g{v="tab\\\\ \\"q\\" \\n end"} 5\n')
    check_groups(gateway, hermes, "base64 and escaped keys")
    for path in ["/metrics/job/j/odd", "/metrics/job/j/__x/1", "/metrics/job/j/1x/1", "/metrics/job/j/a@base64/!x",
                 "/metrics/job/j/a@base64/abcde", "/metrics/job/j/a/b/"]:
        step(gateway, hermes, "PUT", path, "g 1\n")


BAD_BODIES = [
    "x 1", "x{a=\"1\" 2\n", "x{a=1} 2\n", "x{a=\"1\",a=\"2\"} 2\n", "x{__name__=\"y\"} 1\n", "x{=\"1\"} 1\n",
    "x{a\"1\"} 1\n", "x{a=\"\\q\"} 1\n", "x{a=\"1\n\"} 1\n", "x abc\n", "x 1 abc\n", "x 1 2 3\n", "x 1 \n",
    "# HELP x one\n# HELP x two\nx 1\n", "# TYPE x gauge\n# TYPE x counter\nx 1\n", "x 1\n# TYPE x gauge\n",
    "# TYPE x nonsense\nx 1\n", "# HELP x bad \\t escape\nx 1\n", "# HELP x{ help\n", "1x 1\n", "{a=\"1\"} 1\n",
    "x 0x1p3\n", "x 1_000\n", "x 1e400\n", "# TYPE s summary\ns{quantile=\"half\"} 1\n",
    "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n", "x{a=\"\xff\"} 1\n", "x\t{a=\"1\"}\t2\n\n\ny{} 3\nz\n",
]


@both
def chunked_bodies_are_read_as_pushgateway_reads_them(gateway, hermes):
    """A body of chunks, without Content-Length, as Node sends one (prom-client's)."""
    step(gateway, hermes, "PUT", "/metrics/job/chunks", [b"# TYPE c counter\nc 1", b"\nd 2\n"])
    step(gateway, hermes, "POST", "/metrics/job/chunks", [b"d 3\n"])
    step(gateway, hermes, "PUT", "/metrics/job/pb", [EVERY_TYPE[:40], EVERY_TYPE[40:]], headers=PROTOBUF)
    check_groups(gateway, hermes, "chunked pushes")


@both
def bad_bodies_get_the_same_message(gateway, hermes):
    for body in BAD_BODIES:
        step(gateway, hermes, "PUT", "/metrics/job/bad", body.encode("latin-1") if "\xff" in body else body)
    check_groups(gateway, hermes, "bad bodies")


GOOD_BODIES = [
    "n1 NaN\nn2 +Inf\nn3 -inf\nn4 1e-400\nn5 1E5\nn6 .5\nn7 5.\nn8 -0\n",
    "# A comment\n#\n  \n\t# TYPE xg gauge\nxg{ a = \"1\" , b=\"2\" , } 3\n",
    "# TYPE s summary\ns{quantile=\"0.5\",a=\"1\"} 2\ns{quantile=\"0.9\",a=\"1\"} 3\ns_sum{a=\"1\"} 10\ns_count{a=\"1\"} 4\n"
    "s_sum{a=\"2\"} 1\n",
    "# HELP h A histogram.\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1e+06\"} 3\nh_bucket{le=\"+Inf\"} 4\n"
    "h_sum 7.25\nh_count 4\nh_extra 1\n",
    "# TYPE c counter\nc_count 3\nc_sum 4\n",
]


@both
def every_type_and_number_shows_the_same(gateway, hermes):
    for number, body in enumerate(GOOD_BODIES):
        step(gateway, hermes, "PUT", f"/metrics/job/good/n/{number}", body)
    check_groups(gateway, hermes, "good bodies")


@both
def conflicts_are_refused_and_keep_the_failure_time(gateway, hermes):
    step(gateway, hermes, "PUT", "/metrics/job/a", "# TYPE f counter\nf 1\nx 1\n")
    step(gateway, hermes, "PUT", "/metrics/job/b", "# TYPE f gauge\nf 1\n", compare_message=False)
    step(gateway, hermes, "PUT", "/metrics/job/a", "x 1 1700000000000\n")
    step(gateway, hermes, "PUT", "/metrics/job/c", "dup 1\ndup 2\n", compare_message=False)
    step(gateway, hermes, "PUT", "/metrics/job/d", 'x{job="zz",instance="q"} 4\n')
    step(gateway, hermes, "PUT", "/metrics/job/d/k/v", "x 1\n")
    step(gateway, hermes, "PUT", "/metrics/job/d", 'x{k="v"} 1\n', compare_message=False)
    step(gateway, hermes, "PUT", "/metrics/job/e", "# TYPE s summary\ns_sum 1\ns_count 1\n")
    step(gateway, hermes, "PUT", "/metrics/job/e2", "s_count 1\n", compare_message=False)
    step(gateway, hermes, "PUT", "/metrics/job/e3/quantile/1", "# TYPE s summary\ns_sum 1\n", compare_message=False)
    step(gateway, hermes, "POST", "/metrics/job/a", "# TYPE f gauge\nf 2\n")
    check_groups(gateway, hermes, "conflicts")


@both
def where_hermes_differs_on_purpose(gateway, hermes):
    # A histogram under a grouping label le: Pushgateway shows two le labels on a bucket,
    # a line Prometheus refuses; Hermes refuses the push.
    body = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"
    check_equal(send(gateway.port, "PUT", "/metrics/job/h/le/5", body.encode())[0], 200, "Pushgateway takes it")
    check_equal(send(hermes.http_port, "PUT", "/metrics/job/h/le/5", body.encode())[0], 400, "Hermes refuses it")
    # A PUT without Content-Length: Pushgateway reads an empty body, Hermes asks for a length.
    raw = b"PUT /metrics/job/nolength HTTP/1.0\r\n\r\n"
    check_equal(hermes.request(raw).split("\r\n")[0], "HTTP/1.0 411 Length Required", "Hermes: 411")
    # A path with an empty, "." or ".." segment once decoded (prom-client's '/' in a value):
    # Pushgateway redirects it without taking the push, Hermes refuses it.
    for path in ("/metrics/job/j/path/%2Fvar%2Flib", "/metrics/job/j/a/."):
        check_equal(send(gateway.port, "PUT", path, b"g 1\n")[0], 301, f"Pushgateway redirects {path}")
        check_equal(send(hermes.http_port, "PUT", path, b"g 1\n")[0], 400, f"Hermes refuses {path}")
    # A family of Hermes' own or configured is refused.
    check_equal(send(hermes.http_port, "PUT", "/metrics/job/x", b"configured_gauge 1\n")[0], 400, "configured")


# The delimited protobuf format, encoded here as client_golang's push package encodes it.
def varint(number):
    out = b""
    while True:
        out += bytes([(number & 0x7F) | (0x80 if number > 0x7F else 0)])
        number >>= 7
        if not number:
            return out


def field(number, wire, payload):
    return varint(number << 3 | wire) + payload


def length_delimited(number, data):
    data = data.encode() if isinstance(data, str) else data
    return field(number, 2, varint(len(data)) + data)


def double(number, value):
    return field(number, 1, struct.pack("<d", value))


def unsigned(number, value):
    return field(number, 0, varint(value))


def zigzag(value):
    return value * 2 if value >= 0 else -value * 2 - 1


def metric(labels, **kinds):
    """A Metric: label pairs, then the value message of its kind (gauge=2, counter=3,
    summary=4, untyped=5, histogram=7) and a timestamp_ms (6) when given."""
    out = b"".join(length_delimited(1, length_delimited(1, name) + length_delimited(2, value)) for name, value in labels)
    numbers = {"gauge": 2, "counter": 3, "summary": 4, "untyped": 5, "timestamp_ms": 6, "histogram": 7}
    for kind, payload in sorted(kinds.items(), key=lambda item: numbers[item[0]]):
        out += unsigned(6, payload) if kind == "timestamp_ms" else length_delimited(numbers[kind], payload)
    return out


def family(name, type_number, metrics, help_text=None):
    out = length_delimited(1, name) + (length_delimited(2, help_text) if help_text is not None else b"")
    return out + unsigned(3, type_number) + b"".join(length_delimited(4, m) for m in metrics)


def delimited(*families):
    return b"".join(varint(len(f)) + f for f in families)


PROTOBUF = {"Content-Type": "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"}
NATIVE = (unsigned(1, 5) + double(2, 12.5) + field(5, 0, varint(zigzag(3))) + double(6, 2 ** -128) + unsigned(7, 1)
          + length_delimited(12, field(1, 0, varint(zigzag(0))) + unsigned(2, 2))
          + length_delimited(13, varint(zigzag(1)) + varint(zigzag(2))))
EVERY_TYPE = delimited(
    family("pb_done_total", 0, [metric([("kind", "a")], counter=double(1, 3)), metric([("kind", "b")], counter=double(1, 4))],
           "Things done."),
    family("pb_temperature", 1, [metric([], gauge=double(1, -4.5))]),
    family("pb_untyped", 3, [metric([("x", "y")], untyped=double(1, 1e6))]),
    family("pb_rpc_seconds", 2, [metric([], summary=unsigned(1, 3) + double(2, 1.5)
                                        + length_delimited(3, double(1, 0.5) + double(2, 0.25)))]),
    family("pb_size_bytes", 4, [metric([], histogram=unsigned(1, 4) + double(2, 70)
                                       + length_delimited(3, unsigned(1, 1) + double(2, 10))
                                       + length_delimited(3, unsigned(1, 3) + double(2, 100)))]),
    family("pb_native_seconds", 4, [metric([("route", "/")], histogram=NATIVE)], "A native histogram."))


def protobuf_family(port, name):
    """One family of a protobuf scrape, as its bytes."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": PROTOBUF["Content-Type"]})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    at = 0
    while at < len(body):
        length, shift = 0, 0
        while True:
            byte = body[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        message = body[at:at + length]
        at += length
        if message.startswith(length_delimited(1, name)):
            return message
    return None


@both
def protobuf_bodies_of_every_type_and_a_native_histogram(gateway, hermes):
    step(gateway, hermes, "PUT", "/metrics/job/pb/instance/i", EVERY_TYPE, headers=PROTOBUF)
    check_groups(gateway, hermes, "a protobuf push")
    for name in ("pb_native_seconds", "pb_rpc_seconds", "pb_done_total"):
        ours, theirs = protobuf_family(hermes.http_port, name), protobuf_family(gateway.port, name)
        check_equal(ours is not None and ours == theirs, True, f"{name} in protobuf: {ours!r} against {theirs!r}")
    stamped = delimited(family("pb_stamped", 1, [metric([], gauge=double(1, 1), timestamp_ms=1700000000000)]))
    step(gateway, hermes, "PUT", "/metrics/job/pb2", stamped, headers=PROTOBUF)
    step(gateway, hermes, "PUT", "/metrics/job/pb2", EVERY_TYPE[:-3], headers=PROTOBUF)
    step(gateway, hermes, "PUT", "/metrics/job/pb2", b"\x05\xff\xff\xff\xff\xff", headers=PROTOBUF)
    mixed = delimited(family("pb_mixed", 0, [metric([], gauge=double(1, 1))]))
    step(gateway, hermes, "PUT", "/metrics/job/pb2", mixed, compare_message=False, headers=PROTOBUF)
    check_groups(gateway, hermes, "refused protobuf pushes")


if __name__ == "__main__":
    if not os.access(PUSHGATEWAY, os.X_OK):
        print(f"pushgateway_diff: {PUSHGATEWAY} is missing (make test-deps installs prometheus-pushgateway)", file=sys.stderr)
        print("pushgateway_diff: 0 passed, 1 failed")
        sys.exit(1)
    sys.exit(run_suite("pushgateway_diff", TESTS))
