"""A client that holds one HTTP/1.1 connection through a VIP.

    held_client.py HOST PORT WORKDIR TAG [--reset]

Sends one request and prints "before BODY". Then it creates WORKDIR/TAG-ready
and waits for WORKDIR/TAG-go, sends a second request on the same socket and
prints "after BODY". With --reset it closes with an RST and prints "reset";
IPVS then forgets the connection after its CLOSE timeout instead of holding it
in TIME_WAIT.
"""
import os
import socket
import struct
import sys
import time


def ask(sock, host):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += sock.recv(4096)
    return body.decode().strip()


def main():
    host, port, work, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    reset = "--reset" in sys.argv[5:]
    sock = socket.create_connection((host, port), timeout=10)
    print("before", ask(sock, host), flush=True)
    open(os.path.join(work, tag + "-ready"), "w").close()
    for _ in range(1200):
        if os.path.exists(os.path.join(work, tag + "-go")):
            break
        time.sleep(0.1)
    print("after", ask(sock, host), flush=True)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        print("reset", flush=True)


main()
