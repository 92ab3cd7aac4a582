#!/usr/bin/env python3
"""The Pushgateway API of the built hermes, driven by real clients: Debian's
python3-prometheus-client (push_to_gateway, pushadd_to_gateway, delete_from_gateway,
every metric type, a grouping key with a '/' in a value) and curl with text bodies;
every pushed value is checked on /metrics. Then what Hermes adds: the memory budget,
max_push_groups, the TTL, the push token, the allow list, the admin wipe, its own
figures, and the groups kept across a restart. Last, hostile pushes: a trickled body, a
Content-Length that lies, more pushes holding connections than there are, a key of a
thousand labels, every escape, and a flood of groups into the budget.

usage: pushgateway.py PATH_TO_HERMES
Ends with the line "pushgateway: N passed, N failed".
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blackbox import Hermes, check_equal, debian_module  # noqa: E402

debian_module("pushgateway", "prometheus_client", "python3-prometheus-client")
from prometheus_client import (CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary,  # noqa: E402
                               delete_from_gateway, push_to_gateway, pushadd_to_gateway)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pushgateway_diff import send as send_to  # noqa: E402
from state import run_suite  # noqa: E402

TESTS = []
CONFIG = {"service_name": "push-service",
          "counters": [{"metric_name": "jobs_total", "labels": ["queue"]}],
          "histograms": [{"metric_name": "latency_seconds"}]}


def test(function):
    TESTS.append(function)
    return function


def with_hermes(env=None, config=None):
    def wrap(function):
        def run():
            hermes = Hermes(config or CONFIG, env=env)
            try:
                function(hermes)
            finally:
                hermes.close()
        run.__name__ = function.__name__
        return test(run)
    return wrap


def gateway(hermes):
    return f"{hermes.http_host}:{hermes.http_port}"


def send(hermes, method, path, body=None, headers=None):
    """An HTTP request to hermes: (status, body text)."""
    return send_to(hermes.http_port, method, path, body, headers)


def curl(hermes, *args):
    """curl's status code and body for a request to hermes."""
    result = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args[:-1], f"http://{gateway(hermes)}{args[-1]}"],
                            capture_output=True, text=True, timeout=10)
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body[:-1] if body.endswith("\n") else body


def pushed_lines(hermes):
    """The lines of /metrics that are not Hermes' own or the configured metrics'."""
    own = ("hermes_", "process_", "jobs_total", "latency_seconds")
    return [line for line in hermes.scrape().splitlines()
            if not any(line.startswith(prefix) or line.startswith("# HELP " + prefix) or line.startswith("# TYPE " + prefix)
                       for prefix in own)]


def normal(labels):
    """Labels with le and quantile as numbers, which the client and Go spell differently (10.0, 10)."""
    return tuple(sorted((name, float(value) if name in ("le", "quantile") else value) for name, value in labels.items()))


def samples_of(registry):
    """Every sample a client registry holds: {(name, labels): value}."""
    return {(sample.name, normal(sample.labels)): sample.value for family in registry.collect() for sample in family.samples}


def check_pushed(hermes, registry, grouping):
    """Each sample of `registry` is on /metrics with the grouping labels and instance="",
    at exactly the client's value."""
    shown = {}
    for family in text_string_to_metric_families(hermes.scrape()):
        for sample in family.samples:
            shown[(sample.name, normal(sample.labels))] = sample.value
    for (name, labels), value in samples_of(registry).items():
        key = dict(labels)
        key.update(grouping)
        key.setdefault("instance", "")
        check_equal(shown.get((name, normal(key))), value, f"{name}{key}")


def every_type_registry():
    registry = CollectorRegistry()
    Counter("batch_items", "Items the batch handled.", ["kind"], registry=registry).labels("mail").inc(7)
    Gauge("batch_last_success_seconds", "When the batch last succeeded.", registry=registry).set(1700000000.5)
    summary = Summary("batch_item_seconds", "Seconds per item.", registry=registry)
    for value in (0.25, 0.5, 4):
        summary.observe(value)
    histogram = Histogram("batch_size_bytes", "Sizes.", buckets=(10, 100, 1e6), registry=registry)
    for value in (5, 50, 500, 5e6):
        histogram.observe(value)
    Info("batch_build", "The batch's build.", registry=registry).info({"version": "1.2", "commit": "abc"})
    Enum("batch_state", "The batch's state.", states=["running", "done"], registry=registry).state("done")
    return registry


@with_hermes()
def push_to_gateway_pushes_every_metric_type_exactly(hermes):
    registry = every_type_registry()
    push_to_gateway(gateway(hermes), job="nightly", registry=registry)
    check_pushed(hermes, registry, {"job": "nightly"})
    lines = pushed_lines(hermes)
    for expected in ['batch_size_bytes_bucket{instance="",job="nightly",le="10"} 1',
                     'batch_size_bytes_bucket{instance="",job="nightly",le="1e+06"} 3',
                     'batch_size_bytes_bucket{instance="",job="nightly",le="+Inf"} 4',
                     'batch_size_bytes_sum{instance="",job="nightly"} 5.000555e+06',
                     'batch_items_total{instance="",job="nightly",kind="mail"} 7',
                     'batch_build_info{commit="abc",instance="",job="nightly",version="1.2"} 1',
                     'batch_state{batch_state="done",instance="",job="nightly"} 1',
                     'batch_last_success_seconds{instance="",job="nightly"} 1.7000000005e+09',
                     '# HELP batch_items_total Items the batch handled.', '# TYPE batch_items_total counter',
                     '# TYPE batch_item_seconds summary']:
        check_equal(expected in lines, True, expected)


@with_hermes()
def pushadd_replaces_only_the_families_it_pushes_and_put_replaces_all(hermes):
    first, second = CollectorRegistry(), CollectorRegistry()
    Gauge("kept", "Kept.", registry=first).set(1)
    Gauge("replaced", "Replaced.", registry=first).set(2)
    Gauge("replaced", "Replaced.", registry=second).set(3)
    push_to_gateway(gateway(hermes), job="j", registry=first)
    pushadd_to_gateway(gateway(hermes), job="j", registry=second)
    metrics = hermes.metrics()
    check_equal(metrics.get('kept{instance="",job="j"}'), 1, "POST keeps the other families")
    check_equal(metrics.get('replaced{instance="",job="j"}'), 3, "POST replaces its own")
    push_to_gateway(gateway(hermes), job="j", registry=second)
    metrics = hermes.metrics()
    check_equal(metrics.get('kept{instance="",job="j"}'), None, "PUT replaces the whole group")
    check_equal(metrics.get('replaced{instance="",job="j"}'), 3, "PUT keeps what it pushes")


@with_hermes()
def delete_from_gateway_removes_the_group_and_only_it(hermes):
    registry = CollectorRegistry()
    Gauge("g", "G.", registry=registry).set(5)
    push_to_gateway(gateway(hermes), job="a", registry=registry)
    push_to_gateway(gateway(hermes), job="b", registry=registry)
    delete_from_gateway(gateway(hermes), job="a")
    metrics = hermes.metrics()
    check_equal(metrics.get('g{instance="",job="a"}'), None, "deleted")
    check_equal(metrics.get('g{instance="",job="b"}'), 5, "the other group stays")
    check_equal(metrics.get('push_time_seconds{instance="",job="a"}'), None, "its push time goes with it")
    check_equal(hermes.metric("hermes_push_groups"), 1, "groups")


@with_hermes()
def a_grouping_key_with_a_slash_travels_as_base64(hermes):
    registry = CollectorRegistry()
    Gauge("g", "G.", registry=registry).set(1)
    push_to_gateway(gateway(hermes), job="backup/db", registry=registry, grouping_key={"path": "/var/lib", "empty": ""})
    metrics = hermes.metrics()
    check_equal(metrics.get('g{empty="",instance="",job="backup/db",path="/var/lib"}'), 1, "decoded grouping labels")
    delete_from_gateway(gateway(hermes), job="backup/db", grouping_key={"path": "/var/lib", "empty": ""})
    check_equal(hermes.metric("hermes_push_groups"), 0, "deleted by the same key")


@with_hermes()
def curl_pushes_a_text_body_and_the_group_shows_as_pushgateway_shows_it(hermes):
    body = ('# HELP some_metric Just an example.\n# TYPE some_metric counter\n'
            'some_metric{label="val1",job="ignored"} 42\nanother_metric 2398.283\n')
    check_equal(curl(hermes, "--data-binary", body, "/metrics/job/some_job/instance/some_instance"), (200, ""))
    lines = [line for line in pushed_lines(hermes) if not line.startswith("push_") and "push_" not in line]
    check_equal(lines, ['# TYPE another_metric untyped',
                        'another_metric{instance="some_instance",job="some_job"} 2398.283',
                        '# HELP some_metric Just an example.', '# TYPE some_metric counter',
                        'some_metric{instance="some_instance",job="some_job",label="val1"} 42'])
    push_time = hermes.metric('push_time_seconds{instance="some_instance",job="some_job"}')
    check_equal(abs(push_time - time.time()) < 60, True, f"push_time_seconds {push_time} is now")
    check_equal(hermes.metric('push_failure_time_seconds{instance="some_instance",job="some_job"}'), 0, "no failure")


@with_hermes()
def bad_bodies_and_conflicts_are_refused_with_the_reason_and_change_nothing(hermes):
    check_equal(curl(hermes, "--data-binary", "a 1\n", "/metrics/job/j"), (200, ""))
    before = pushed_lines(hermes)
    check_equal(curl(hermes, "--data-binary", 'a{x="1" 2\n', "/metrics/job/j"),
                (400, 'text format parsing error in line 1: unexpected end of label value "1"'))
    check_equal(curl(hermes, "--data-binary", "a 1 1700000000000\n", "/metrics/job/j"),
                (400, "pushed metrics are invalid or inconsistent with existing metrics: pushed metrics must not have timestamps"))
    check_equal(curl(hermes, "--data-binary", "# TYPE a gauge\na 1\n", "/metrics/job/k"),
                (400, 'pushed metrics are invalid or inconsistent with existing metrics: family "a" is pushed as gauge '
                      'but another group has it as untyped'))
    check_equal(curl(hermes, "--data-binary", "jobs_total 1\n", "/metrics/job/j"),
                (400, 'pushed metrics are invalid or inconsistent with existing metrics: family "jobs_total" writes '
                      'jobs_total, a metric Hermes serves already'))
    check_equal(curl(hermes, "--data-binary", "hermes_series 1\n", "/metrics/job/j")[0], 400, "one of Hermes' own")
    check_equal(curl(hermes, "--data-binary", 'a{j="x"} 1\n', "/metrics/job/j/j/x")[0], 200, "a group of its own")
    check_equal(curl(hermes, "--data-binary", "a 1\n", "/metrics/job/j/j/x")[0], 200, "the same group again")
    check_equal(curl(hermes, "--data-binary", 'a{j="x"} 1\n', "/metrics/job/j")[0], 400, "a label set another group holds")
    check_equal(hermes.metric('push_time_seconds{instance="",job="k"}'), 0, "a refused push makes its group, as Pushgateway")
    after = [line for line in pushed_lines(hermes) if 'j="x"' not in line and 'job="k"' not in line]
    check_equal([line for line in after if not line.startswith("push_failure")],
                [line for line in before if not line.startswith("push_failure")], "nothing else changed")
    failed = hermes.metric('push_failure_time_seconds{instance="",job="j"}')
    check_equal(abs(failed - time.time()) < 60, True, "the failure time is kept")


@with_hermes(config={"service_name": "push-service", "statsd_undeclared": "accept",
                     "gauges": [{"metric_name": "configured"}]})
def a_name_is_either_pushed_or_made_by_statsd_lines_or_configured_never_two(hermes):
    check_equal(curl(hermes, "--data-binary", "# TYPE built counter\nbuilt 3\n", "/metrics/job/j"), (200, ""))
    hermes.push(b"built:1|c", b"lines:2|g")
    hermes.wait_for("lines", 2)
    check_equal(hermes.metric('hermes_samples_rejected_total{reason="type_mismatch"}'), 1,
                "the line's built_total would write built, a pushed family")
    check_equal(curl(hermes, "--data-binary", "lines_sum 1\n", "/metrics/job/j")[0], 200, "a name lines does not write")
    check_equal(curl(hermes, "--data-binary", "# TYPE lines histogram\nlines_count 1\nlines_sum 1\n", "/metrics/job/k"),
                (400, 'pushed metrics are invalid or inconsistent with existing metrics: family "lines" writes lines, '
                      'a metric Hermes serves already'))
    families = [f.name for f in text_string_to_metric_families(hermes.scrape())]
    check_equal(len(families), len(set(families)), "every family once on /metrics")
    with open(hermes.config_path, "w") as file:
        json.dump({"service_name": "push-service", "statsd_undeclared": "accept",
                   "gauges": [{"metric_name": "configured"}, {"metric_name": "built"}]}, file)
    hermes.process.send_signal(signal.SIGHUP)
    hermes.wait_for('hermes_config_reloads_total{result="failure"}', 1)
    check_equal(hermes.metric('built{instance="",job="j"}'), 3, "the pushed family stays; the config that would hide it is refused")


@with_hermes(env={"HERMES_MAX_PUSH_BYTES": "2048"})
def length_size_and_encoding_are_checked_before_the_body_is_read(hermes):
    check_equal(curl(hermes, "-X", "PUT", "/metrics/job/j")[0], 411, "neither Content-Length nor chunks")
    check_equal(curl(hermes, "--data-binary", "a 1\n" * 600, "/metrics/job/j")[0], 413, "over HERMES_MAX_PUSH_BYTES")
    check_equal(curl(hermes, "-H", "Content-Encoding: gzip", "--data-binary", "a 1\n", "/metrics/job/j")[0], 415, "gzip")
    check_equal(curl(hermes, "-H", "Content-Type: application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily;"
                     " encoding=delimited", "--data-binary", "x", "/metrics/job/j")[0], 400, "protobuf, cut short")
    check_equal(curl(hermes, "-X", "DELETE", "/metrics/job/j"), (202, ""), "a DELETE needs no length")
    check_equal(curl(hermes, "-X", "GET", "/metrics/job/j")[0], 404, "GET is no push")
    check_equal(curl(hermes, "-X", "PATCH", "/metrics/job/j")[0], 405, "nor is PATCH")
    check_equal(hermes.metric('hermes_push_requests_total{method="PUT",code="411"}'), 1, "411 counted")
    check_equal(hermes.metric('hermes_push_requests_total{method="POST",code="413"}'), 1, "413 counted")
    check_equal(hermes.metric('hermes_push_requests_total{method="DELETE",code="202"}'), 1, "202 counted")
    check_equal(hermes.metric("hermes_push_groups"), 0, "nothing was applied")


@with_hermes(env={"HERMES_MAX_PUSH_BYTES": "2048"})
def a_chunked_body_is_read_within_the_limit(hermes):
    """As Node sends a body written in parts (prom-client's): no Content-Length, chunks."""
    def chunked(path, chunks, end=b"0\r\nX-Trailer: t\r\n\r\n"):
        raw = f"PUT {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        answer = hermes.request(raw + b"".join(b"%x;e=1\r\n%s\r\n" % (len(c), c) for c in chunks) + end)
        head, _, body = answer.partition("\r\n\r\n")
        return int(head.split(" ")[1]), body

    check_equal(chunked("/metrics/job/c", [b"x 1\ny", b" 2\n"]), (200, ""))
    metrics = hermes.metrics()
    check_equal((metrics.get('x{instance="",job="c"}'), metrics.get('y{instance="",job="c"}')), (1, 2), "both chunks")
    check_equal(chunked("/metrics/job/c", [b"z 1\n" * 100] * 6),
                (413, "a chunked body larger than the limit of 2048 bytes, its framing counted\n"))
    check_equal(chunked("/metrics/job/c", [], b"zz\r\nz 1\n\r\n0\r\n\r\n"),
                (400, "a chunked body whose chunk framing does not parse\n"))
    check_equal(hermes.metric('z{instance="",job="c"}'), None, "nothing of a refused body")
    check_equal(hermes.metric('hermes_push_requests_total{method="PUT",code="413"}'), 1, "413 counted")


@with_hermes(env={"HERMES_MAX_MEMORY": "8MiB"})
def a_push_with_no_room_is_refused_507_and_costs_no_group_nor_scrape(hermes):
    padding = "x" * 40
    body = "".join(f'filler{{i="{i:04d}",padding="{padding}"}} {i}\n' for i in range(300)).encode()
    statuses = [send(hermes, "PUT", f"/metrics/job/fill/n/{n}", body)[0] for n in range(60)]
    check_equal(statuses.count(507) > 0 and statuses[0] == 200, True, f"statuses {statuses}")
    held = statuses.index(507)
    check_equal(set(statuses[held:]), {507}, "once full, every push for a new group is refused")
    metrics = hermes.metrics()
    for n in range(held):
        check_equal(metrics.get(f'filler{{i="0299",instance="",job="fill",n="{n}",padding="{padding}"}}'), 299, "kept")
    check_equal(hermes.metric("hermes_push_groups"), held, "the groups that fitted stay")
    check_equal(hermes.metric('hermes_push_requests_total{method="PUT",code="507"}'), 60 - held, "507 counted")
    for _ in range(3):
        hermes.scrape()  # a scrape is never refused
    check_equal(send(hermes, "DELETE", "/metrics/job/fill/n/0")[0], 202, "delete")
    check_equal(send(hermes, "PUT", "/metrics/job/fill/n/0", body)[0], 200, "a deleted group's room is free again")


@with_hermes(env={"HERMES_MAX_PUSH_GROUPS": "2"})
def max_push_groups_caps_the_groups(hermes):
    for job in ("a", "b"):
        check_equal(send(hermes, "PUT", f"/metrics/job/{job}", b"x 1\n")[0], 200, job)
    status, message = send(hermes, "PUT", "/metrics/job/c", b"x 1\n")
    check_equal((status, message), (507, "no room for one more group: max_push_groups (2) groups are held\n"))
    check_equal(send(hermes, "PUT", "/metrics/job/a", b"x 2\n")[0], 200, "an existing group may push again")


@with_hermes(env={"HERMES_PUSH_TTL": "1"})
def a_group_not_pushed_for_the_ttl_disappears(hermes):
    send(hermes, "PUT", "/metrics/job/old", b"x 1\n")
    time.sleep(0.6)
    send(hermes, "PUT", "/metrics/job/new", b"x 1\n")
    time.sleep(0.6)
    metrics = hermes.metrics()
    check_equal(metrics.get('x{instance="",job="old"}'), None, "expired")
    check_equal(metrics.get('x{instance="",job="new"}'), 1, "still within its TTL")


def token_file(text):
    handle, path = tempfile.mkstemp(prefix="hermes-push-token-")
    with os.fdopen(handle, "w") as file:
        file.write(text + "\n")
    return path


PUSH_TOKEN = token_file("s3cret-push-token")


@with_hermes(env={"HERMES_PUSH_TOKEN_FILE": PUSH_TOKEN})
def pushes_and_deletes_need_the_push_token(hermes):
    check_equal(send(hermes, "PUT", "/metrics/job/j", b"x 1\n")[0], 401, "without the token")
    check_equal(send(hermes, "PUT", "/metrics/job/j", b"x 1\n", {"Authorization": "Bearer wrong"})[0], 401, "a wrong one")
    check_equal(send(hermes, "PUT", "/metrics/job/j", b"x 1\n", {"Authorization": "Bearer s3cret-push-token"})[0], 200)
    check_equal(send(hermes, "DELETE", "/metrics/job/j")[0], 401, "a delete too")
    check_equal(hermes.metric('x{instance="",job="j"}'), 1, "/metrics stays open: the push token is not its")


@with_hermes(env={"HERMES_HTTP_ALLOW": "192.0.2.0/24"})
def the_http_allow_list_applies_to_pushes(hermes):
    check_equal(hermes.request("PUT /metrics/job/j HTTP/1.0\r\nContent-Length: 4\r\n\r\nx 1\n").split("\r\n")[0],
                "HTTP/1.0 403 Forbidden")


@with_hermes()
def the_admin_wipe_is_off_by_default(hermes):
    send(hermes, "PUT", "/metrics/job/j", b"x 1\n")
    check_equal(send(hermes, "PUT", "/api/v1/admin/wipe", b"")[0], 405, "off")
    check_equal(hermes.metric("hermes_push_groups"), 1, "nothing wiped")


@with_hermes(env={"HERMES_PUSH_ADMIN": "on"})
def the_admin_wipe_deletes_every_group_when_on(hermes):
    for job in ("a", "b"):
        send(hermes, "PUT", f"/metrics/job/{job}", b"x 1\n")
    check_equal(send(hermes, "PUT", "/api/v1/admin/wipe", b"")[0], 202, "wiped")
    check_equal(hermes.metric("hermes_push_groups"), 0, "no group left")
    check_equal(hermes.metric("hermes_push_group_bytes"), 0, "nor any byte")


@with_hermes()
def the_groups_bytes_are_counted_and_given_back(hermes):
    used = hermes.metric("hermes_memory_used_bytes")
    send(hermes, "PUT", "/metrics/job/j", b"x 1\ny 2\n")
    held = hermes.metric("hermes_push_group_bytes")
    # Each scrape's body is in the used bytes too, and a body with the group is larger.
    check_equal(held > 0 and hermes.metric("hermes_memory_used_bytes") >= used + held, True, f"{held} bytes held")
    with_group = hermes.metric("hermes_memory_used_bytes")
    send(hermes, "DELETE", "/metrics/job/j")
    check_equal(hermes.metric("hermes_push_group_bytes"), 0, "given back")
    check_equal(hermes.metric("hermes_memory_used_bytes") <= with_group - held, True, "and out of the used bytes")


@with_hermes()
def openmetrics_and_protobuf_scrapes_show_the_groups(hermes):
    send(hermes, "PUT", "/metrics/job/j", b"# TYPE done_total counter\ndone_total 3\nx 1\n")
    response = hermes.request("GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    body = response.partition("\r\n\r\n")[2]
    for line in ["# TYPE done counter", 'done_total{instance="",job="j"} 3', "# TYPE x unknown", 'x{instance="",job="j"} 1']:
        check_equal(line in body.splitlines(), True, line)
    families = {family.name: family for family in
                __import__("prometheus_client.openmetrics.parser", fromlist=["x"]).text_string_to_metric_families(body)}
    check_equal(families["done"].samples[0].value, 3, "the OpenMetrics parser reads it")


@test
def pushed_groups_survive_a_restart_through_the_state_file():
    """As Pushgateway's --persistence.file: every group, its push times and its TTL age
    come back; a group past its TTL at restart goes at the first sweep."""
    directory = tempfile.mkdtemp(prefix="hermes-push-state-")
    env = {"HERMES_STATE_FILE": os.path.join(directory, "state.json"), "HERMES_STATE_INTERVAL": "3600",
           "HERMES_PUSH_TTL": "6"}
    first = Hermes(CONFIG, env=env)
    try:
        check_equal(send(first, "PUT", "/metrics/job@base64/YS9i/zone/z", b"# HELP x An x.\n# TYPE x gauge\nx 1.5\n")[0], 200)
        check_equal(send(first, "PUT", "/metrics/job/bad", b"x 1 1000\n")[0], 400, "a failure time only")
        check_equal(send(first, "PUT", "/metrics/job/short", b"y 2\n")[0], 200)
        time.sleep(3)
        check_equal(send(first, "POST", "/metrics/job/short", b"z 3\n")[0], 200, "pushed again: its TTL starts over")
        before = pushed_lines(first)
        check_equal(first.stop()[0], 0, "exit code")
    finally:
        first.close()
    again = Hermes(CONFIG, env=env)
    try:
        check_equal(pushed_lines(again), before, "every group, push times and all")
        check_equal(again.metric("hermes_push_groups"), 3, "three groups")
        time.sleep(3.2)  # past the TTL of the groups pushed first, not of the one pushed again 3 s later
        metrics = again.metrics()
        check_equal(metrics.get('x{instance="",job="a/b",zone="z"}'), None, "expired on its age from before")
        check_equal(metrics.get('z{instance="",job="short"}'), 3, "still within its TTL")
    finally:
        again.close()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


# ---- Hostile pushes ----------------------------------------------------------------------

READ_TIMEOUT = 5.0  # HERMES_HTTP_READ_TIMEOUT_MS: what a client has for its head, and then for its body


def open_push(hermes, path, length, first_bytes=b""):
    """A socket that has sent a push's head (Content-Length `length`) and `first_bytes` of its body."""
    sock = socket.create_connection((hermes.http_host, hermes.http_port), timeout=READ_TIMEOUT + 5)
    sock.sendall(f"PUT {path} HTTP/1.0\r\nContent-Length: {length}\r\n\r\n".encode() + first_bytes)
    return sock


def answer_of(sock):
    """What the server sends before it closes: b"" when it closes without an answer."""
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(chunks)


def trickle(sock, stop):
    """A byte a second until the server closes or `stop` is set."""
    while not stop.is_set():
        try:
            sock.sendall(b"x")
        except OSError:
            return
        stop.wait(1)


@with_hermes()
def a_trickled_body_and_a_longer_content_length_are_cut_at_the_read_timeout(hermes):
    """Slowloris on the body, and a body shorter than its Content-Length: each client has
    the read timeout from its head, then it is closed, its room given back; scrapes go on."""
    used = hermes.metric("hermes_memory_used_bytes")
    started = time.monotonic()
    trickler = open_push(hermes, "/metrics/job/trickle", 1000, b"# a comment\n")
    liar = open_push(hermes, "/metrics/job/liar", 4000, b"x 1\n")
    stop = threading.Event()
    feeder = threading.Thread(target=trickle, args=(trickler, stop))
    feeder.start()
    try:
        time.sleep(1)
        check_equal(hermes.metric("hermes_push_groups"), 0, "nothing applied while bodies are unread")
        answers = {}
        readers = [threading.Thread(target=lambda name, sock: answers.__setitem__(name, (answer_of(sock), time.monotonic())),
                                    args=(name, sock)) for name, sock in (("trickle", trickler), ("liar", liar))]
        for reader in readers:
            reader.start()
        while any(reader.is_alive() for reader in readers):
            hermes.scrape()  # never refused meanwhile
            time.sleep(0.5)
    finally:
        stop.set()
        feeder.join()
    for name in ("trickle", "liar"):
        answer, closed_at = answers[name]
        check_equal(answer, b"", f"{name}: closed unanswered, nothing of it applied")
        check_equal(READ_TIMEOUT - 0.5 < closed_at - started < READ_TIMEOUT + 2, True, f"{name}: closed after {closed_at - started:.1f} s")
    check_equal(hermes.metric("hermes_push_groups"), 0, "no group")
    check_equal(hermes.metric("hermes_memory_used_bytes") <= used, True, "the bodies' room is given back")


@with_hermes()
def a_shorter_content_length_pushes_what_it_counts(hermes):
    """As Go's server reads it: the body is the Content-Length's bytes; the rest is not a request."""
    sock = open_push(hermes, "/metrics/job/short", 4, b"x 1\ny 2\n")
    check_equal(answer_of(sock).split(b"\r\n")[0], b"HTTP/1.0 200 OK")
    metrics = hermes.metrics()
    check_equal(metrics.get('x{instance="",job="short"}'), 1, "the counted bytes")
    check_equal(metrics.get('y{instance="",job="short"}'), None, "not the rest")


@with_hermes()
def many_pushes_holding_connections_never_darken_metrics(hermes):
    """80 pushes hold connections mid-body, past HERMES_MAX_CONNECTIONS: a scrape still gets
    200 (an idle reader gives up its place), the pushes still open finish, and every
    byte taken for the bodies is given back."""
    used = hermes.metric("hermes_memory_used_bytes")
    body = b"x 1\n# " + b"p" * 100000 + b"\n"  # each body's room is taken at its head: 100 kB
    socks = [open_push(hermes, f"/metrics/job/hold/n/{n}", len(body), body[:-2]) for n in range(80)]
    time.sleep(0.3)
    for _ in range(3):
        hermes.scrape()  # asserts 200
    statuses = []
    for sock in socks:
        try:
            sock.sendall(body[-2:])
        except OSError:
            pass
        answer = answer_of(sock)
        statuses.append(answer.split(b" ")[1] if answer else b"closed")
    pushed = statuses.count(b"200")
    check_equal(set(statuses) <= {b"200", b"closed"} and pushed >= 60, True, f"statuses {statuses}")
    check_equal(hermes.metric("hermes_push_groups"), pushed, "a group per push answered 200")
    # What is used now: the groups, and a scrape body with them (far less than one push body).
    check_equal(hermes.metric("hermes_memory_used_bytes") < used + hermes.metric("hermes_push_group_bytes") + 50000, True,
                "no push body's room is kept")


@with_hermes()
def a_key_of_a_thousand_labels_is_taken_and_a_huge_path_is_431(hermes):
    labels = "".join(f"/l{i}/v" for i in range(1000))  # within HERMES_MAX_REQUEST_HEAD
    status, message = send(hermes, "PUT", "/metrics/job/wide" + labels, b"x 1\n")
    check_equal(status, 200, message)
    line = [line for line in hermes.scrape().splitlines() if line.startswith("x{")]
    check_equal(len(line), 1, "one sample")
    check_equal(line[0].count('="v"'), 1000, "every grouping label on it")
    check_equal(hermes.request("PUT /metrics/job/" + "j" * 20000 + " HTTP/1.0\r\nContent-Length: 4\r\n\r\nx 1\n").split("\r\n")[0],
                "HTTP/1.0 431 Request Header Fields Too Large")
    hermes.scrape()


@with_hermes()
def label_values_with_every_escape_come_back_exactly(hermes):
    body = ('m{a="q\\"b",b="back\\\\slash",c="new\\nline",d="tab\tand \u00e9\U0001F600",e=""} 1\n').encode()
    check_equal(send(hermes, "PUT", "/metrics/job@base64/Lw==/k@base64/YT1iL2M=/z/%20%25", body), (200, ""))
    shown = [line for line in hermes.scrape().splitlines() if line.startswith("m{")]
    check_equal(shown, ['m{a="q\\"b",b="back\\\\slash",c="new\\nline",d="tab\tand \u00e9\U0001F600",e="",instance="",'
                        'job="/",k="a=b/c",z=" %"} 1'])
    status, message = send(hermes, "PUT", "/metrics/job/j", b'm{a="\\t"} 1\n')
    check_equal((status, message), (400, 'text format parsing error in line 1: invalid escape sequence \'\\t\'\n'))
    status, message = send(hermes, "PUT", "/metrics/job/j", b'm{a="\xff"} 1\n')
    check_equal(status, 400, message)


@with_hermes(env={"HERMES_MAX_MEMORY": "8MiB", "HERMES_MAX_PUSH_GROUPS": "100000"})
def a_flood_of_groups_ends_in_507_while_metrics_answers_200(hermes):
    body = "".join(f'flood{{i="{i:03d}"}} {i}\n' for i in range(100)).encode()
    scrapes, stop = [], threading.Event()

    def scrape_all_along():
        while not stop.is_set():
            scrapes.append(hermes.request("GET /metrics HTTP/1.0\r\n\r\n").split("\r\n")[0])

    scraper = threading.Thread(target=scrape_all_along)
    scraper.start()
    try:
        statuses = []
        for n in range(20000):
            statuses.append(send(hermes, "PUT", f"/metrics/job/flood/n/{n}", body)[0])
            if statuses[-1] != 200 and len(statuses) > 5 and set(statuses[-5:]) == {507}:
                break
    finally:
        stop.set()
        scraper.join()
    held = statuses.index(507)
    check_equal(set(statuses[:held]) == {200} and set(statuses[held:]) == {507}, True, "200 until full, then 507")
    check_equal(set(scrapes), {"HTTP/1.0 200 OK"}, f"{len(scrapes)} scrapes during the flood")
    check_equal(hermes.metric("hermes_push_groups"), held, "the groups that fitted")
    check_equal(hermes.metric('hermes_push_requests_total{method="PUT",code="507"}'), len(statuses) - held, "counted")


if __name__ == "__main__":
    code = run_suite("pushgateway", TESTS)
    os.unlink(PUSH_TOKEN)
    sys.exit(code)
