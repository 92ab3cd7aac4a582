#!/usr/bin/env python3
"""StatsD over TCP (HERMES_STATSD_TCP_PORT) against the built hermes: real clients,
unmodified (Debian's python3-statsd TCPStatsClient, hot-shots with protocol 'tcp'), with
exact values on /metrics; then hostile senders: a connection that never sends a newline,
a slowloris, connections closed or reset mid-line, and 10,000 connections at once.

make test installs the clients first (make statsd-clients); a client that is missing
fails its test, never skips it.

usage: statsd_tcp.py PATH_TO_HERMES
Ends with the line "statsd_tcp: N passed, N failed".
"""
import os
import resource
import shutil
import socket
import struct
import sys
import time

from blackbox import ROOT, Hermes, clean_env, run_suite
from statsd_clients import CONFIG, DEBIAN_PYTHON, NODE_MODULES, check_lines, run_client  # the same metrics

TESTS = []
LONGEST_LINE = 8192  # HERMES_MAX_DATAGRAM_SIZE

def test(function):
    TESTS.append(function)
    return function


def with_tcp(env=None):
    """Runs the test against a hermes of its own with a StatsD TCP port, on CONFIG."""
    def wrap(function):
        def run(_):
            hermes = Hermes(CONFIG, env={"HERMES_STATSD_TCP_PORT": "0", **(env or {})})
            try:
                assert hermes.statsd_tcp_port, "no statsd_tcp= in the listening line: " + hermes.log[0]
                function(hermes)
            finally:
                hermes.close()
        run.__name__ = function.__name__
        return test(run)
    return wrap


def closed(reason):
    return f'hermes_statsd_tcp_connections_closed_total{{reason="{reason}"}}'


def refused(reason):
    return f'hermes_statsd_tcp_connections_refused_total{{reason="{reason}"}}'


def connect(hermes):
    return socket.create_connection(("127.0.0.1", hermes.statsd_tcp_port), timeout=5)


def closed_by_hermes(sock, seconds=5):
    """Whether hermes ends the connection within `seconds`: end of stream or a reset."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# ---- real clients -------------------------------------------------------------------------

@with_tcp()
def python_statsd_tcp_client(hermes):
    assert os.access(DEBIAN_PYTHON, os.X_OK), f"{DEBIAN_PYTHON} is missing: apt-get install python3-statsd"
    run_client([DEBIAN_PYTHON, "-c", f"""
import statsd
client = statsd.TCPStatsClient('127.0.0.1', {hermes.statsd_tcp_port})
client.incr('api.requests')             # api_requests + 1
client.incr('api.requests', 3)
client.decr('api.requests')             # a negative increment: invalid_value
client.gauge('depth', 7)
client.gauge('depth', 3, delta=True)    # depth:+3|g
client.timing('render.seconds', 250)    # 250.000000|ms: 0.25 s
client.set('users', 'alice')            # unsupported_type
with client.pipeline() as pipe:         # one write of two lines
    pipe.incr('api.requests', 2)
    pipe.timing('render.seconds', 50)
client.gauge('depth', -5)               # "depth:0|g" and "depth:-5|g" in one write
client.close()
"""])
    hermes.wait_for(closed("end"), 1)
    check_lines(hermes, "api_requests 6", "depth -5",
                'render_seconds_bucket{le="0.1"} 1', 'render_seconds_bucket{le="1"} 2',
                'render_seconds_bucket{le="+Inf"} 2', "render_seconds_sum 0.3", "render_seconds_count 2",
                'hermes_samples_rejected_total{reason="invalid_value"} 1',
                'hermes_samples_rejected_total{reason="unsupported_type"} 1',
                'hermes_samples_received_total{format="statsd"} 11', 'hermes_samples_received_total{format="json"} 0',
                "hermes_samples_accepted_total 9", "hermes_statsd_tcp_connections_accepted_total 1",
                "hermes_statsd_tcp_connections 0", "hermes_udp_packets_total 0")


@with_tcp()
def hot_shots_tcp_client(hermes):
    node = shutil.which("node")
    assert node, "node is missing: apt-get install nodejs (make statsd-clients)"
    assert os.path.isdir(os.path.join(NODE_MODULES, "hot-shots")), f"hot-shots is missing in {NODE_MODULES}: make statsd-clients"
    env = {k: v for k, v in clean_env(NODE_PATH=NODE_MODULES).items() if not k.startswith("DD_")}  # no Datadog defaults
    run_client([node, os.path.join(ROOT, "tests", "clients", "hot_shots_tcp.js"), "127.0.0.1", str(hermes.statsd_tcp_port)], env)
    hermes.wait_for('hermes_samples_received_total{format="statsd"}', 8)
    check_lines(hermes, 'jobs_total{queue="tcp"} 4', "depth 7",
                'latency_seconds_bucket{route="/tcp",le="0.1"} 1', 'latency_seconds_bucket{route="/tcp",le="1"} 1',
                'latency_seconds_bucket{route="/tcp",le="5"} 2', 'latency_seconds_sum{route="/tcp"} 2.58',
                'latency_seconds_count{route="/tcp"} 2', "payload_bytes_sum 100", "payload_bytes_count 1",
                'hermes_samples_rejected_total{reason="unsupported_type"} 1',
                'hermes_samples_received_total{format="statsd"} 8', "hermes_samples_accepted_total 7",
                "hermes_statsd_tcp_connections_accepted_total 1")


@with_tcp()
def crlf_line_ends_and_a_last_line_without_one(hermes):
    with connect(hermes) as sock:
        sock.sendall(b"jobs:1|c|#queue:crlf\r\njobs:2|c|#queue:crlf\r\n\r\njobs:4|c|#queue:crlf")
    hermes.wait_for(closed("end"), 1)
    check_lines(hermes, 'jobs_total{queue="crlf"} 7', "hermes_samples_accepted_total 3",
                'hermes_samples_received_total{format="statsd"} 3')


@with_tcp({"HERMES_UDP_ALLOW": "10.0.0.0/8"})
def the_udp_allow_list_keeps_other_peers_out(hermes):
    with connect(hermes) as sock:
        sock.sendall(b"jobs:1|c|#queue:outsider\n")
        assert closed_by_hermes(sock)
    hermes.wait_for(refused("forbidden_source"), 1)
    check_lines(hermes, "hermes_samples_accepted_total 0", "hermes_statsd_tcp_connections_accepted_total 0")


# ---- hostile senders ------------------------------------------------------------------------

@with_tcp()
def a_line_that_never_ends_is_closed_at_the_line_limit(hermes):
    with connect(hermes) as good, connect(hermes) as endless:
        good.sendall(b"jobs:1|c|#queue:good\n")
        endless.sendall(b"jobs:1|c|#queue:" + b"x" * LONGEST_LINE)  # no newline, ever
        assert closed_by_hermes(endless), "the endless line's connection stays open"
        good.sendall(b"jobs:2|c|#queue:good\n")
        hermes.wait_for('jobs_total{queue="good"}', 3)
    hermes.wait_for(closed("end"), 1)
    check_lines(hermes, 'hermes_samples_rejected_total{reason="too_large"} 1', closed("too_large") + " 1",
                "hermes_samples_accepted_total 2")


@with_tcp({"HERMES_STATSD_TCP_IDLE_SECONDS": "1"})
def a_silent_connection_and_a_slowloris_are_closed_at_the_idle_timeout(hermes):
    with connect(hermes) as silent, connect(hermes) as slow, connect(hermes) as good:
        silent.sendall(b"jobs:5|c|#qu")  # a start, then nothing
        started = time.monotonic()
        trickling = True
        for _ in range(40):  # a byte each 50 ms never completes a line within the second
            try:
                if trickling:
                    slow.send(b"x")
            except (BrokenPipeError, ConnectionResetError):
                trickling = False
            good.sendall(b"jobs:1|c|#queue:good\n")  # a whole line each time: never idle
            time.sleep(0.05)
        assert closed_by_hermes(silent, 0.1) and closed_by_hermes(slow, 0.1), "idle connections stay open"
        assert time.monotonic() - started < 3
        hermes.wait_for(closed("idle"), 2)
        hermes.wait_for('jobs_total{queue="good"}', 40)
        check_lines(hermes, "hermes_statsd_tcp_connections 1",
                    # each idle connection's start was taken as its last line: neither is a StatsD line
                    'hermes_samples_rejected_total{reason="malformed_sample"} 2')


@with_tcp()
def connections_closed_or_reset_mid_line(hermes):
    with connect(hermes) as sock:
        sock.sendall(b"jobs:1|c|#queue:a\njobs:2|c|#qu")
    hermes.wait_for(closed("end"), 1)
    reset = connect(hermes)
    reset.sendall(b"jobs:1|c|#queue:b\njobs:3|c|#queue:b")
    hermes.wait_for('jobs_total{queue="b"}', 1)
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    reset.close()
    hermes.wait_for(closed("error"), 1)
    # the line cut short by the end is taken as a line, as statsd_exporter takes it: a tag
    # without a value after the end, a whole line after the reset, which came once it was read
    check_lines(hermes, 'jobs_total{queue="a"} 1', 'hermes_samples_rejected_total{reason="malformed_sample"} 1',
                'jobs_total{queue="b"} 4', "hermes_statsd_tcp_connections 0")
    with connect(hermes) as after:  # and the listener goes on
        after.sendall(b"jobs:1|c|#queue:after\n")
    hermes.wait_for('jobs_total{queue="after"}', 1)


def counted_connections(hermes):
    samples = hermes.metrics()
    return samples["hermes_statsd_tcp_connections_accepted_total"] + sum(
        samples[refused(reason)] for reason in ("connection_limit", "memory_limit", "forbidden_source"))


@with_tcp()
def ten_thousand_connections_are_bounded_and_counted_while_udp_and_scrapes_go_on(hermes):
    wanted, wave = 10_000, 100  # a wave fits the kernel's accept backlog (HERMES_LISTEN_BACKLOG, 128)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= wanted + 100, f"RLIMIT_NOFILE's hard limit {hard} cannot hold {wanted} sockets"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted + 100), hard))
    sockets, slowest_scrape = [], 0
    try:
        while len(sockets) < wanted:
            for _ in range(wave):  # all kept open on this side
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", hermes.statsd_tcp_port))
                sockets.append(sock)
            deadline = time.monotonic() + 5
            while True:
                started = time.monotonic()
                counted = counted_connections(hermes)
                slowest_scrape = max(slowest_scrape, time.monotonic() - started)
                if counted == len(sockets):
                    break
                assert time.monotonic() < deadline, f"{counted} of {len(sockets)} connections counted"
            if len(sockets) == wanted // 2:
                hermes.push("jobs:1|c|#queue:udp")  # UDP is applied amid the flood
        check_lines(hermes, "hermes_statsd_tcp_connections_accepted_total 256", "hermes_statsd_tcp_connections 256",
                    refused("connection_limit") + f" {wanted - 256}", refused("memory_limit") + " 0",
                    'jobs_total{queue="udp"} 1')
        assert slowest_scrape < 1, f"a scrape took {slowest_scrape:.3f} s amid the flood"
    finally:
        for sock in sockets:
            sock.close()
    hermes.wait_for(closed("end"), 256, seconds=10)
    with connect(hermes) as sock:  # room again
        sock.sendall(b"jobs:1|c|#queue:after\n")
    hermes.wait_for('jobs_total{queue="after"}', 1)


if __name__ == "__main__":
    sys.exit(run_suite("statsd_tcp", TESTS))
