#!/usr/bin/env python3
"""A pod's server for the packet-path test bed (tests/vm/cluster.sh): it
answers with its own name and the client address it saw, so that a test can
tell which pod served it and whether the connection was masqueraded.

    pod.py NAME [--tcp 8080] [--udp 5353] [--ipv6] [--sctp PORT] [--log FILE]

TCP speaks HTTP/1.1 with keep-alive (held_client.py carries several requests
on one connection) and answers "NAME CLIENTIP\\n" to any GET. UDP answers
every datagram with "NAME CLIENTIP\\n". --udp 0 serves no UDP. With --log,
each new TCP connection and each datagram appends "tcp|udp CLIENTIP:PORT" to
FILE, so that a test can show a packet never reached this pod. --ipv6 also
serves TCP on [::] (IPv6 only, so IPv4 clients keep their plain address).
--sctp PORT serves SCTP (one-to-one sockets) on 0.0.0.0, and on [::] with
--ipv6: each association gets "NAME CLIENTIP\n" and is closed.
"""

import argparse
import http.server
import socket
import socketserver
import threading


class Log:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def write(self, proto, address):
        if not self.path:
            return
        with self.lock, open(self.path, "a") as out:
            out.write(f"{proto} {address[0]}:{address[1]}\n")


def http_handler(name, log):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            log.write("tcp", self.client_address)

        def do_GET(self):
            body = f"{name} {self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


class UdpHandler(socketserver.BaseRequestHandler):
    def handle(self):
        _, sock = self.request
        self.server.log.write("udp", self.client_address)
        sock.sendto(f"{self.server.name} {self.client_address[0]}\n".encode(), self.client_address)


class Http6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def sctp_server(name, family, address, port, log):
    """Accepts SCTP associations forever, answering each with its client."""
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind((address, port))
    listener.listen(16)
    while True:
        conn, client = listener.accept()
        log.write("sctp", client)
        try:
            conn.sendall(f"{name} {client[0]}\n".encode())
        finally:
            conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--tcp", type=int, default=8080)
    parser.add_argument("--udp", type=int, default=5353)
    parser.add_argument("--ipv6", action="store_true")
    parser.add_argument("--sctp", type=int, default=0)
    parser.add_argument("--log")
    args = parser.parse_args()
    log = Log(args.log)

    servers = []
    if args.tcp:
        server = http.server.ThreadingHTTPServer(("0.0.0.0", args.tcp), http_handler(args.name, log))
        server.daemon_threads = True
        servers.append(server)
    if args.udp:
        server = socketserver.ThreadingUDPServer(("0.0.0.0", args.udp), UdpHandler)
        server.daemon_threads = True
        server.name = args.name
        server.log = log
        servers.append(server)
    if args.tcp and args.ipv6:
        server = Http6Server(("::", args.tcp), http_handler(args.name, log))
        server.daemon_threads = True
        servers.append(server)
    threads = [threading.Thread(target=server.serve_forever) for server in servers]
    if args.sctp:
        families = [(socket.AF_INET, "0.0.0.0")]
        if args.ipv6:
            families.append((socket.AF_INET6, "::"))
        for family, address in families:
            threads.append(threading.Thread(
                target=sctp_server, args=(args.name, family, address, args.sctp, log), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
