#!/usr/bin/env python3
"""A UDP client that keeps one flow alive: every INTERVAL it sends a datagram
from one fixed source port to HOST:PORT, and prints every answer as
"MILLISECONDS ANSWER" (wall clock, so that the test can compare it with the
time of a manifest edit).

    udp_stream.py HOST PORT SOURCE-PORT SECONDS STOP-FILE [INTERVAL]

Stops after SECONDS, or as soon as STOP-FILE exists.
"""
import os
import select
import socket
import sys
import time


def main():
    host, port, source_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    seconds, stop_file = float(sys.argv[4]), sys.argv[5]
    interval = float(sys.argv[6]) if len(sys.argv) > 6 else 0.2
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", source_port))
    deadline = time.monotonic() + seconds
    next_send = time.monotonic()
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        now = time.monotonic()
        if now >= next_send:
            sock.sendto(b"who?", (host, port))
            next_send = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if ready:
            try:
                answer = sock.recv(100).decode().strip()
            except OSError as err:  # an ICMP error queued on the socket
                answer = f"error {err.strerror or err}"
            print(int(time.time() * 1000), answer, flush=True)


main()
