#!/usr/bin/env python3
"""The soak: the mixed workload of tests/pressure.py against the built hermes, with its
default 64 MiB budget, for ten minutes, a scrape every second and a SIGHUP every 30 s.
Reports per minute resident memory, scrape latency (median and max) and the scrapes
not 200; at the end the accounting of every sample sent and the reloads.

Exits 1 when a scrape was not 200 or took more than a second, the sender missed its
rate, resident memory went above the budget and the baseline, the accounting does not
add up, or a SIGHUP was not one successful reload.

usage: soak.py PATH_TO_HERMES [SECONDS]   (make soak; make soak SOAK_SECONDS=120)
"""
import statistics
import sys
import time

from workload import MIXED_BATCH, MIXED_CONFIG, MIXED_RATE, MiB, Load, figures, mixed_maker, problems, settled

SIGHUP_EVERY = 30  # seconds
MINUTE = 60


def wait_until(moment):
    time.sleep(max(0.0, moment - time.monotonic()))


def minute_line(load, start, end, label):
    """Resident memory, scrape latency and scrapes not 200 in [start, end) seconds."""
    readings = [rss for at, rss in load.memory.readings if start <= at < end] or [load.memory.readings[-1][1]]
    scrapes = [s for s in load.scraper.scrapes if start <= s.at < end]
    latencies = [s.seconds for s in scrapes] or [0.0]
    refused = [s.memory_limit for s in scrapes if s.memory_limit is not None]
    return (f"minute {label / MINUTE:4.1f}: RSS {readings[-1] / MiB:.1f} MiB (peak {max(readings) / MiB:.1f}); "
            f"{len(scrapes)} scrapes, latency median {statistics.median(latencies):.3f}s, max {max(latencies):.3f}s, "
            f"{sum(1 for s in scrapes if s.status != 200)} not 200; "
            f"memory_limit {f'{refused[-1]:,.0f}' if refused else 'unknown'}")


def reload_problems(samples, sighups):
    """Each SIGHUP a successful reload, as hermes_config_reloads_total counts them."""
    succeeded = samples['hermes_config_reloads_total{result="success"}']
    failed = samples['hermes_config_reloads_total{result="failure"}']
    print(f"reloads: {sighups} SIGHUPs sent; hermes_config_reloads_total success {succeeded:.0f}, failure {failed:.0f}")
    return [] if (succeeded, failed) == (sighups, 0) else [f"{sighups} SIGHUPs, but {succeeded:.0f} reloads succeeded "
                                                           f"and {failed:.0f} failed"]


def soak(seconds):
    make = mixed_maker()
    with Load(MIXED_CONFIG) as load:
        print(f"soak: {seconds}s of {MIXED_RATE} datagrams/s of {MIXED_BATCH} samples, a scrape every second, "
              f"a SIGHUP every {SIGHUP_EVERY}s; baseline RSS {load.memory.baseline / MiB:.1f} MiB", flush=True)
        sender = load.send(make, MIXED_RATE, seconds)
        load.scraper.start()
        sighups = 0
        events = sorted([(t, "sighup") for t in range(SIGHUP_EVERY, seconds, SIGHUP_EVERY)] +
                        [(t, "minute") for t in range(MINUTE, seconds, MINUTE)], key=lambda event: event[0])
        for moment, event in events:
            wait_until(load.started + moment)
            if event == "sighup":
                load.sighup()
                sighups += 1
            else:
                print(minute_line(load, moment - MINUTE, moment, moment), flush=True)
        report = sender.join()
        load.scraper.stop()
        last = (seconds - 1) // MINUTE * MINUTE  # the last minute, whole or not, takes the scrapes until the end
        print(minute_line(load, last, float("inf"), seconds), flush=True)
        samples, error = settled(load.hermes, report.datagrams)
        print("soak: " + figures(load, report, samples, MIXED_BATCH))
        found = problems(load, report, samples, error, MIXED_BATCH)
        if samples:
            found += reload_problems(samples, sighups)
        else:
            print(f"reloads: {sighups} SIGHUPs sent; counts unknown")
    for problem in found:
        print(f"soak: FAILED: {problem}")
    print("soak: passed" if not found else f"soak: {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(soak(int(sys.argv[2]) if len(sys.argv) > 2 else 600))
