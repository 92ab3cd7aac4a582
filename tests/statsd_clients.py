#!/usr/bin/env python3
"""Real StatsD clients, unmodified, against the built hermes: Debian's python3-statsd,
hot-shots from npm (DogStatsD and telegraf tags), the C example example/statsd_send.c,
and the shell one-liner of the README. Each checks the exact values on /metrics.

make test installs the clients first (make statsd-clients); a client that is missing
fails its test, never skips it.

usage: statsd_clients.py PATH_TO_HERMES
Ends with the line "statsd_clients: N passed, N failed".
"""
import os
import shutil
import subprocess
import sys
import time

from blackbox import ROOT, Hermes, check_equal, clean_env, run_suite

TESTS = []
DEBIAN_PYTHON = "/usr/bin/python3"  # python3-statsd installs where Debian's python3 looks
NODE_MODULES = os.path.join(ROOT, "build", "npm", "node_modules")
C_EXAMPLE = os.path.join(ROOT, "build", "statsd_send")

CONFIG = {
    "service_name": "shop",
    "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}, {"metric_name": "api_requests"},
                 {"metric_name": "sampled_total"}, {"metric_name": "shop_orders_total"}],
    "gauges": [{"metric_name": "depth"}, {"metric_name": "board_temperature", "labels": ["room"]}],
    "histograms": [{"metric_name": "latency_seconds", "labels": ["route"], "buckets": [0.1, 0.3, 1, 5]},
                   {"metric_name": "render_seconds", "buckets": [0.1, 1]}],
    "summaries": [{"metric_name": "payload_bytes"}],
}


def test(function):
    TESTS.append(function)
    return function


def with_hermes(function):
    """Runs the test against a hermes of its own, on CONFIG."""
    def run(_):
        hermes = Hermes(CONFIG)
        try:
            function(hermes)
        finally:
            hermes.close()
    run.__name__ = function.__name__
    return test(run)


def check_lines(hermes, *lines):
    body = hermes.scrape().splitlines()
    for line in lines:
        assert line in body, f"missing {line!r} in\n" + "\n".join(l for l in body if not l.startswith("#"))


def run_client(command, env=None):
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{command[0]} failed ({result.returncode}): {result.stderr}"


def python_statsd(hermes, script):
    """Runs `script` under Debian's python3 with `client`, a statsd.StatsClient for hermes."""
    assert os.access(DEBIAN_PYTHON, os.X_OK), f"{DEBIAN_PYTHON} is missing: apt-get install python3-statsd"
    prologue = f"import statsd\nclient = statsd.StatsClient('127.0.0.1', {hermes.udp_port})\n"
    run_client([DEBIAN_PYTHON, "-c", prologue + script])


def hot_shots(hermes, phase):
    node = shutil.which("node")
    assert node, "node is missing: apt-get install nodejs (make statsd-clients)"
    assert os.path.isdir(os.path.join(NODE_MODULES, "hot-shots")), f"hot-shots is missing in {NODE_MODULES}: make statsd-clients"
    env = {k: v for k, v in clean_env(NODE_PATH=NODE_MODULES).items() if not k.startswith("DD_")}  # no Datadog defaults
    run_client([node, os.path.join(ROOT, "tests", "clients", "hot_shots.js"), "127.0.0.1", str(hermes.udp_port), phase], env)


def settled_packets(hermes):
    """The datagrams hermes has received, once the count stops moving after a client ended.
    The kernel dropped none: a sampling test counts what arrived."""
    last = None
    while True:
        count = hermes.metric("hermes_udp_packets_total")
        if count == last:
            check_equal(hermes.metric("hermes_udp_receive_drops_total"), 0, "kernel drops")
            return int(count)
        last = count
        time.sleep(0.2)


def wait_packets(hermes, count):
    hermes.wait_for("hermes_udp_packets_total", count)


# ---- python3-statsd (Debian) ----------------------------------------------------------------

@with_hermes
def python_statsd_counters_gauges_timers_and_pipelines(hermes):
    python_statsd(hermes, """
client.incr('api.requests')             # api_requests + 1
client.incr('api.requests', 3)
client.decr('api.requests')             # a negative increment: invalid_value
client.gauge('depth', 7)
client.gauge('depth', 3, delta=True)    # depth:+3|g
client.gauge('depth', -2, delta=True)   # depth:-2|g
client.timing('render.seconds', 250)    # 250.000000|ms: 0.25 s
client.timing('render.seconds', 1500)
client.set('users', 'alice')            # unsupported_type
with client.pipeline() as pipe:         # one datagram of two lines
    pipe.incr('api.requests', 2)
    pipe.timing('render.seconds', 50)
""")
    wait_packets(hermes, 10)
    check_lines(hermes, "api_requests 6", "depth 8",
                'render_seconds_bucket{le="0.1"} 1', 'render_seconds_bucket{le="1"} 2',
                'render_seconds_bucket{le="+Inf"} 3', "render_seconds_sum 1.8", "render_seconds_count 3",
                'hermes_samples_rejected_total{reason="invalid_value"} 1',
                'hermes_samples_rejected_total{reason="unsupported_type"} 1',
                'hermes_samples_received_total{format="statsd"} 11', 'hermes_samples_received_total{format="json"} 0',
                "hermes_samples_accepted_total 9")
    # A negative absolute gauge goes as "depth:0|g" and "depth:-5|g" in one datagram.
    python_statsd(hermes, "client.gauge('depth', -5)\n")
    wait_packets(hermes, 11)
    check_lines(hermes, "depth -5")


@with_hermes
def python_statsd_sample_rates_scale_counts(hermes):
    python_statsd(hermes, "for _ in range(400):\n    client.incr('sampled', 3, rate=0.5)\n")
    sent = settled_packets(hermes)  # each line was sent or not by chance: count those that arrived
    assert 100 < sent < 300, sent
    check_lines(hermes, f"sampled_total {sent * 6}")  # 3 / 0.5 each
    python_statsd(hermes, "for _ in range(400):\n    client.timing('render.seconds', 500, rate=0.25)\n")
    timed = settled_packets(hermes) - sent
    assert 40 < timed < 160, timed
    check_lines(hermes, f"render_seconds_count {timed * 4}", f'render_seconds_bucket{{le="1"}} {timed * 4}',
                f"render_seconds_sum {timed * 2}")


@with_hermes
def python_statsd_prefix_becomes_part_of_the_name(hermes):
    run_client([DEBIAN_PYTHON, "-c", "import statsd\n"
                f"client = statsd.StatsClient('127.0.0.1', {hermes.udp_port}, prefix='shop')\n"
                "client.incr('orders', 4)\nclient.incr('orders.total', 1)\n"])
    wait_packets(hermes, 2)
    check_lines(hermes, "shop_orders_total 5")  # shop.orders is shop_orders, a counter shop_orders_total


# ---- hot-shots (npm) ------------------------------------------------------------------------

@with_hermes
def hot_shots_dogstatsd_tags_timestamps_events_and_checks(hermes):
    hot_shots(hermes, "dogstatsd")
    wait_packets(hermes, 14)
    check_lines(hermes, 'jobs_total{queue="mail"} 4', "depth 8",
                'latency_seconds_bucket{route="/",le="0.1"} 0', 'latency_seconds_bucket{route="/",le="0.3"} 1',
                'latency_seconds_bucket{route="/",le="1"} 2', 'latency_seconds_bucket{route="/",le="+Inf"} 2',
                'latency_seconds_sum{route="/"} 0.75', 'latency_seconds_count{route="/"} 2',
                "payload_bytes_sum 2048", "payload_bytes_count 2",
                'hermes_samples_rejected_total{reason="invalid_value"} 1',
                'hermes_samples_rejected_total{reason="unsupported_type"} 3',
                "hermes_samples_accepted_total 10", 'hermes_samples_received_total{format="statsd"} 14')


@with_hermes
def hot_shots_sample_rates_scale_counters_and_timers(hermes):
    hot_shots(hermes, "sampled")
    sent = settled_packets(hermes)
    assert 50 < sent < 150, sent
    check_lines(hermes, f'jobs_total{{queue="sampled"}} {sent * 2}')
    hot_shots(hermes, "sampled_timer")
    timed = settled_packets(hermes) - sent
    assert 20 < timed < 80, timed
    check_lines(hermes, f'latency_seconds_count{{route="/sampled"}} {timed * 4}',
                f'latency_seconds_bucket{{route="/sampled",le="0.1"}} {timed * 4}')


@with_hermes
def hot_shots_telegraf_tags_in_the_name(hermes):
    hot_shots(hermes, "telegraf")
    wait_packets(hermes, 2)
    check_lines(hermes, 'jobs_total{queue="telegraf"} 5', 'latency_seconds_bucket{route="/telegraf",le="1"} 0',
                'latency_seconds_bucket{route="/telegraf",le="5"} 1', 'latency_seconds_sum{route="/telegraf"} 2')


# ---- the C example and the shell ------------------------------------------------------------

@with_hermes
def the_c_example_sends_one_line(hermes):
    assert os.access(C_EXAMPLE, os.X_OK), f"{C_EXAMPLE} is missing: make {os.path.relpath(C_EXAMPLE, ROOT)}"
    port = str(hermes.udp_port)
    run_client([C_EXAMPLE, "127.0.0.1", port, "jobs", "1", "c", "queue:mail"])
    run_client([C_EXAMPLE, "127.0.0.1", port, "board.temperature", "21.7", "g", "room:attic"])
    run_client([C_EXAMPLE, "127.0.0.1", port, "board.temperature", "-0.1", "g", "room:attic"])  # a sign moves it
    run_client([C_EXAMPLE, "127.0.0.1", port, "render.seconds", "250", "ms"])
    wait_packets(hermes, 4)
    check_lines(hermes, 'jobs_total{queue="mail"} 1', 'board_temperature{room="attic"} 21.599999999999998',
                "render_seconds_sum 0.25", "render_seconds_count 1")
    result = subprocess.run([C_EXAMPLE, "not-an-address", port, "jobs", "1", "c"], capture_output=True, text=True)
    check_equal(result.returncode, 1, "exit code for a bad address")


@with_hermes
def the_shell_one_liner_of_the_readme(hermes):
    assert shutil.which("nc"), "nc is missing: apt-get install netcat-openbsd (make statsd-clients)"
    subprocess.run(f'echo "jobs:1|c|#queue:mail" | nc -u -q0 127.0.0.1 {hermes.udp_port}', shell=True, check=True, timeout=10)
    wait_packets(hermes, 1)
    check_lines(hermes, 'jobs_total{queue="mail"} 1')


@test
def statsd_off_makes_statsd_lines_malformed_json(_):
    hermes = Hermes(CONFIG, env={"HERMES_STATSD": "off"})
    try:
        hermes.push("jobs:1|c|#queue:mail", '{"metric_name": "api_requests"}')
        check_lines(hermes, 'hermes_samples_rejected_total{reason="malformed_json"} 1', "api_requests 1",
                    'hermes_samples_received_total{format="json"} 2', 'hermes_samples_received_total{format="statsd"} 0')
    finally:
        hermes.close()


if __name__ == "__main__":
    sys.exit(run_suite("statsd_clients", TESTS))
