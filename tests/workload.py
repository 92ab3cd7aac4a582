"""The load that tests/pressure.py and tests/soak.py put on the built hermes, and what
they measure of it: a sender process that keeps a rate of datagrams to a schedule,
a scrape every second in each format Prometheus asks for, hermes' resident memory and
log, and the accounting of every sample sent. Not a suite of its own.

The sender is a process of its own, so that neither the scrapes nor the readings of
memory take its turns; it sends whatever is due at once whenever it is behind, so that
a pause (the machine is shared) costs a burst, not datagrams, and it reports the rate
it achieved, which the suites check rather than assume.
"""
import json
import multiprocessing
import random
import re
import signal
import socket
import threading
import time
from collections import Counter, namedtuple

from blackbox import Hermes
from hostile import resident_bytes

BUDGET = 64 << 20  # bytes: hermes' default memory budget, which the suites leave in force
MiB = 1 << 20

# ---- the ordinary mixed workload ------------------------------------------------------------

OBJECTIVES = {"0.5": 0.05, "0.9": 0.01, "0.99": 0.001}
WORKERS, ROUTES = 4000, 1000
MIXED_CONFIG = {
    "service_name": "pressure",
    "counters": [{"metric_name": "jobs_total", "metric_description": "jobs done", "labels": ["worker"]}],
    "gauges": [{"metric_name": "queue_depth", "metric_description": "jobs waiting", "labels": ["worker"]}],
    "histograms": [{"metric_name": "request_seconds", "metric_description": "latency", "labels": ["route"]}],
    "summaries": [{"metric_name": "response_bytes", "metric_description": "sizes", "labels": ["route"],
                   "objectives": OBJECTIVES}],
}
MIXED_RATE = 3000  # datagrams a second
MIXED_BATCH = 10  # samples a datagram


def mixed_sample(k, rng):
    """The k-th sample of the mixed workload: in turn a worker's counter, its gauge, a
    route's histogram and a route's summary."""
    worker = {"worker": f"worker-{k // 4 % WORKERS:04d}"}
    route = {"route": f"/api/v1/route-{k // 4 % ROUTES:04d}"}
    kind = k % 4
    if kind == 0:
        return {"metric_name": "jobs_total", "payload": {"labels": worker}}
    if kind == 1:
        return {"metric_name": "queue_depth", "payload": {"labels": worker, "value": rng.randrange(1000)}}
    if kind == 2:
        return {"metric_name": "request_seconds", "payload": {"labels": route, "observation": round(rng.lognormvariate(-3, 1.5), 6)}}
    return {"metric_name": "response_bytes", "payload": {"labels": route, "observation": rng.randrange(100, 1_000_000)}}


def mixed_datagrams(count=12000, seed=20):
    """`count` datagrams of MIXED_BATCH samples each, sent over and over: every series is
    pushed within the first 1,600 datagrams (about half a second), and again and again."""
    rng = random.Random(seed)
    return [json.dumps([mixed_sample(d * MIXED_BATCH + i, rng) for i in range(MIXED_BATCH)],
                       separators=(",", ":")).encode() for d in range(count)]


def mixed_maker():
    cycle = mixed_datagrams()
    return lambda i: cycle[i % len(cycle)]


# ---- sending on a schedule ------------------------------------------------------------------

SendReport = namedtuple("SendReport", "rate datagrams seconds per_second worst_lag")
SendReport.achieved = property(lambda report: report.datagrams / report.seconds if report.seconds else 0.0)
SendReport.worst_second = property(lambda report: min(report.per_second, default=report.datagrams))

RATE_TOLERANCE = 0.05  # the achieved rate may fall short of the schedule by this fraction


def send_on_schedule(address, make, rate, total, stop, results):
    """Sends make(0), make(1), ... to `address`, datagram i when i / rate seconds have
    passed, until `total` are sent or `stop` is set; then sends its SendReport."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sent, worst_lag, marks = 0, 0.0, []
        started = time.monotonic()
        mark = started + 1
        while sent != total and not stop.is_set():
            now = time.monotonic()
            while now >= mark:  # the count at each whole second, for the worst second
                marks.append(sent)
                mark += 1
            due = int((now - started) * rate)
            if total is not None:
                due = min(due, total)
            worst_lag = max(worst_lag, (due - sent) / rate)
            for i in range(sent, due):
                sock.sendto(make(i), address)
            sent = max(sent, due)
            time.sleep(0.0002)
        seconds = time.monotonic() - started
    per_second = [after - before for before, after in zip([0] + marks, marks)]
    results.send(SendReport(rate, sent, seconds, per_second, worst_lag))


class Sender:
    """A process that sends make(i) to hermes at `rate` datagrams a second, for `seconds`
    or until stop()."""

    def __init__(self, hermes, make, rate, seconds=None):
        context = multiprocessing.get_context("fork")  # `make` is a closure: it is not pickled
        self._stop = context.Event()
        self._results, results = context.Pipe(duplex=False)
        total = None if seconds is None else int(rate * seconds)
        self._process = context.Process(target=send_on_schedule, daemon=True,
                                        args=((hermes.udp_host, hermes.udp_port), make, rate, total, self._stop, results))
        self._process.start()
        self.started = time.monotonic()

    def stop(self):
        self._stop.set()

    def join(self):
        """The SendReport, once the last datagram is sent."""
        report = self._results.recv()
        self._process.join()
        return report


# ---- watching hermes ------------------------------------------------------------------------

# The Accept headers Prometheus 2.42 sends: by default, and with native histograms.
OPENMETRICS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROTOBUF_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
                   "application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,"
                   "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
FORMATS = (("text", None), ("openmetrics", OPENMETRICS_ACCEPT), ("protobuf", PROTOBUF_ACCEPT))
SCRAPE_DEADLINE = 1.0  # seconds: every scrape must be answered within this

# `status` is the HTTP code, or the error that stopped the scrape; `memory_limit` is read
# from the text formats' bodies (None otherwise).
Scrape = namedtuple("Scrape", "at format status seconds size memory_limit")
MEMORY_LIMIT_LOGGED = re.compile(r"\bmemory_limit=(\d+)")
MEMORY_LIMIT_LINE = re.compile(rb'\nhermes_samples_rejected_total\{reason="memory_limit"\} (\S+)\n')


def scrape(hermes, format_name, accept, at):
    """One GET /metrics with `accept`, timed from connecting to the last byte."""
    request = b"GET /metrics HTTP/1.0\r\n" + (f"Accept: {accept}\r\n".encode() if accept else b"") + b"\r\n"
    started = time.monotonic()
    try:
        with socket.create_connection((hermes.http_host, hermes.http_port), timeout=5) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
    except OSError as error:
        return Scrape(at, format_name, f"{type(error).__name__}: {error}", time.monotonic() - started, 0, None)
    seconds = time.monotonic() - started
    response = b"".join(chunks)
    status_line = response.partition(b"\r\n")[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else f"no status line: {response[:40]!r}"
    found = MEMORY_LIMIT_LINE.search(response) if status == 200 and format_name != "protobuf" else None
    return Scrape(at, format_name, status, seconds, len(response), float(found.group(1)) if found else None)


class Scraper(threading.Thread):
    """Scrapes /metrics once a second, in turn as text, as OpenMetrics and as protobuf;
    a scrape that takes longer than a second skips the ticks it missed."""

    def __init__(self, hermes, since):
        super().__init__(daemon=True)
        self.hermes, self.since, self.scrapes = hermes, since, []
        self._halt = threading.Event()

    def run(self):
        due = time.monotonic() + 1
        while not self._halt.wait(max(0.0, due - time.monotonic())):
            format_name, accept = FORMATS[len(self.scrapes) % len(FORMATS)]
            self.scrapes.append(scrape(self.hermes, format_name, accept, time.monotonic() - self.since))
            while due <= time.monotonic():
                due += 1

    def stop(self):
        self._halt.set()
        if self.is_alive():
            self.join()


class ResidentMemory(threading.Thread):
    """hermes' resident memory every 10 ms. The baseline is the idle process's at start,
    read before anything is sent, as tests/hostile.py reads it."""

    def __init__(self, pid, since):
        super().__init__(daemon=True)
        self.pid, self.since = pid, since
        self.baseline = resident_bytes(pid)
        self.readings = [(0.0, self.baseline)]  # (seconds since `since`, bytes)
        self._halt = threading.Event()

    @property
    def peak(self):
        return max(rss for _, rss in self.readings)

    def run(self):
        while not self._halt.wait(0.01):
            try:
                self.readings.append((time.monotonic() - self.since, resident_bytes(self.pid)))
            except (OSError, AssertionError):
                return  # hermes is gone, or a zombie without VmRSS

    def stop(self):
        self._halt.set()
        self.join()


class LogReader(threading.Thread):
    """Reads hermes' log as it comes, so that a full pipe never stalls hermes, into
    hermes.log. `refusing` is set once hermes logs samples rejected as memory_limit;
    `memory_limit` sums what it logged, which lags the count by up to 10 s, for when no
    scrape can tell."""

    def __init__(self, hermes):
        super().__init__(daemon=True)
        self.hermes = hermes
        self.refusing = threading.Event()
        self.memory_limit = 0

    def run(self):
        for line in self.hermes.process.stderr:
            self.hermes.log.append(line)
            logged = MEMORY_LIMIT_LOGGED.search(line) if 'msg="samples rejected"' in line else None
            if logged:
                self.memory_limit += int(logged.group(1))
                self.refusing.set()


class Load:
    """hermes on `config` with the default memory budget (or `budget`), its log read and
    its memory watched from start-up; send() starts the sender, scraper.start() the scrapes."""

    def __init__(self, config, budget=None):
        self.budget = budget or BUDGET
        self.hermes = Hermes(config, env={"HERMES_MAX_MEMORY": str(budget)} if budget else None)
        self.started = time.monotonic()
        self.memory = ResidentMemory(self.hermes.process.pid, self.started)
        self.log = LogReader(self.hermes)
        self.scraper = Scraper(self.hermes, self.started)
        self.sender = None

    def __enter__(self):
        self.log.start()
        self.memory.start()
        return self

    def send(self, make, rate, seconds=None):
        self.sender = Sender(self.hermes, make, rate, seconds)
        return self.sender

    def sighup(self):
        self.hermes.process.send_signal(signal.SIGHUP)

    def __exit__(self, *_):
        if self.sender:
            self.sender.stop()
        self.scraper.stop()
        self.memory.stop()
        if self.hermes.process.poll() is None:
            self.hermes.process.kill()
            self.hermes.process.wait()
        self.log.join()
        self.hermes.close()


# ---- checking -------------------------------------------------------------------------------

def settled(hermes, datagrams, seconds=5):
    """A scrape's samples once hermes has read, or the kernel has dropped, each of the
    `datagrams` sent and the counts stand still; or the error of the last try."""
    deadline, last = time.monotonic() + seconds, None
    while True:
        try:
            samples = hermes.metrics()
            counted = samples["hermes_udp_packets_total"] + samples["hermes_udp_receive_drops_total"]
            now = (counted, samples["hermes_samples_accepted_total"], sum(rejections(samples).values()))
            if counted == datagrams and now == last:
                return samples, None
            last = now
            outcome = samples, None
        except (AssertionError, OSError) as error:
            outcome = None, f"no answer 200 to read the counts from: {str(error).splitlines()[0]}"
        if time.monotonic() > deadline:
            return outcome
        time.sleep(0.2)


def rejections(samples):
    prefix = 'hermes_samples_rejected_total{reason="'
    return {series[len(prefix):-2]: value for series, value in samples.items() if series.startswith(prefix)}


Accounting = namedtuple("Accounting", "sent accepted rejected dropped dropped_datagrams")


def account(samples, datagrams, batch):
    """Every sample sent, as hermes counted it: a datagram the kernel dropped counts its
    `batch` samples as neither accepted nor rejected."""
    drops = samples["hermes_udp_receive_drops_total"]
    return Accounting(datagrams * batch, samples["hermes_samples_accepted_total"], rejections(samples),
                      drops * batch, drops)


def accounting_problems(samples, datagrams, batch, budget):
    counted = account(samples, datagrams, batch)
    found = []
    if samples["hermes_memory_budget_bytes"] != budget:
        found.append(f"hermes_memory_budget_bytes is {samples['hermes_memory_budget_bytes']:.0f}, not {budget}")
    received = samples["hermes_udp_packets_total"] + counted.dropped_datagrams
    if received != datagrams:
        found.append(f"{datagrams} datagrams sent, but {received:.0f} read or dropped")
    total = counted.accepted + sum(counted.rejected.values()) + counted.dropped
    if total != counted.sent:
        found.append(f"{counted.sent} samples sent, but {total:.0f} accepted, rejected or dropped")
    others = {reason: value for reason, value in counted.rejected.items() if reason != "memory_limit" and value}
    if others:
        found.append(f"samples rejected for reasons other than memory_limit: {others}")
    return found


def scrape_problems(scrapes):
    found = []
    failed = [s for s in scrapes if s.status != 200]
    if failed:
        statuses = dict(Counter(s.status for s in failed))
        found.append(f"{len(failed)} of {len(scrapes)} scrapes not 200: {statuses}, the first at {failed[0].at:.1f}s")
    slow = [s for s in scrapes if s.seconds > SCRAPE_DEADLINE]
    if slow:
        worst = max(slow, key=lambda s: s.seconds)
        found.append(f"{len(slow)} scrapes took more than {SCRAPE_DEADLINE:g}s, the worst {worst.seconds:.2f}s "
                     f"({worst.format}, at {worst.at:.1f}s)")
    return found


def memory_problems(load):
    bound = load.budget + load.memory.baseline
    peak = load.memory.peak
    if peak > bound:
        return [f"resident memory peaked at {peak / MiB:.1f} MiB, above the budget {load.budget / MiB:.0f} MiB "
                f"and the baseline {load.memory.baseline / MiB:.1f} MiB"]
    return []


def rate_problems(report):
    if report.achieved < report.rate * (1 - RATE_TOLERANCE):
        return [f"the sender achieved {report.achieved:.0f} datagrams/s of the {report.rate} scheduled"]
    return []


def figures(load, report, samples, batch):
    """One line: scrapes, memory_limit, peak memory against its bound, the accounting and
    the rate achieved."""
    scrapes = load.scraper.scrapes
    answered = (f"{len(scrapes)} scrapes ({sum(1 for s in scrapes if s.status != 200)} not 200, "
                f"worst {max((s.seconds for s in scrapes), default=0.0):.3f}s)")
    memory = (f"peak RSS {load.memory.peak / MiB:.1f} MiB (bound {load.budget / MiB:.0f} budget + "
              f"{load.memory.baseline / MiB:.1f} baseline)")
    if samples:
        counted = account(samples, report.datagrams, batch)
        refused = f"memory_limit {counted.rejected.get('memory_limit', 0):,.0f}"
        counts = (f"sent {counted.sent:,} = accepted {counted.accepted:,.0f} + rejected "
                  f"{sum(counted.rejected.values()):,.0f} + dropped {counted.dropped:,.0f}")
    else:
        refused = f"memory_limit at least {load.log.memory_limit:,} (from the log: no 200)"
        counts = f"sent {report.datagrams * batch:,}, counts unknown"
    rate = (f"{report.achieved:,.0f} of {report.rate:,} datagrams/s (worst second {report.worst_second:,}, "
            f"at most {report.worst_lag:.2f}s behind)")
    return "; ".join((answered, refused, memory, counts, rate))


def problems(load, report, samples, error, batch):
    """All that is wrong with a run: scrapes not 200 or slow, a rate not met, memory
    above the budget and the baseline, samples unaccounted for."""
    found = scrape_problems(load.scraper.scrapes) + rate_problems(report) + memory_problems(load)
    return found + (accounting_problems(samples, report.datagrams, batch, load.budget) if samples else [error])
