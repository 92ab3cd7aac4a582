#!/usr/bin/env python3
"""The built hermes under memory pressure, with its default 64 MiB budget: an ordinary
mixed workload for 60 s, and a flood of new series from start-up. In both, every scrape
(as text, OpenMetrics and protobuf in turn, one a second) is 200 within a second, the
budget refuses series as memory_limit rather than scrapes, resident memory stays within
the budget and the baseline of the idle process, and every sample sent is accepted,
rejected, or in a datagram the kernel dropped. tests/workload.py holds the load.

usage: pressure.py PATH_TO_HERMES
Ends with the line "pressure: N passed, N failed".
"""
import sys
import time

from blackbox import run_suite
from workload import (MIXED_BATCH, MIXED_CONFIG, MIXED_RATE, OBJECTIVES, Load, account, figures, mixed_maker,
                      problems, rejections, settled)

TESTS = []


def test(function):
    TESTS.append(function)
    return function


MIXED_SECONDS = 60


@test
def an_ordinary_mixed_workload_is_scraped_every_second_for_60_s(_):
    make = mixed_maker()
    with Load(MIXED_CONFIG) as load:
        sender = load.send(make, MIXED_RATE, MIXED_SECONDS)
        load.scraper.start()
        report = sender.join()
        load.scraper.stop()
        samples, error = settled(load.hermes, report.datagrams)
        print("     mixed: " + figures(load, report, samples, MIXED_BATCH))
        found = problems(load, report, samples, error, MIXED_BATCH)
        # 1,000 summaries of at most 36,800 bytes with their room, and the rest: the
        # default budget holds this workload whole.
        refused = rejections(samples).get("memory_limit") if samples is not None else None
        if refused:
            found.append(f"{refused:.0f} samples refused as memory_limit: the budget does not hold the workload")
        assert not found, "; ".join(found)


# New series only: each datagram makes 49 counters and a summary that did not exist.
FLOOD_CONFIG = {
    "service_name": "pressure",
    "counters": [{"metric_name": "flood_total", "labels": ["id"], "max_series": 10_000_000}],
    "summaries": [{"metric_name": "flood_bytes", "labels": ["id"], "max_series": 10_000_000, "objectives": OBJECTIVES}],
}
FLOOD_BATCH = 50  # samples a datagram
FLOOD_TEMPLATE = ("[" + ",".join(['{"metric_name":"flood_total","payload":{"labels":{"id":"c%d"}}}'] * (FLOOD_BATCH - 1) +
                                 ['{"metric_name":"flood_bytes","payload":{"labels":{"id":"s%d"},"observation":%d}}']) + "]").encode()
# Datagrams a second: about half of what hermes reads without kernel drops once it
# refuses every sample (10k datagrams/s: none dropped on 2 shared cores).
FLOOD_RATE = 10_000
FLOOD_FILLS_WITHIN = 20  # seconds: the budget refuses series by then, or the first scrape comes anyway
FLOOD_SCRAPED = 5  # seconds of scrapes while the flood goes on, and as many after it
FLOOD_DROPS_AT_MOST = 0.1  # of the datagrams: more, and the kernel rather than the budget refused the flood


def flood_datagram(i):
    first = i * (FLOOD_BATCH - 1)
    return FLOOD_TEMPLATE % (*range(first, first + FLOOD_BATCH - 1), i, i % 65536)


@test
def a_series_flood_before_the_first_scrape_costs_series_never_scrapes(_):
    with Load(FLOOD_CONFIG) as load:
        sender = load.send(flood_datagram, FLOOD_RATE)
        refusing = load.log.refusing.wait(FLOOD_FILLS_WITHIN)  # hermes logs the first memory_limit at once
        filled = time.monotonic() - sender.started
        load.scraper.start()
        time.sleep(FLOOD_SCRAPED)
        sender.stop()
        report = sender.join()
        stopped = time.monotonic() - load.started
        time.sleep(FLOOD_SCRAPED)
        load.scraper.stop()
        samples, error = settled(load.hermes, report.datagrams)
        scrapes = load.scraper.scrapes
        during = sum(1 for s in scrapes if s.at < stopped)
        print(f"     flood: memory_limit {'logged' if refusing else 'not logged'} after {filled:.2f}s; "
              f"{during} scrapes during, {len(scrapes) - during} after; " + figures(load, report, samples, FLOOD_BATCH))
        found = problems(load, report, samples, error, FLOOD_BATCH)
        if scrapes and scrapes[0].status == 200 and not scrapes[0].memory_limit:
            found.append("the first scrape shows no memory_limit: the budget was not full before it")
        if samples:
            counted = account(samples, report.datagrams, FLOOD_BATCH)
            if not counted.rejected.get("memory_limit"):
                found.append("no sample was refused as memory_limit")
            if counted.dropped_datagrams > FLOOD_DROPS_AT_MOST * report.datagrams:
                found.append(f"the kernel dropped {counted.dropped_datagrams:.0f} of {report.datagrams} datagrams")
        assert not found, "; ".join(found)


if __name__ == "__main__":
    sys.exit(run_suite("pressure", TESTS))
