#!/usr/bin/env python3
"""statsd_exporter's mapping file and undeclared metrics, against the built hermes: the
examples of statsd_exporter's mapping documentation (each rule, line and the series it
makes) checked exactly, the README's migration example file, --check-config, reloads,
restarts, and a mapping file of 10,000 rules.

usage: mapping.py PATH_TO_HERMES
Ends with the line "mapping: N passed, N failed".
"""
import os
import signal
import subprocess
import sys
import tempfile
import time

from blackbox import HERMES, ROOT, Hermes, check_equal, clean_env
from state import run_suite

TESTS = []


def test(function):
    TESTS.append(function)
    return function


def write(text, suffix=".yml"):
    handle, path = tempfile.mkstemp(prefix="hermes-mapping-", suffix=suffix)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    return path


def mapped_hermes(yaml, **config):
    path = write(yaml)
    settings = {"service_name": "mapping", "statsd_mapping_file": path, "statsd_undeclared": "accept"}
    settings.update(config)
    return Hermes(config=settings), path


def series(hermes):
    """The sample lines of a scrape, without Hermes' own and the process' metrics."""
    return [line for line in hermes.scrape().splitlines()
            if line and not line.startswith(("#", "hermes_", "process_"))]


def statsd_lines_applied(hermes, lines):
    hermes.push("\n".join(lines))


# ---- statsd_exporter's documentation, as data ----------------------------------------------
# Each: the rules of an example in statsd_exporter's README (v0.23), lines sent, and the
# series statsd_exporter documents for them, as Prometheus' text format shows them.

DISPATCH = """mappings:
- match: "test.dispatcher.*.*.*"
  name: "dispatcher_events_total"
  labels:
    processor: "$1"
    action: "$2"
    outcome: "$3"
    job: "test_dispatcher"
- match: "*.signup.*.*"
  name: "signup_events_total"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"""

TIMER_SUMMARY = """mappings:
- match: "test.timing.*.*.*"
  observer_type: summary
  name: "my_timer"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
  summary_options:
    quantiles:
      - quantile: 0.99
        error: 0.001
      - quantile: 0.95
        error: 0.01
      - quantile: 0.9
        error: 0.05
      - quantile: 0.5
        error: 0.005
    max_age: 30s
    age_buckets: 3
    buf_cap: 1000
"""

TIMER_HISTOGRAM = """mappings:
- match: "test.timing.*.*.*"
  observer_type: histogram
  histogram_options:
    buckets: [ 0.01, 0.025, 0.05, 0.1 ]
    native_histogram_bucket_factor: 1.1
    native_histogram_max_buckets: 256
  name: "my_timer"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
"""

DEFAULTS = """defaults:
  observer_type: histogram
  histogram_options:
    buckets: [.005, .01, .025, .05, .1, .25, .5, 1, 2.5 ]
    native_histogram_bucket_factor: 1.1
    native_histogram_max_buckets: 256
  summary_options:
    quantiles:
      - quantile: 0.99
        error: 0.001
      - quantile: 0.95
        error: 0.01
      - quantile: 0.9
        error: 0.05
      - quantile: 0.5
        error: 0.005
    max_age: 5m
    age_buckets: 2
    buf_cap: 1000
  match_type: glob
  glob_disable_ordering: false
  ttl: 0 # metrics do not expire
mappings:
# This will be a histogram using the buckets set in `defaults`.
- match: "test.timing.*.*.*"
  name: "my_timer"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
# This will be a summary using the summary_options set in `defaults`
- match: "other.distribution.*.*.*"
  observer_type: summary
  name: "other_distribution"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server_other"
"""

DROP = """mappings:
# This metric would match as normal.
- match: "test.timing.*.*.*"
  name: "my_timer"
  labels:
    provider: "$2"
    outcome: "$3"
    job: "${1}_server"
# Any metric not matched will be dropped because "." matches all metrics.
- match: "."
  match_type: regex
  action: drop
  name: "dropped"
"""

SUMMARY_0_1 = ['{quantile="0.5"} 0.1', '{quantile="0.9"} 0.1', '{quantile="0.95"} 0.1', '{quantile="0.99"} 0.1']
MY_TIMER = 'job="a_server",outcome="c",provider="b"'

DOCUMENTED = [
    ("glob: captures in label values", DISPATCH, ["test.dispatcher.FooProcessor.send.success:1|c"],
     ['dispatcher_events_total{action="send",job="test_dispatcher",outcome="success",processor="FooProcessor"} 1']),
    ("glob: ${1} before more text", DISPATCH, ["foo_product.signup.facebook.failure:1|c"],
     ['signup_events_total{job="foo_product_server",outcome="failure",provider="facebook"} 1']),
    ("glob: no rule matches, the name is escaped", DISPATCH, ["test.web-server.foo.bar:1|g"],
     ["test_web_server_foo_bar 1"]),
    ("glob: a capture in the name", 'mappings:\n- match: "test.*.*.counter"\n  name: "${2}_total"\n  labels:\n    provider: "$1"\n',
     ["test.a.b.counter:1|c"], ['b_total{provider="a"} 1']),
    ("regex: the same rule as a regular expression",
     'mappings:\n- match: "test\\\\.(\\\\w+)\\\\.(\\\\w+)\\\\.counter"\n  match_type: regex\n  name: "${2}_total"\n'
     '  labels:\n    provider: "$1"\n', ["test.a.b.counter:1|c"], ['b_total{provider="a"} 1']),
    ("regex: four groups into labels",
     'mappings:\n- match: "(.*)\\\\.(.*)--(.*)\\\\.status\\\\.(.*)\\\\.count"\n  match_type: regex\n  name: "request_total"\n'
     '  labels:\n    hostname: "$1"\n    exec: "$2"\n    protocol: "$3"\n    code: "$4"\n',
     ["web1.api--https.status.500.count:1|c"], ['request_total{code="500",exec="api",hostname="web1",protocol="https"} 1']),
    ("regex: group 0 is the whole name",
     'mappings:\n- match: ".+"\n  match_type: regex\n  name: "$0"\n  labels:\n    statsd_metric_name: "$0"\n',
     ["my.statsd_counter:1|c"], ['my_statsd_counter_total{statsd_metric_name="my.statsd_counter"} 1']),
    ("glob ordering: the first rule that matches wins",
     "mappings:\n- match: a.b.c\n  name: r1\n- match: a.b.*\n  name: r2\n- match: a.*.d\n  name: r3\n- match: a.*.*\n  name: r4\n",
     ["a.b.c:1|g", "a.b.d:2|g", "a.x.d:3|g", "a.x.y:4|g"], ["r1 1", "r2 2", "r3 3", "r4 4"]),
    ("timers: a summary with the rule's quantiles, in seconds", TIMER_SUMMARY, ["test.timing.a.b.c:100|ms"],
     [f"my_timer{{{MY_TIMER},{q[1:]}" for q in SUMMARY_0_1] + [f"my_timer_sum{{{MY_TIMER}}} 0.1", f"my_timer_count{{{MY_TIMER}}} 1"]),
    ("timers: a histogram with the rule's buckets", TIMER_HISTOGRAM, ["test.timing.a.b.c:50|ms"],
     [f'my_timer_bucket{{{MY_TIMER},le="{le}"}} {n}' for le, n in [("0.01", 0), ("0.025", 0), ("0.05", 1), ("0.1", 1), ("+Inf", 1)]]
     + [f"my_timer_sum{{{MY_TIMER}}} 0.05", f"my_timer_count{{{MY_TIMER}}} 1"]),
    ("defaults: a histogram with the defaults' buckets", DEFAULTS, ["test.timing.a.b.c:2|h"],
     [f'my_timer_bucket{{{MY_TIMER},le="{le}"}} {n}'
      for le, n in [("0.005", 0), ("0.01", 0), ("0.025", 0), ("0.05", 0), ("0.1", 0), ("0.25", 0), ("0.5", 0), ("1", 0),
                    ("2.5", 1), ("+Inf", 1)]] + [f"my_timer_sum{{{MY_TIMER}}} 2", f"my_timer_count{{{MY_TIMER}}} 1"]),
    ("defaults: a summary with the defaults' quantiles", DEFAULTS, ["other.distribution.a.b.c:0.1|d"],
     [f'other_distribution{{job="a_server_other",outcome="c",provider="b",{q[1:]}' for q in SUMMARY_0_1]
     + ['other_distribution_sum{job="a_server_other",outcome="c",provider="b"} 0.1',
        'other_distribution_count{job="a_server_other",outcome="c",provider="b"} 1']),
    ("drop: every line no earlier rule took", DROP, ["anything.else:1|c", "test.timing.a.b.c:100|ms"],
     [f'my_timer{{{MY_TIMER},quantile="{q}"}} 0.1' for q in ("0.5", "0.9", "0.99")]
     + [f"my_timer_sum{{{MY_TIMER}}} 0.1", f"my_timer_count{{{MY_TIMER}}} 1"]),
    ("match_metric_type: only the named type is mapped",
     'mappings:\n- match: "test.foo.*"\n  name: "test_foo"\n  match_metric_type: counter\n  labels:\n    provider: "$1"\n',
     ["test.foo.bar:1|c", "test.foo.bar:5|g"], ["test_foo_bar 5", 'test_foo_total{provider="bar"} 1']),
]


def documented_example(title, yaml, lines, expected):
    def check():
        hermes, path = mapped_hermes(yaml)
        try:
            statsd_lines_applied(hermes, lines)
            check_equal(series(hermes), expected, f"the series of {title}")
        finally:
            hermes.close()
            os.unlink(path)
    check.__name__ = "statsd_exporter_documents: " + title
    return check


for example in DOCUMENTED:
    TESTS.append(documented_example(*example))


@test
def a_rule_s_help_is_the_metric_s_help():
    hermes, path = mapped_hermes('mappings:\n- match: "http.request.*"\n  help: "Total number of http requests"\n'
                                 '  name: "http_requests_total"\n  labels:\n    code: "$1"\n')
    try:
        statsd_lines_applied(hermes, ["http.request.200:1|c"])
        body = hermes.scrape()
        assert "# HELP http_requests_total Total number of http requests\n" in body, body
        check_equal(series(hermes), ['http_requests_total{code="200"} 1'], "the series")
    finally:
        hermes.close()
        os.unlink(path)


@test
def the_readme_shows_the_example_mapping_file_as_it_is():
    with open(os.path.join(ROOT, "README.md")) as file:
        readme = file.read()
    with open(os.path.join(ROOT, "example", "statsd_mapping.yml")) as file:
        example = file.read()
    start = readme.index("and `example/statsd_mapping.yml`\n\n```yaml\n") + len("and `example/statsd_mapping.yml`\n\n```yaml\n")
    check_equal(readme[start:readme.index("```", start)], example, "the README's copy of example/statsd_mapping.yml")


def check_config(mapping_text):
    config = write('{"service_name": "c", "statsd_mapping_file": "%s"}' % write(mapping_text), suffix=".json")
    result = subprocess.run([HERMES, "--check-config", config], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=20)
    return result, config


@test
def check_config_reads_the_mapping_file_and_names_the_line_of_a_problem():
    result, _ = check_config("mappings:\n- match: a.b\n  name: x\n  colour: red\n")
    check_equal(result.returncode, 0, "the exit code for a good file")
    lines = result.stdout.splitlines()
    assert lines[-2].endswith(".yml: ok, 1 rules"), lines
    assert lines[-1].endswith(".yml:4: mappings[].colour: unknown key, ignored"), lines
    result, _ = check_config("mappings:\n- match: a.b\n  name: x\n- match: a..b\n  name: y\n")
    check_equal(result.returncode, 2, "the exit code for a bad file")
    check_equal(result.stdout, "", "what it printed for a bad file")
    assert result.stderr.startswith("hermes: /") and result.stderr.endswith(".yml:4: invalid match: a..b\n"), result.stderr


@test
def a_bad_mapping_file_stops_start_up_and_fails_a_reload_keeping_the_one_in_force():
    broken = write("mappings:\n- match: [a\n")
    config = write('{"service_name": "c", "statsd_mapping_file": "%s"}' % broken, suffix=".json")
    result = subprocess.run([HERMES, config], env=clean_env(), stderr=subprocess.PIPE, text=True, timeout=20)
    check_equal(result.returncode, 2, "the exit code")
    assert result.stderr.startswith("hermes: ") and ".yml:3: " in result.stderr, result.stderr
    hermes, path = mapped_hermes("mappings:\n- match: a.*\n  name: first_$1\n")
    try:
        with open(path, "w") as file:
            file.write("mappings:\n- match: a.*\n  name: [\n")
        hermes.process.send_signal(signal.SIGHUP)
        hermes.wait_for('hermes_config_reloads_total{result="failure"}', 1)
        statsd_lines_applied(hermes, ["a.x:1|g"])
        with open(path, "w") as file:
            file.write("mappings:\n- match: a.*\n  name: second_$1\n")
        hermes.process.send_signal(signal.SIGHUP)
        hermes.wait_for('hermes_config_reloads_total{result="success"}', 1)
        statsd_lines_applied(hermes, ["a.y:2|g"])
        check_equal(series(hermes), ["first_x 1", "second_y 2"], "the series before and after the reload")
    finally:
        hermes.close()
        os.unlink(path)


@test
def undeclared_metrics_come_back_after_a_restart_through_the_state_file():
    state = tempfile.mkdtemp(prefix="hermes-state-")
    config = {"service_name": "u", "statsd_undeclared": "accept", "state_file": os.path.join(state, "state.json")}
    hermes = Hermes(config=config)
    statsd_lines_applied(hermes, ["jobs:3|c|#queue:mail", "depth:7|g"])
    check_equal(hermes.stop()[0], 0, "the exit code")
    hermes = Hermes(config=config)
    try:
        statsd_lines_applied(hermes, ["jobs:1|c|#queue:mail"])
        check_equal(series(hermes), ["depth 7", 'jobs_total{queue="mail"} 4'], "the series after the restart")
    finally:
        hermes.close()


@test
def a_mapping_file_of_10000_rules_loads_within_seconds():
    rules = "".join(f'- match: "svc{i}.*.*"\n  name: "svc{i}_${{2}}"\n  labels:\n    host: "$1"\n' for i in range(10000))
    started = time.monotonic()
    hermes, path = mapped_hermes("mappings:\n" + rules)
    seconds = time.monotonic() - started
    try:
        assert seconds < 3, f"{seconds:.2f} s to start with 10,000 rules"
        statsd_lines_applied(hermes, ["svc9999.h1.hits:1|c", "svc0.h2.hits:1|c"])
        check_equal(series(hermes), ['svc0_hits_total{host="h2"} 1', 'svc9999_hits_total{host="h1"} 1'], "the series")
    finally:
        hermes.close()
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(run_suite("mapping", TESTS))
