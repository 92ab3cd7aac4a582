#!/usr/bin/env python3
"""The Pushgateway API of the built hermes, driven by two more real clients, unmodified:
client_golang's push package from Debian (golang-github-prometheus-client-golang-dev,
built in GOPATH mode into build/push_golang from tests/clients/push_golang.go), which
sends protobuf bodies, every metric type and native histograms; and prom-client's
Pushgateway from npm (tests/clients/prom_client.js), which sends text in chunks. Each
step goes to hermes and to Debian's prometheus-pushgateway: the client sees the same
answer from both, hermes shows exactly the values and labels pushed (its text /metrics
parsed, native buckets read from its protobuf /metrics), and both show the same groups
line for line.

make test builds and installs the clients first; a client that is missing fails its
test, never skips it.

usage: push_clients.py PATH_TO_HERMES
Ends with the line "push_clients: N passed, N failed".
"""
import json
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blackbox import ROOT, check_equal, clean_env, debian_module  # noqa: E402

debian_module("push_clients", "prometheus_client", "python3-prometheus-client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from pushgateway_diff import PUSHGATEWAY, both, check_groups, protobuf_family  # noqa: E402
from remote_write import fields, varint  # noqa: E402  (a protobuf reader)
from state import run_suite  # noqa: E402

TESTS = []
GO_CLIENT = os.path.join(ROOT, "build", "push_golang")
NODE_MODULES = os.path.join(ROOT, "build", "npm", "node_modules")


def test(function):
    TESTS.append(function)
    return function


def with_both(function):
    """Runs the test against a hermes and a Pushgateway of its own (pushgateway_diff's
    `both`, which also lists it among that suite's tests, not run here)."""
    return test(both(function))


def url(port):
    return f"http://127.0.0.1:{port}"


def group(hermes, grouping):
    """The samples of one pushed group on hermes' text /metrics, parsed:
    {(name, ((label, value), ...) without the grouping labels): value}, push_time_seconds
    left out (a clock), and {family: type} of the families it has samples in."""
    samples, types = {}, {}
    for family in text_string_to_metric_families(hermes.scrape()):
        for sample in family.samples:
            if any(sample.labels.get(name) != value for name, value in grouping.items()):
                continue
            if sample.name != "push_time_seconds":
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in grouping))
                samples[(sample.name, labels)] = sample.value
                types[family.name] = family.type
    return samples, types


def check_group(hermes, grouping, expected_samples, expected_types):
    samples, types = group(hermes, grouping)
    check_equal(samples, {**expected_samples, ("push_failure_time_seconds", ()): 0}, f"samples of {grouping}")
    check_equal(types, dict(expected_types, push_failure_time_seconds="gauge"), f"types of {grouping}")


# What both clients push: the same families and values, each client's way.
EVERY_TYPE = {
    ("batch_items_total", (("kind", "mail"),)): 7, ("batch_items_total", (("kind", "sms"),)): 1,
    ("batch_last_success_seconds", ()): 1700000000.5,
    ("batch_item_seconds", (("quantile", "0.5"),)): 0.5, ("batch_item_seconds", (("quantile", "0.9"),)): 4,
    ("batch_item_seconds_sum", ()): 4.75, ("batch_item_seconds_count", ()): 3,
    ("batch_size_bytes_bucket", (("le", "10"),)): 1, ("batch_size_bytes_bucket", (("le", "100"),)): 2,
    ("batch_size_bytes_bucket", (("le", "1e+06"),)): 3, ("batch_size_bytes_bucket", (("le", "+Inf"),)): 4,
    ("batch_size_bytes_sum", ()): 5000555, ("batch_size_bytes_count", ()): 4,
    ("batch_escaped", (("value", 'q"b\\s\nl é'),)): -1.5,
}
EVERY_TYPE_TYPES = {"batch_items": "counter", "batch_last_success_seconds": "gauge", "batch_item_seconds": "summary",
                    "batch_size_bytes": "histogram", "batch_escaped": "gauge"}
# And client_golang's native histograms (observations 0, 0.5, 1, 1.5, 3, -2), one with a
# classic bucket at 1 beside, and an untyped metric.
GO_ONLY = {
    ("batch_duration_seconds_bucket", (("le", "1"),)): 4, ("batch_duration_seconds_bucket", (("le", "+Inf"),)): 6,
    ("batch_duration_seconds_sum", ()): 4, ("batch_duration_seconds_count", ()): 6,
    ("batch_wait_seconds_bucket", (("le", "+Inf"),)): 6, ("batch_wait_seconds_sum", ()): 4,
    ("batch_wait_seconds_count", ()): 6, ("batch_untyped", ()): 42,
}
GO_ONLY_TYPES = {"batch_duration_seconds": "histogram", "batch_wait_seconds": "histogram", "batch_untyped": "unknown"}
ADDED = {("batch_last_success_seconds", ()): 1.8e9, ("batch_retries_total", ()): 2}


# ---- Native histograms, read from hermes' protobuf /metrics ----------------------------------

def double(fixed64):
    return struct.unpack("<d", fixed64)[0]


def signed(zigzag):
    return (zigzag >> 1) ^ -(zigzag & 1)


def packed_signed(data):
    values, at = [], 0
    while at < len(data):
        value, at = varint(data, at)
        values.append(signed(value))
    return values


def native_histogram(family):
    """The one histogram of a MetricFamily's bytes: count, sum, classic buckets, and the
    native schema, zero bucket and spans with their deltas, each side."""
    metrics = [value for number, value in fields(family) if number == 4]
    check_equal(len(metrics), 1, "one metric in the family")
    histogram = dict(count=None, sum=None, buckets=[], schema=None, zero_threshold=None, zero_count=None,
                     negative_spans=[], negative_deltas=[], positive_spans=[], positive_deltas=[])
    names = {1: "count", 2: "sum", 6: "zero_threshold", 7: "zero_count"}
    for number, value in fields(dict(fields(metrics[0]))[7]):
        if number in names:
            histogram[names[number]] = double(value) if number in (2, 6) else value
        elif number == 3:
            bucket = dict(fields(value))
            histogram["buckets"].append((bucket[1], double(bucket[2])))
        elif number == 5:
            histogram["schema"] = signed(value)
        elif number in (9, 12):
            span = dict(fields(value))
            histogram["negative_spans" if number == 9 else "positive_spans"].append((signed(span.get(1, 0)), span.get(2, 0)))
        elif number in (10, 13):  # proto2: one varint a field; packed when a writer packs them
            deltas = [signed(value)] if isinstance(value, int) else packed_signed(value)
            histogram["negative_deltas" if number == 10 else "positive_deltas"] += deltas
    return histogram


# Schema 3 (factor 1.1): bucket i holds (2^((i-1)/8), 2^(i/8)]; 0.5, 1, 1.5 and 3 fall in
# -8, 0, 5 and 13, -2 in -8's mirror; 0 in the zero bucket. client_golang starts a new
# span past a gap of more than two buckets.
NATIVE = dict(count=6, sum=4.0, schema=3, zero_threshold=2 ** -128, zero_count=1,
              negative_spans=[(8, 1)], negative_deltas=[1],
              positive_spans=[(-8, 1), (7, 1), (4, 1), (7, 1)], positive_deltas=[1, 0, 0, 0])


# ---- client_golang's push package -----------------------------------------------------------

# push_golang's group: a '/' and an empty value go as base64; "a b+c" is query-escaped by
# client_golang (a+b%2Bc) and the path decoded as a path, so both gateways read "a+b+c".
GO_GROUPING = {"job": "nightly", "instance": "", "path": "/var/lib", "empty": "", "note": "a+b+c"}


def go_step(gateway, hermes, step):
    """One step of push_golang against both: it succeeds against each."""
    assert os.access(GO_CLIENT, os.X_OK), f"{GO_CLIENT} is missing: make build/push_golang (Debian's golang-go and " \
                                          "golang-github-prometheus-client-golang-dev, which make test-deps installs)"
    for port in (gateway.port, hermes.http_port):
        result = subprocess.run([GO_CLIENT, url(port), step], capture_output=True, text=True, timeout=30)
        check_equal((result.returncode, result.stderr), (0, ""), f"push_golang {step} to port {port}")
    check_groups(gateway, hermes, f"push_golang {step}")


@with_both
def client_golang_pushes_every_type_and_native_histograms_as_protobuf(gateway, hermes):
    go_step(gateway, hermes, "push")
    check_group(hermes, GO_GROUPING, {**EVERY_TYPE, **GO_ONLY}, dict(EVERY_TYPE_TYPES, **GO_ONLY_TYPES))
    for name, classic in (("batch_wait_seconds", []), ("batch_duration_seconds", [(4, 1.0)])):
        ours, theirs = protobuf_family(hermes.http_port, name), protobuf_family(gateway.port, name)
        check_equal(native_histogram(ours), dict(NATIVE, buckets=classic), f"{name}'s native histogram")
        check_equal(ours, theirs, f"{name} in protobuf, as Pushgateway serves it")


@with_both
def client_golang_add_replaces_its_families_push_replaces_all_delete_removes(gateway, hermes):
    go_step(gateway, hermes, "push")
    go_step(gateway, hermes, "add")
    check_group(hermes, GO_GROUPING, {**EVERY_TYPE, **GO_ONLY, **ADDED},
                dict(EVERY_TYPE_TYPES, **GO_ONLY_TYPES, batch_retries="counter"))
    go_step(gateway, hermes, "replace")
    check_group(hermes, GO_GROUPING, {("batch_retries_total", ()): 3}, {"batch_retries": "counter"})
    go_step(gateway, hermes, "delete")
    check_equal(group(hermes, {"job": "nightly"}), ({}, {}), "the group is gone")
    check_equal(hermes.metric("hermes_push_groups"), 0, "no group left")


# ---- prom-client's Pushgateway --------------------------------------------------------------

PROM_GROUPING = {"job": "nightly", "instance": "i-1", "path": "/var/lib"}
OTHER_GROUPING = {"job": "nightly", "instance": "i-2", "path": None}  # None: without the label


def prom_client(port, step):
    """What prom-client reported for one step of prom_client.js: status and body, or the error."""
    node = shutil.which("node")
    assert node, "node is missing: apt-get install nodejs (make push-clients)"
    assert os.path.isdir(os.path.join(NODE_MODULES, "prom-client")), f"prom-client is missing in {NODE_MODULES}: make push-clients"
    result = subprocess.run([node, os.path.join(ROOT, "tests", "clients", "prom_client.js"), url(port), step],
                            env=clean_env(NODE_PATH=NODE_MODULES), capture_output=True, text=True, timeout=30)
    check_equal((result.returncode, result.stderr), (0, ""), f"prom_client.js {step}")
    return json.loads(result.stdout)


def prom_step(gateway, hermes, step, expected):
    """One step against both: prom-client reports `expected` from each."""
    check_equal(prom_client(gateway.port, step), expected, f"prom-client {step}, Pushgateway")
    check_equal(prom_client(hermes.http_port, step), expected, f"prom-client {step}, hermes")
    check_groups(gateway, hermes, f"prom-client {step}")


@with_both
def prom_client_pushes_push_adds_and_deletes_with_groupings(gateway, hermes):
    prom_step(gateway, hermes, "push", {"status": 200, "body": ""})
    check_group(hermes, PROM_GROUPING, EVERY_TYPE, EVERY_TYPE_TYPES)
    prom_step(gateway, hermes, "add", {"status": 200, "body": ""})
    check_group(hermes, PROM_GROUPING, {**EVERY_TYPE, **ADDED}, dict(EVERY_TYPE_TYPES, batch_retries="counter"))
    prom_step(gateway, hermes, "other", {"status": 200, "body": ""})
    check_group(hermes, OTHER_GROUPING, EVERY_TYPE, EVERY_TYPE_TYPES)
    prom_step(gateway, hermes, "delete", {"status": 202, "body": ""})
    check_equal(group(hermes, PROM_GROUPING), ({}, {}), "the deleted group is gone")
    check_group(hermes, OTHER_GROUPING, EVERY_TYPE, EVERY_TYPE_TYPES)
    check_equal(hermes.metric("hermes_push_groups"), 1, "the other group stays")


@with_both
def prom_client_sends_a_slash_in_a_value_as_a_path_separator(gateway, hermes):
    """prom-client escapes a value's '/' as %2F, which the path decodes to a separator:
    "var/lib" makes an odd path, refused by both; "/var/lib" an empty segment, which
    Pushgateway redirects (301, which prom-client reports as success, the push lost) and
    Hermes refuses (400), rather than read path="" and var="lib"."""
    prom_step(gateway, hermes, "slash", {"error": 'push failed with status 400, odd number of components in label string '
                                                  '"/path/var/lib"\n'})
    check_equal(prom_client(gateway.port, "rooted"), {"status": 301, "body": ""}, "Pushgateway redirects")
    check_equal(prom_client(hermes.http_port, "rooted"),
                {"error": 'push failed with status 400, the path "/metrics/job/nightly/path//var/lib" has an empty, "." '
                          'or ".." segment once decoded: send such a value as NAME@base64/BASE64URL\n'},
                "hermes refuses")
    check_groups(gateway, hermes, "nothing pushed")
    check_equal(hermes.metric("hermes_push_groups"), 0, "no group")


if __name__ == "__main__":
    if not os.access(PUSHGATEWAY, os.X_OK):
        print(f"push_clients: {PUSHGATEWAY} is missing (make test-deps installs prometheus-pushgateway)", file=sys.stderr)
        print("push_clients: 0 passed, 1 failed")
        sys.exit(1)
    sys.exit(run_suite("push_clients", TESTS))
