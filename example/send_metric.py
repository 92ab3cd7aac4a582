#!/usr/bin/env python3
"""Pushes the sample counter and the sample gauge of config.json to a Hermes over UDP.

usage: send_metric.py [HOST] [PORT]        (defaults: localhost 7789)

Standard library only: a worker needs nothing but a UDP socket to push a sample.
"""
import json
import socket
import sys

COUNTER = {
    "metric_name": "sample_counter",
    "payload": {"labels": {"label_1": "testing label 1"}},
}

GAUGE = {
    "metric_name": "sample_gauge",
    "payload": {
        "labels": {"label_1": "testing label 1", "label_2": "testing label 2"},
        "value": 67.4,
    },
}


def send(host, port, samples):
    """Sends each sample as one datagram. UDP: nothing waits for an answer."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, kind, proto) as sock:
        for sample in samples:
            sock.sendto(json.dumps(sample).encode("utf-8"), address)


def main(argv):
    if len(argv) > 3 or (len(argv) > 1 and argv[1] in ("-h", "--help")):
        print(__doc__.strip())
        return 2 if len(argv) > 3 else 0
    host = argv[1] if len(argv) > 1 else "localhost"
    port = int(argv[2]) if len(argv) > 2 else 7789
    send(host, port, [COUNTER, GAUGE])
    print(f"sent sample_counter and sample_gauge to {host}:{port}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
