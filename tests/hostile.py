#!/usr/bin/env python3
"""Hostile input against the built hermes: floods of bad datagrams and StatsD garbage,
idle and slow HTTP clients, clients that never read or reset, a tiny open-files limit,
a million label values. hermes must stay up, count every datagram under the right
reason, apply every valid sample sent in between, keep answering scrapes, and stay within
its memory.

usage: hostile.py PATH_TO_HERMES
Ends with the line "hostile: N passed, N failed".
"""
import json
import random
import resource
import signal
import socket
import struct
import sys
import threading
import time

from blackbox import Hermes, SAMPLE_CONFIG, check_equal, run_suite

TESTS = []
VALID = '{"metric_name": "plain_counter"}'


def test(function):
    TESTS.append(function)
    return function


def rejected(samples, reason):
    return samples.get(f'hermes_samples_rejected_total{{reason="{reason}"}}')


def timed_scrape(hermes):
    started = time.monotonic()
    body = hermes.scrape()
    return body, time.monotonic() - started


def big_config(series):
    """The sample config and one metric with room for `series` long-labelled series."""
    return dict(SAMPLE_CONFIG, gauges=SAMPLE_CONFIG["gauges"] + [
        {"metric_name": "wide", "labels": ["id"], "max_series": series}])


def slow_reader(hermes):
    """A client that asks for /metrics with a tiny receive buffer, so the answer waits on it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((hermes.http_host, hermes.http_port))
    sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    return sock


def fill(hermes, series, width=60):
    """Pushes `series` series with `width`-byte label values into the metric "wide"."""
    batch, datagrams = [], []
    for i in range(series):
        batch.append({"metric_name": "wide", "payload": {"labels": {"id": f"{i:0{width}d}"}, "value": i}})
        if len(batch) == 50:  # at most about 5 KB, well under the 8 KB datagram limit
            datagrams.append(json.dumps(batch, separators=(",", ":")))
            batch = []
    if batch:
        datagrams.append(json.dumps(batch, separators=(",", ":")))
    hermes.push_paced(datagrams, window=16 if width > 20 else 64)


@test
def a_flood_of_bad_datagrams_is_counted_by_reason_and_valid_samples_all_apply(hermes):
    rng = random.Random(4)
    valid_sample = json.dumps({"metric_name": "sample_gauge", "payload": {"labels": {"label_1": "a", "label_2": "b"},
                                                                          "value": 1.5}})
    floods = {
        "malformed_json": [b"{#" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 1500))) for _ in range(300)]
        + [valid_sample[:rng.randrange(1, len(valid_sample) - 1)] for _ in range(200)]
        + ["[" * 5000, "[" * 3000 + "]" * 3000, '{"metric_name":' * 500, ""],
        "malformed_sample": ["\x00", "\x00" * 3000 + "\n"],  # read as StatsD lines: no name, no value
        "invalid_value": ['{"metric_name": "plain_counter", "payload": {"value": 1e999}}',
                          '{"metric_name": "plain_counter", "payload": {"value": -1e400}}',
                          '{"metric_name": "plain_counter", "payload": {"value": 1' + "0" * 400 + "}}"],
        "unknown_metric": [b'{"metric_name": "\xff\xfeplain"}', b'{"metric_name": "plain\xc0\xaf"}'],
        "invalid_label_value": [b'{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "\xed\xa0\x80"}}}',
                                b'{"metric_name": "sample_counter", "payload": {"labels": {"label_1": "ok\xff"}}}'],
        "label_mismatch": [b'{"metric_name": "sample_counter", "payload": {"labels": {"label_\xff": "x"}}}'],
        "too_large": [b"{" * 65507, b" " * 8193, VALID + " " * 9000],
    }
    datagrams, expected_valid = [], 0
    for reason, bad in floods.items():
        for datagram in bad:
            datagrams.append(datagram)
            if len(datagrams) % 7 == 0:  # valid samples in between
                datagrams.append(VALID)
                expected_valid += 1
    datagrams.append('{"metric_name": "plain_counter", "payload": {"value": 1' + "0" * 300 + "}}")  # 1e300 is finite
    hermes.push_paced(datagrams)
    samples = hermes.metrics()
    for reason, bad in floods.items():
        check_equal(rejected(samples, reason), len(bad), reason)
    check_equal(samples["plain_counter"], expected_valid + 1e300, "plain_counter")
    check_equal(samples["hermes_samples_accepted_total"], expected_valid + 1, "accepted")
    check_equal(samples["hermes_udp_packets_total"], len(datagrams), "datagrams counted")
    assert hermes.process.poll() is None


STATSD_VALID = b"plain_counter:1|c"


def samples_counted(samples):
    """Samples accepted plus rejected under every reason."""
    return samples["hermes_samples_accepted_total"] + sum(
        value for series, value in samples.items() if series.startswith("hermes_samples_rejected_total{"))


@test
def statsd_garbage_beside_valid_lines_is_counted_by_reason_and_the_valid_lines_all_apply(hermes):
    bad = {  # line: (reason, samples it counts as)
        b"plain_counter:1|c|@0": ("malformed_sample", 1),
        b"plain_counter:1|c|@x|#a:b": ("malformed_sample", 1),
        b"plain_counter": ("malformed_sample", 1),
        b"plain_counter:1:2:3|c": ("malformed_sample", 3),
        b"plain_counter,a=b:1|c|#a:b": ("malformed_sample", 1),
        b"plain\xffcounter:1|c": ("malformed_sample", 1),
        b"users:1|s": ("unsupported_type", 1),
        b"_e{1,1}:a|b": ("unsupported_type", 1),
        b"_sc|check|2": ("unsupported_type", 1),
        b"sample_counter:1|c|#label_1:\xed\xa0\x80": ("invalid_label_value", 1),
        b"sample_counter:1|c": ("label_mismatch", 1),
        b"sample_counter:1|c|#label_1:a," + b",".join(b"k%d:v" % i for i in range(600)): ("label_mismatch", 1),
        b"plain_counter:-1|c": ("invalid_value", 1),
        b"plain_counter:1e999|c": ("invalid_value", 1),
        b"plain_counter:1e308|c|@1e-300": ("invalid_value", 1),
        b"nope:1|c": ("unknown_metric", 1),
        b"nope" + b":1" * 2000 + b"|h": ("unknown_metric", 2000),
        b"sample_gauge:1|c": ("unknown_metric", 1),
    }
    rng = random.Random(14)
    lines = list(bad) * 5
    rng.shuffle(lines)
    datagrams, expected_valid = [], 0
    while lines:  # a few lines to a datagram, a valid one among them, under the size limit
        chunk = [STATSD_VALID] + [lines.pop() for _ in range(min(len(lines), rng.randrange(1, 8)))]
        while len(b"\n".join(chunk)) > 8192:
            lines.insert(0, chunk.pop())
        rng.shuffle(chunk)
        datagrams.append(b"\n".join(chunk))
        expected_valid += 1
    hermes.push_paced(datagrams)
    samples = hermes.metrics()
    expected = {}
    for reason, count in bad.values():
        expected[reason] = expected.get(reason, 0) + 5 * count
    for reason, count in expected.items():
        check_equal(rejected(samples, reason), count, reason)
    check_equal(samples["plain_counter"], expected_valid, "plain_counter")
    check_equal(samples["hermes_samples_accepted_total"], expected_valid, "accepted")
    check_equal(samples['hermes_samples_received_total{format="statsd"}'], samples_counted(samples), "every sample counted")

    # Random bytes, lines of them beside valid lines: none may match a metric (no name of the
    # config can be spelled from these bytes), every valid line applies, every sample is counted.
    alphabet = b"abxyz0123456789:|@#,=[]._-+ \t\r\xff\xc3\xa9"
    datagrams = []
    for _ in range(400):
        garbage = [b"x" + bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))) for _ in range(rng.randrange(1, 20))]
        datagrams.append(b"\n".join(garbage + [STATSD_VALID] + garbage[:3]))
    datagrams += [b"x" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8000))) for _ in range(100)]
    hermes.push_paced(datagrams)
    samples = hermes.metrics()
    check_equal(samples["plain_counter"], expected_valid + 400, "plain_counter after garbage")
    check_equal(samples["hermes_samples_accepted_total"], expected_valid + 400, "accepted after garbage")
    check_equal(samples['hermes_samples_received_total{format="statsd"}'], samples_counted(samples), "every sample counted")
    assert hermes.process.poll() is None


@test
def idle_and_slow_clients_stall_neither_scrapes_nor_ingest(hermes):
    idle = []
    for _ in range(300):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((hermes.http_host, hermes.http_port))
        idle.append(sock)
    stop = threading.Event()

    def trickle():  # one byte a second, never a whole request head in time
        with socket.create_connection((hermes.http_host, hermes.http_port)) as sock:
            for byte in b"GET /metrics HTTP/1.0\r\n\r\n":
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return
                if stop.wait(1):
                    return
    slow = [threading.Thread(target=trickle) for _ in range(20)]
    for thread in slow:
        thread.start()
    try:
        time.sleep(1.5)  # let every idle and slow client connect and wait
        for attempt in range(3):
            hermes.push('{"metric_name": "plain_counter"}')
            body, took = timed_scrape(hermes)
            assert took < 1, f"scrape {attempt} took {took:.2f}s"
            assert f"plain_counter {attempt + 1}" in body.splitlines()
    finally:
        stop.set()
        for thread in slow:
            thread.join()
        for sock in idle:
            sock.close()


@test
def a_client_that_never_reads_its_response_holds_up_nobody(_):
    hermes = Hermes(big_config(60000))
    try:
        fill(hermes, 60000)
        stuck = slow_reader(hermes)
        time.sleep(0.5)  # the server has filled the socket and waits to write more
        hermes.push('{"metric_name": "plain_counter"}')
        body, took = timed_scrape(hermes)
        assert took < 1, f"a scrape took {took:.2f}s"
        assert "plain_counter 1" in body.splitlines()
        assert len(body) > 4_000_000, len(body)  # more than the socket buffers hold
        stuck.close()
    finally:
        hermes.close()


@test
def a_huge_request_head_gets_431(hermes):
    with socket.create_connection((hermes.http_host, hermes.http_port), timeout=5) as sock:
        try:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nX-Fill: " + b"a" * (1 << 20))
        except OSError:
            pass  # the server may have closed its side already
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"), answer[:80]
    check_equal(hermes.metrics()['hermes_http_requests_total{code="431"}'], 1, "431s counted")


@test
def pipelined_garbage_gets_one_answer_and_harms_nothing(hermes):
    rng = random.Random(9)
    garbage = bytes(rng.randrange(256) for _ in range(20000))
    answer = hermes.request(b"GET /-/healthy HTTP/1.0\r\n\r\n" + garbage + b"\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n")
    check_equal(answer.partition("\r\n\r\n")[2], "Hermes is Healthy.\n", "the first request's answer, alone")
    assert hermes.request("BREW /pot HTCPCP/1.0\r\n\r\n").startswith("HTTP/1.0 400 Bad Request\r\n")
    assert hermes.process.poll() is None


@test
def a_client_that_resets_mid_response_harms_nothing(_):
    hermes = Hermes(big_config(30000))
    try:
        fill(hermes, 30000)
        for _ in range(5):
            sock = socket.create_connection((hermes.http_host, hermes.http_port))
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            sock.recv(1000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, with most of the response unread
        hermes.push('{"metric_name": "plain_counter"}')
        assert "plain_counter 1" in hermes.scrape().splitlines()
        assert hermes.process.poll() is None
    finally:
        hermes.close()


@test
def with_32_open_files_it_serves_again_once_the_load_goes_away(_):
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    hermes = Hermes(preexec_fn=limit)
    try:
        crowd = [socket.create_connection((hermes.http_host, hermes.http_port)) for _ in range(100)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # UDP needs no descriptor
            udp.sendto(VALID.encode(), (hermes.udp_host, hermes.udp_port))
        time.sleep(0.5)
        for sock in crowd:
            sock.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                samples = hermes.metrics()
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, "no scrape succeeded within 5s of the load going away"
                time.sleep(0.1)
        check_equal(samples["plain_counter"], 1, "the sample pushed under load")
        check_equal(samples["process_max_fds"], 32, "the limit hermes saw")
        assert hermes.process.poll() is None
    finally:
        hermes.close()


@test
def sigterm_during_a_large_scrape_exits_0(_):
    hermes = Hermes(big_config(30000))
    try:
        fill(hermes, 30000)
        reader = slow_reader(hermes)
        reader.recv(100)  # the response is under way
        code, took = hermes.stop(signal.SIGTERM)
        check_equal(code, 0, "exit code")
        assert took < 1, f"took {took:.2f}s"
        reader.close()
    finally:
        hermes.close()


@test
def back_to_back_scrapes_of_100k_series_do_not_starve_ingest(_):
    # The receive buffer an unprivileged process gets from Debian's default rmem_max
    # holds 512 such datagrams, 10 ms of them; one render takes longer than that.
    hermes = Hermes(big_config(100000), env={"HERMES_UDP_RECEIVE_BUFFER": "212992"})
    try:
        fill(hermes, 100000)
        before = hermes.metrics()
        stop, scrapes = threading.Event(), []

        def scrape_over_and_over():  # as fast as a client can: the bytes are counted, not kept
            buffer = bytearray(1 << 20)
            while not stop.is_set():
                with socket.create_connection((hermes.http_host, hermes.http_port)) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                    size = 0
                    while (got := sock.recv_into(buffer)) > 0:
                        size += got
                scrapes.append(size)
        scraper = threading.Thread(target=scrape_over_and_over)
        scraper.start()
        rate, seconds, sent = 50_000, 2, 0
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                started = time.monotonic()
                while sent < rate * seconds:
                    due = min(rate * seconds, int((time.monotonic() - started) * rate))
                    for _ in range(due - sent):
                        sock.sendto(VALID.encode(), (hermes.udp_host, hermes.udp_port))
                    sent = max(sent, due)
                    time.sleep(0.0005)
        finally:
            stop.set()
            scraper.join()
        hermes.wait_for("hermes_udp_packets_total", before["hermes_udp_packets_total"] + sent)
        after = hermes.metrics()
        assert len(scrapes) >= 20, f"only {len(scrapes)} scrapes overlapped the ingest"
        check_equal(after["plain_counter"] - before["plain_counter"], sent, "samples applied during the scrapes")
        check_equal(after["hermes_udp_receive_drops_total"], 0, "datagrams the kernel dropped")
        print(f"     {len(scrapes)} scrapes of {scrapes[0]} bytes while {sent} datagrams came at {rate}/s: all applied")
    finally:
        hermes.close()


RSS_BOUND = 24 << 20  # bytes: the whole daemon, holding 10,000 series at their limit


@test
def a_million_label_values_stop_at_max_series_in_bounded_memory(_):
    config = dict(SAMPLE_CONFIG, counters=SAMPLE_CONFIG["counters"] + [{"metric_name": "requests", "labels": ["request_id"]}])
    hermes = Hermes(config)
    try:
        datagrams = []
        for start in range(0, 1_000_000, 100):
            batch = [{"metric_name": "requests", "payload": {"labels": {"request_id": str(i)}}}
                     for i in range(start, start + 100)]
            datagrams.append(json.dumps(batch, separators=(",", ":")))
        hermes.push_paced(datagrams, window=16)
        samples = hermes.metrics()
        check_equal(samples["hermes_series"], 10000 + 1, "series: the limit, and plain_counter's one")
        check_equal(samples["hermes_samples_accepted_total"], 10000, "accepted")
        check_equal(rejected(samples, "series_limit"), 990000, "series_limit")
        check_equal(samples['requests{request_id="9999"}'], 1, "the last series under the limit")
        assert 'requests{request_id="10000"}' not in samples
        rss = samples["process_resident_memory_bytes"]
        assert rss < RSS_BOUND, f"resident memory {rss / 2**20:.1f} MiB, bound {RSS_BOUND / 2**20:.0f} MiB"
        print(f"     resident memory with 10,000 series at the limit: {rss / 2**20:.1f} MiB")
    finally:
        hermes.close()


def resident_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@test
def everything_at_once_stays_within_the_memory_budget(_):
    """60 scrapers that never read at 100k series, a flood of new series, a summary flood
    in the order that defeats the quantile summary, and 1 MiB request heads, all at once,
    with a 64 MiB budget: resident memory stays within the budget and the baseline."""
    budget = 64 << 20
    config = dict(big_config(1_000_000), summaries=[
        {"metric_name": "sizes", "labels": ["id"], "objectives": {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}}])
    hermes = Hermes(config, env={"HERMES_MAX_MEMORY": str(budget)})
    stalled, stop, peak = [], threading.Event(), [0]
    try:
        baseline = resident_bytes(hermes.process.pid)  # the binary and the C and C++ libraries
        fill(hermes, 100000)
        filled = hermes.metric("hermes_udp_packets_total")

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], resident_bytes(hermes.process.pid))
                time.sleep(0.01)
        sampler = threading.Thread(target=sample)
        sampler.start()
        for _ in range(60):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((hermes.http_host, hermes.http_port))
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            stalled.append(sock)
        heads = []
        for _ in range(3):  # with the 60, one less than HERMES_MAX_CONNECTIONS: a normal scrape still gets in
            sock = socket.create_connection((hermes.http_host, hermes.http_port))
            sock.sendall(b"GET /metrics HTTP/1.0\r\nX-Fill: ")
            heads.append(sock)
        summaries = [json.dumps([{"metric_name": "sizes", "payload": {"labels": {"id": str(i % 2000)}, "observation": 1e9 - n * 50 - k}}
                                 for k in range(50)], separators=(",", ":")) for n, i in enumerate(range(4000))]
        series = [json.dumps([{"metric_name": "wide", "payload": {"labels": {"id": f"flood{start + k:060d}"}, "value": 1}}
                              for k in range(50)], separators=(",", ":")) for start in range(0, 400_000, 50)]
        for sock in heads:
            try:
                sock.sendall(b"a" * (1 << 20))
            except OSError:
                pass  # answered 431 and closed before the whole megabyte came
        hermes.push_paced(summaries + series, window=16)
        during = hermes.metrics()  # a normal scrape, while the 60 still hold theirs
        stop.set()
        sampler.join()
        used, limit = during["hermes_memory_used_bytes"], during["hermes_memory_budget_bytes"]
        check_equal(limit, budget, "hermes_memory_budget_bytes")
        assert used <= limit, f"{used} bytes used of {limit}"
        assert rejected(during, "memory_limit") > 0, "the series flood met the budget"
        check_equal(during["hermes_udp_packets_total"], filled + len(summaries) + len(series), "every datagram read")
        assert peak[0] <= budget + baseline, \
            f"resident {peak[0] / 2**20:.1f} MiB, above the budget {budget / 2**20:.0f} MiB and the baseline {baseline / 2**20:.1f} MiB"
        for sock in stalled + heads:
            sock.close()
        hermes.push('{"metric_name": "plain_counter"}')
        after = hermes.metrics()
        check_equal(after["plain_counter"], 1, "ingest after the attack")
        print(f"     peak resident {peak[0] / 2**20:.1f} MiB (baseline {baseline / 2**20:.1f} MiB, budget 64 MiB); "
              f"{rejected(during, 'memory_limit'):.0f} series refused as memory_limit; {used / 2**20:.1f} MiB of the budget used")
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
        hermes.close()


if __name__ == "__main__":
    sys.exit(run_suite("hostile", TESTS))
