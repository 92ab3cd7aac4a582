#!/usr/bin/env python3
"""The OpenMetrics body of the built hermes, read by the strictest parser Debian has:
prometheus_client.openmetrics.parser.text_string_to_metric_families of
python3-prometheus-client (installed for Debian's /usr/bin/python3 by make test-deps).
One body holds every kind of family Hermes serves: counters with and without _total,
gauges, classic histograms with and without negative observations and bounds, native
histograms, summaries with and without objectives, and Hermes' own and the process'
figures. OpenMetrics 1.0 holds a histogram's sum to be a counter: never negative, none
beside a negative bucket bound, and _count only beside _sum.

usage: openmetrics.py PATH_TO_HERMES
Ends with the line "openmetrics: N passed, N failed".
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blackbox import Hermes, check_equal  # noqa: E402  (blackbox reads sys.argv the same way)
from state import run_suite  # noqa: E402  (runs each test on its own, with its own hermes)

DEBIAN_PYTHON = "/usr/bin/python3"  # python3-prometheus-client installs where Debian's python3 looks
TESTS = []

# Reads an OpenMetrics body on stdin; prints its families, or the parser's error, as JSON.
PARSER = """
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
try:
    families = [{"name": family.name, "type": family.type,
                 "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples]}
                for family in text_string_to_metric_families(sys.stdin.read())]
    print(json.dumps({"families": families}))
except Exception as error:
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
"""

EVERY_KIND = {
    "service_name": "openmetrics-service",
    "counters": [{"metric_name": "jobs_total", "metric_description": "jobs \"done\"\nper queue", "labels": ["queue"]},
                 {"metric_name": "plain_counter"}],
    "gauges": [{"metric_name": "temperature", "labels": ["room"]}],
    "histograms": [
        {"metric_name": "latency_seconds", "labels": ["route"], "buckets": [0.1, 1, 10]},
        {"metric_name": "offset_seconds", "labels": ["host"], "buckets": [-1, 0, 1]},
        {"metric_name": "drift_seconds", "labels": ["host"], "buckets": [0.5, 1]},
        {"metric_name": "native_seconds", "labels": ["route"], "native": True},
        {"metric_name": "empty_seconds"}],
    "summaries": [{"metric_name": "rpc_seconds", "labels": ["route"], "objectives": {"0.5": 0.05, "0.99": 0.001}},
                  {"metric_name": "plain_summary"}],
}


def sample(metric, labels=None, **payload):
    body = dict(payload)
    if labels is not None:
        body["labels"] = labels
    return json.dumps({"metric_name": metric, "payload": body})


def observations(metric, labels, values):
    return [sample(metric, labels, observation=value) for value in values]


def every_kind_datagrams():
    sent = [sample("jobs_total", {"queue": "mail"}, value=3), sample("jobs_total", {"queue": ""}),
            sample("plain_counter", value=2.5), sample("temperature", {"room": "cellar"}, value=-4.5)]
    sent += observations("latency_seconds", {"route": "/"}, [0.05, 0.5, 5, 50])
    sent += observations("offset_seconds", {"host": "a"}, [-2, -0.5, 0.25, 3])  # negative bounds
    sent += observations("drift_seconds", {"host": "up"}, [-0.25, 0.75])  # bounds from 0 up, sum 0.5
    sent += observations("drift_seconds", {"host": "down"}, [-0.25, 0.1])  # a sum below zero
    sent += observations("native_seconds", {"route": "/"}, [0.001, 2, 300])
    sent += observations("native_seconds", {"route": "/minus"}, [-3, 1])
    sent += observations("rpc_seconds", {"route": "/"}, [0.2, 0.4, 0.6])
    sent.append(sample("plain_summary", observation=7))
    return sent


def scrape_openmetrics(hermes):
    response = hermes.request("GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK\r\n"), head
    assert "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n" in head, head
    return body


def strict_parse(body):
    """The families the strict parser reads, or AssertionError with its message."""
    result = subprocess.run([DEBIAN_PYTHON, "-c", PARSER], input=body, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result
    answer = json.loads(result.stdout)
    if "error" in answer:
        raise AssertionError(f"the strict parser rejects the body: {answer['error']}")
    return {family["name"]: family for family in answer["families"]}


def samples_of(family, **labels):
    """{sample name + [le or quantile as written]: value} of the samples that carry `labels`."""
    found = {}
    for name, sample_labels, value in family["samples"]:
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items()):
            extra = sample_labels.get("le", sample_labels.get("quantile"))
            found[name if extra is None else f"{name}[{extra}]"] = value
    return found


def without_created(found):
    return {name: value for name, value in found.items() if not name.endswith("_created")}


def test(function):
    TESTS.append(function)
    return function


# ---- tests ------------------------------------------------------------------------------------

def rejection(body):
    """The strict parser's message for a body it must refuse."""
    try:
        strict_parse(body)
    except AssertionError as error:
        return str(error)
    raise AssertionError(f"the strict parser read {body!r}")


@test
def the_strict_parser_rejects_a_histogram_with_count_and_no_sum_or_a_negative_sum():
    """The parser is as strict as the spec here: what Hermes wrote before is refused."""
    check_equal(rejection('# TYPE h histogram\nh_bucket{le="-1"} 1\nh_bucket{le="+Inf"} 2\nh_count 2\n# EOF\n'),
                "the strict parser rejects the body: ValueError: _sum/_gsum must be present if _count is present: h")
    check_equal(rejection('# TYPE h histogram\nh_bucket{le="0.5"} 1\nh_bucket{le="+Inf"} 2\nh_sum -1\nh_count 2\n# EOF\n'),
                "the strict parser rejects the body: ValueError: Counter-like samples cannot be negative: h_sum -1")


@test
def a_body_of_every_kind_of_family_is_read_by_the_strict_parser():
    hermes = Hermes(EVERY_KIND)
    try:
        hermes.push_paced(every_kind_datagrams())
        families = strict_parse(scrape_openmetrics(hermes))
        types = {name: family["type"] for name, family in families.items()}
        for name, kind in {"jobs": "counter", "plain_counter": "unknown", "temperature": "gauge",
                           "latency_seconds": "histogram", "offset_seconds": "histogram", "drift_seconds": "histogram",
                           "native_seconds": "histogram", "empty_seconds": "histogram", "rpc_seconds": "summary",
                           "plain_summary": "summary", "hermes_build_info": "gauge", "hermes_metric_series": "gauge",
                           "hermes_metric_max_series": "gauge", "hermes_samples_rejected": "counter",
                           "hermes_http_requests": "counter", "process_cpu_seconds": "counter"}.items():
            check_equal(types.get(name), kind, name)
        check_equal(without_created(samples_of(families["jobs"], queue="mail")), {"jobs_total": 3}, "jobs")
        check_equal(samples_of(families["hermes_metric_series"], metric="drift_seconds"),
                    {"hermes_metric_series": 2}, "series of drift_seconds")
    finally:
        hermes.close()


@test
def histograms_have_sum_and_count_exactly_where_the_sum_is_a_counter():
    hermes = Hermes(EVERY_KIND)
    try:
        hermes.push_paced(every_kind_datagrams())
        families = strict_parse(scrape_openmetrics(hermes))
        # Bounds from 0 up and observations that are not negative: as client_golang writes it.
        check_equal(without_created(samples_of(families["latency_seconds"], route="/")),
                    {"latency_seconds_bucket[0.1]": 1, "latency_seconds_bucket[1]": 2,
                     "latency_seconds_bucket[10]": 3, "latency_seconds_bucket[+Inf]": 4,
                     "latency_seconds_sum": 55.55, "latency_seconds_count": 4}, "latency_seconds")
        # A negative bound: neither, ever; the +Inf bucket counts every observation.
        check_equal(without_created(samples_of(families["offset_seconds"], host="a")),
                    {"offset_seconds_bucket[-1]": 1, "offset_seconds_bucket[0]": 2,
                     "offset_seconds_bucket[1]": 3, "offset_seconds_bucket[+Inf]": 4}, "offset_seconds")
        # Bounds from 0 up, negative observations: both while the sum is not below zero.
        check_equal(without_created(samples_of(families["drift_seconds"], host="up")),
                    {"drift_seconds_bucket[0.5]": 1, "drift_seconds_bucket[1]": 2, "drift_seconds_bucket[+Inf]": 2,
                     "drift_seconds_sum": 0.5, "drift_seconds_count": 2}, "drift_seconds up")
        check_equal(without_created(samples_of(families["drift_seconds"], host="down")),
                    {"drift_seconds_bucket[0.5]": 2, "drift_seconds_bucket[1]": 2, "drift_seconds_bucket[+Inf]": 2},
                    "drift_seconds down")
        # Native histograms show their +Inf bucket, and the sum and count by the same rule.
        check_equal(without_created(samples_of(families["native_seconds"], route="/")),
                    {"native_seconds_bucket[+Inf]": 3, "native_seconds_sum": 302.001, "native_seconds_count": 3}, "native")
        check_equal(without_created(samples_of(families["native_seconds"], route="/minus")),
                    {"native_seconds_bucket[+Inf]": 2}, "native /minus")
        check_equal(samples_of(families["empty_seconds"])["empty_seconds_count"], 0, "empty_seconds")
        # Every series that was pushed into being has its _created, with or without a sum.
        for name, labels in (("offset_seconds", {"host": "a"}), ("drift_seconds", {"host": "down"}),
                             ("native_seconds", {"route": "/minus"}), ("latency_seconds", {"route": "/"})):
            assert f"{name}_created" in samples_of(families[name], **labels), (name, labels)
        # Summaries keep both.
        check_equal(without_created(samples_of(families["rpc_seconds"], route="/")),
                    {"rpc_seconds[0.5]": 0.4, "rpc_seconds[0.99]": 0.6, "rpc_seconds_sum": 1.2000000000000002,
                     "rpc_seconds_count": 3}, "rpc_seconds")
        # Text keeps _sum and _count for every histogram, as client_golang writes it.
        text = hermes.scrape()
        for line in ('offset_seconds_sum{host="a"} 0.75\n', 'offset_seconds_count{host="a"} 4\n',
                     'drift_seconds_sum{host="down"} -0.15\n', 'native_seconds_sum{route="/minus"} -2\n'):
            assert line in text, line
    finally:
        hermes.close()


if __name__ == "__main__":
    if not os.access(DEBIAN_PYTHON, os.X_OK) or subprocess.run(
            [DEBIAN_PYTHON, "-c", "import prometheus_client.openmetrics.parser"], capture_output=True).returncode != 0:
        print("openmetrics: Debian's python3-prometheus-client is missing (make test-deps installs it)", file=sys.stderr)
        print("openmetrics: 0 passed, 1 failed")
        sys.exit(1)
    sys.exit(run_suite("openmetrics", TESTS))
