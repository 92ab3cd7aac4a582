#!/usr/bin/env python3
"""How Hermes ships: the static binary alone in an empty root, as FROM scratch runs it;
the embedding example; and the header under both compilers' strictest warnings, in two
translation units of one program.

usage: shipping.py PATH_TO_HERMES   (the static binary is build/static/hermes)
Ends with the line "shipping: N passed, N failed".
"""
import os
import re
import shutil
import subprocess
import tempfile

from blackbox import HERMES, Hermes, SAMPLE_CONFIG, ROOT, check_equal, clean_env, run_suite, write_config

TESTS = []
STRICT = ["-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror"]


def test(function):
    TESTS.append(function)
    return function


def compile_and_run(compiler, sources, folder, extra=(), env=None):
    binary = os.path.join(folder, "program")
    result = subprocess.run([compiler, *STRICT, *extra, "-I" + ROOT, "-o", binary, *sources, "-pthread"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{compiler} failed:\n{result.stderr}"
    return subprocess.run([binary], capture_output=True, text=True, timeout=30, env=env)


def german_locale(folder):
    """Environment for a program under de_DE.UTF-8, compiled into `folder` with localedef
    from the definitions of Debian's locales package (the Makefile installs it)."""
    path = os.path.join(folder, "locales")
    os.makedirs(path)
    result = subprocess.run(["localedef", "-i", "de_DE", "-f", "UTF-8", os.path.join(path, "de_DE.UTF-8")],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"localedef de_DE.UTF-8 failed: {result.stderr}"
    return dict(os.environ, LOCPATH=path, LC_ALL="de_DE.UTF-8")


@test
def the_static_binary_runs_alone_in_an_empty_root(_):
    static = os.path.join(ROOT, "build", "static", "hermes")
    assert os.access(static, os.X_OK), f"{static} is missing: make static"
    with tempfile.TemporaryDirectory(prefix="hermes-scratch-") as root:
        shutil.copy(static, os.path.join(root, "hermes"))
        shutil.copy(os.path.join(ROOT, "config.json"), os.path.join(root, "config.json"))
        check_equal(sorted(os.listdir(root)), ["config.json", "hermes"], "the root holds nothing else")
        hermes = Hermes(command=["chroot", root, "/hermes", "/config.json"])
        try:
            hermes.push('{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "scratch"}}}',
                        '{"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"}, "value": 2.5}}')
            samples = hermes.metrics()
            check_equal(samples['sample_counter{label_1="scratch"}'], 1, "counter")
            check_equal(samples['sample_gauge{label_1="a",label_2="b"}'], 2.5, "gauge")
            check_equal(samples['hermes_build_info{version="1.0.0",service="testing-service"}'], 1, "build info")
            code, _ = hermes.stop()
            check_equal(code, 0, "exit code after SIGTERM")
        finally:
            hermes.close()


@test
def the_embedding_example_builds_and_runs(_):
    with tempfile.TemporaryDirectory(prefix="hermes-embed-") as folder:
        result = compile_and_run("g++", [os.path.join(ROOT, "example", "embed.cpp")], folder)
    check_equal(result.returncode, 0, f"embed's exit code; it said {result.stdout!r} {result.stderr!r}")
    assert "jobs_total 3, queue_length 11, job_seconds 0.25 (decimal point '.')" in result.stdout, result.stdout


@test
def the_embedding_example_reads_and_writes_numbers_alike_under_a_german_locale(_):
    with tempfile.TemporaryDirectory(prefix="hermes-locale-") as folder:
        result = compile_and_run("g++", [os.path.join(ROOT, "example", "embed.cpp")], folder, env=german_locale(folder))
    check_equal(result.returncode, 0, f"embed's exit code; it said {result.stdout!r} {result.stderr!r}")
    # The comma shows that the locale was in force while Hermes parsed "0.5" and wrote 0.25.
    assert "jobs_total 3, queue_length 11, job_seconds 0.25 (decimal point ',')" in result.stdout, result.stdout


@test
def the_header_is_clean_and_inline_in_two_units_under_gcc_and_clang(_):
    with tempfile.TemporaryDirectory(prefix="hermes-units-") as folder:
        first, second = os.path.join(folder, "first.cpp"), os.path.join(folder, "second.cpp")
        with open(first, "w") as file:
            file.write('#include "hermes.hpp"\nstd::string render_second();\n'
                       'int main() { return render_second() == hermes::render_metrics(hermes::Registry('
                       'hermes::parse_config(R"({"service_name": "x"})", "x"))) ? 0 : 1; }\n')
        with open(second, "w") as file:
            file.write('#include "hermes.hpp"\nstd::string render_second() { return hermes::render_metrics(hermes::Registry('
                       'hermes::parse_config(R"({"service_name": "x"})", "x"))); }\n')
        for compiler in ("g++", "clang++"):
            check_equal(compile_and_run(compiler, [first, second], folder).returncode, 0, f"{compiler} program")


@test
def cxxflags_cppflags_and_ldflags_reach_every_build(_):
    flags = ["CXXFLAGS=-O2 -DHERMES_MAX_CONNECTIONS=256", "CPPFLAGS=-DHERMES_PROBE_CPP", "LDFLAGS=-Wl,--as-needed"]
    for target in ("hermes", "build/static/hermes", "build/tiny/hermes", "build/unit_tests", "cross"):
        result = subprocess.run(["make", "-n", "-B", "-C", ROOT, target, *flags], capture_output=True, text=True)
        check_equal(result.returncode, 0, f"make -n {target}: {result.stderr}")
        lines = [line for line in result.stdout.splitlines() if "g++" in line and " -o " in line]
        assert lines, f"make -n {target} shows no compiler line:\n{result.stdout}"
        for line in lines:
            if ".cpp" in line:  # compiles
                for flag in ("-DHERMES_MAX_CONNECTIONS=256", "-DHERMES_PROBE_CPP"):
                    assert flag in line, f"{flag} missing from: {line}"
            if " -c " not in line:  # links
                assert "-Wl,--as-needed" in line, f"LDFLAGS missing from: {line}"
            if "-static" in line and "-Os" in line:  # the binary that ships stays optimised for size
                assert line.index("-O2") < line.index("-Os"), f"-Os must come after CXXFLAGS' -O2: {line}"


# ---- the tiny build: every HERMES_NO_* part left out ---------------------------------------

TINY = os.path.join(ROOT, "build", "tiny", "hermes")
TINY_CONFIG = {"service_name": "tiny",
               "counters": [{"metric_name": "jobs_total", "metric_description": "Jobs done.", "labels": ["queue"]}]}
TINY_FAMILIES = [
    "hermes_build_info", "hermes_config_last_reload_success_timestamp_seconds", "hermes_config_reloads_total",
    "hermes_http_metrics_bytes_total", "hermes_http_requests_total",
    "hermes_memory_budget_bytes", "hermes_memory_committed_bytes", "hermes_memory_used_bytes", "hermes_metric_max_series",
    "hermes_metric_series", "hermes_samples_accepted_total", "hermes_samples_received_total",
    "hermes_samples_rejected_total", "hermes_series", "hermes_series_expired_total", "hermes_udp_packets_total",
    "hermes_udp_receive_buffer_bytes", "hermes_udp_receive_drops_total", "hermes_unix_datagrams_total", "jobs_total",
    "process_cpu_seconds_total", "process_max_fds", "process_open_fds", "process_resident_memory_bytes",
    "process_start_time_seconds", "process_virtual_memory_bytes"]
# The series of Hermes' families that a part left out would add to: no gzip encoding, no
# StatsD format or reasons, no status only the Pushgateway API sends.
TINY_SERIES = {
    "hermes_http_metrics_bytes_total": ['{encoding="identity"}'],
    "hermes_http_requests_total": [f'{{code="{code}"}}' for code in (200, 400, 401, 403, 404, 405, 431, 503, 505)],
    "hermes_samples_received_total": ['{format="json"}'],
    "hermes_samples_rejected_total": [f'{{reason="{reason}"}}' for reason in (
        "malformed_json", "malformed_sample", "unknown_metric", "label_mismatch", "invalid_label_value", "invalid_value",
        "invalid_operation", "series_limit", "too_large", "memory_limit", "forbidden_source")]}
# Each macro, the name its errors give the part, and a config key and a variable of it.
PARTS = [("HERMES_NO_STATSD", "StatsD", ("statsd_undeclared", "accept"), ("HERMES_STATSD_TCP_PORT", "9125")),
         ("HERMES_NO_PROTOBUF", "protobuf format", None, ("HERMES_PROTOBUF", "on")),
         ("HERMES_NO_STATE", "state file", ("state_file", "/tmp/state.json"), ("HERMES_STATE_FILE", "/tmp/state.json")),
         ("HERMES_NO_PUSH", "Pushgateway API", ("max_push_groups", 10), ("HERMES_PUSH", "on")),
         ("HERMES_NO_REMOTE_WRITE", "remote write", ("remote_write", [{"url": "http://127.0.0.1:9/api/v1/write"}]),
          ("HERMES_REMOTE_WRITE_URL", "http://127.0.0.1:9/api/v1/write"))]


def makefile_number(name):
    with open(os.path.join(ROOT, "Makefile")) as file:
        for line in file:
            if line.startswith(name + " := "):
                return int(line.split(":=")[1])
    raise AssertionError(f"no {name} in the Makefile")


@test
def the_tiny_build_is_static_and_within_its_limit(_):
    assert os.access(TINY, os.X_OK), f"{TINY} is missing: make tiny"
    size, limit = os.path.getsize(TINY), makefile_number("TINY_LIMIT")
    assert size <= limit, f"{TINY} is {size} bytes, over TINY_LIMIT {limit}"
    result = subprocess.run(["file", TINY], capture_output=True, text=True)
    assert "statically linked" in result.stdout, result.stdout


@test
def the_tiny_build_takes_json_over_udp_and_serves_text_metrics(_):
    path = write_config(TINY_CONFIG)
    hermes = Hermes(command=[TINY, path])
    try:
        hermes.push('{"metric_name": "jobs_total", "payload": {"labels": {"queue": "mail"}, "value": 2}}', "jobs:1|c")
        protobuf = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
        for accept in ("", f"Accept: {protobuf}\r\n"):  # no protobuf to offer: text
            head, _, body = hermes.request(f"GET /metrics HTTP/1.0\r\n{accept}\r\n").partition("\r\n\r\n")
            check_equal(head, "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close", "head")
            family = body[body.index("# HELP jobs_total"):]
            check_equal(family[:family.index("# HELP process_")],
                        '# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total{queue="mail"} 2\n', "the family")
            assert 'hermes_samples_rejected_total{reason="malformed_json"} 1\n' in body, "a StatsD line is not JSON"
            families = [line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")]
            check_equal(families, TINY_FAMILIES, "no family of a part left out")
            for family, series in TINY_SERIES.items():
                shown = [line.split()[0][len(family):] for line in body.splitlines() if line.startswith(family + "{")]
                check_equal(shown, series, f"the series of {family}")
        # Prometheus with native histograms on asks for protobuf first: it gets the next it
        # prefers, OpenMetrics, as from a Pushgateway or client_golang that has no protobuf.
        prometheus = (f"{protobuf},application/openmetrics-text;version=1.0.0;q=0.8,"
                      "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        head, _, body = hermes.request(f"GET /metrics HTTP/1.0\r\nAccept: {prometheus}\r\n\r\n").partition("\r\n\r\n")
        check_equal(head, "HTTP/1.0 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close", "the head of Prometheus' protobuf-first scrape")
        assert body.startswith("# HELP hermes_build_info ") and body.endswith("# EOF\n"), body[:200]
        head = hermes.request("PUT /metrics/job/x HTTP/1.0\r\nContent-Length: 4\r\n\r\nx 1\n").split("\r\n")[0]
        check_equal(head, "HTTP/1.0 405 Method Not Allowed", "a push")
        check_equal(hermes.stop()[0], 0, "exit code after SIGTERM")
    finally:
        hermes.close()
        os.unlink(path)


@test
def the_tiny_build_refuses_the_settings_of_the_parts_it_left_out(_):
    for macro, part, key, variable in PARTS:
        if key:
            path = write_config(dict(TINY_CONFIG, **{key[0]: key[1]}))
            try:
                result = subprocess.run([TINY, "--check-config", path], capture_output=True, text=True, env=clean_env())
            finally:
                os.unlink(path)
            check_equal((result.returncode, result.stderr),
                        (2, f"hermes: {path}: {key[0]}: this build has no {part} ({macro})\n"), key[0])
        path = write_config(TINY_CONFIG)
        try:
            result = subprocess.run([TINY, "--check-config", path], capture_output=True, text=True,
                                    env=clean_env(**{variable[0]: variable[1]}))
        finally:
            os.unlink(path)
        check_equal((result.returncode, result.stderr),
                    (2, f"hermes: {variable[0]}: this build has no {part} ({macro})\n"), variable[0])


@test
def the_tiny_build_takes_numeric_addresses_only(_):
    path = write_config(TINY_CONFIG)
    try:
        result = subprocess.run([TINY, path], capture_output=True, text=True, timeout=10,
                                env=clean_env(HERMES_UDP_ADDRESS="localhost", HERMES_UDP_PORT="0", HERMES_HTTP_PORT="0"))
    finally:
        os.unlink(path)
    check_equal((result.returncode, result.stderr),
                (1, 'hermes: cannot resolve address "localhost": this build takes numeric addresses only '
                    "(HERMES_NO_RESOLVER)\n"), "a name")


# The variables hermes --help names in every build, and those of each part a build may leave out.
CORE_VARIABLES = ["CONFIG_FILE_PATH", "HERMES_CONFIG_PATH", "HERMES_HTTP_ADDRESS", "HERMES_HTTP_ALLOW", "HERMES_HTTP_IDLE_TIMEOUT_SECONDS", "HERMES_HTTP_PORT",
                  "HERMES_HTTP_TOKEN_FILE", "HERMES_LOG_LEVEL", "HERMES_MAX_MEMORY", "HERMES_OPENMETRICS", "HERMES_UDP_ADDRESS",
                  "HERMES_UDP_ALLOW", "HERMES_UDP_PORT", "HERMES_UDP_RECEIVE_BUFFER", "HERMES_UNIX_SOCKET",
                  "HERMES_UNIX_SOCKET_MODE", "LISTEN_ADDRESS", "LISTEN_PORT", "LOG_LEVEL"]
PART_VARIABLES = {
    "HERMES_NO_STATSD": ["HERMES_STATSD", "HERMES_STATSD_TCP_PORT", "HERMES_MAX_STATSD_CONNECTIONS",
                         "HERMES_STATSD_TCP_IDLE_SECONDS", "HERMES_STATSD_MAPPING"],  # the mapping with HERMES_YAML
    "HERMES_NO_PROTOBUF": ["HERMES_PROTOBUF"],
    "HERMES_NO_STATE": ["HERMES_STATE_FILE", "HERMES_STATE_INTERVAL"],
    "HERMES_NO_PUSH": ["HERMES_PUSH", "HERMES_MAX_PUSH_BYTES", "HERMES_MAX_PUSH_GROUPS", "HERMES_PUSH_TTL",
                       "HERMES_PUSH_TOKEN_FILE", "HERMES_PUSH_ADMIN"],
    "HERMES_NO_REMOTE_WRITE": ["HERMES_REMOTE_WRITE_URL", "HERMES_REMOTE_WRITE_INTERVAL",
                               "HERMES_REMOTE_WRITE_BEARER_TOKEN_FILE"],
    "HERMES_GZIP": ["HERMES_COMPRESSION"],
    "HERMES_TLS": ["HERMES_TLS_CERT_FILE", "HERMES_TLS_KEY_FILE", "HERMES_TLS_CLIENT_CA_FILE"]}


def help_variables(binary):
    result = subprocess.run([binary, "--help"], capture_output=True, text=True, env=clean_env())
    check_equal((result.returncode, result.stderr), (0, ""), f"{binary} --help")
    names = set(re.findall(r"\b[A-Z]+(?:_[A-Z]+)+\b", result.stdout)) - {"CONFIG_PATH"}  # the argument
    return sorted(names)


@test
def the_help_names_the_variables_of_the_parts_a_build_has_and_no_others(_):
    every = CORE_VARIABLES + [name for names in PART_VARIABLES.values() for name in names]
    check_equal(help_variables(HERMES), sorted(every), "hermes, with every part")
    check_equal(help_variables(TINY), sorted(CORE_VARIABLES), "the tiny build")


def syntax_check(*macros):
    features = ["-DHERMES_GZIP", "-DHERMES_TLS", "-DHERMES_YAML"]
    return subprocess.run(["g++", *STRICT, *features, *("-D" + macro for macro in macros), "-fsyntax-only",
                           "-I" + ROOT, os.path.join(ROOT, "main.cpp")], capture_output=True, text=True)


@test
def each_part_left_out_alone_compiles_cleanly(_):
    for macro, _, _, _ in PARTS:
        result = syntax_check(macro)
        check_equal((result.returncode, result.stderr), (0, ""), macro)
    result = syntax_check("HERMES_NO_RESOLVER", "HERMES_NO_REMOTE_WRITE")
    check_equal((result.returncode, result.stderr), (0, ""), "HERMES_NO_RESOLVER")
    result = syntax_check("HERMES_NO_RESOLVER")  # remote write looks names up: a wrong combination
    assert result.returncode != 0 and "#error \"HERMES_NO_RESOLVER: remote write looks its receivers' names up; " \
        "define HERMES_NO_REMOTE_WRITE too\"" in result.stderr, result.stderr


if __name__ == "__main__":
    import sys
    sys.exit(run_suite("shipping", TESTS))
