#!/usr/bin/env python3
"""A test backend that answers with its own name and port, so that a client
can see which real server IPVS picked.

    backend.py NAME --tcp 8080,8081 --udp 5353

TCP ports speak HTTP/1.1 with keep-alive (one connection can carry several
requests, which the restart scenario relies on) and answer "NAME:PORT\\n" to
any GET. UDP ports answer every datagram with "NAME:PORT\\n".
"""

import argparse
import http.server
import socketserver
import threading


def http_handler(name, port):
    body = f"{name}:{port}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
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
        sock.sendto(self.server.reply, self.client_address)


def ports(text):
    return [int(port) for port in text.split(",") if port]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--tcp", type=ports, default=[])
    parser.add_argument("--udp", type=ports, default=[])
    args = parser.parse_args()

    servers = []
    for port in args.tcp:
        server = http.server.ThreadingHTTPServer(("0.0.0.0", port), http_handler(args.name, port))
        server.daemon_threads = True
        servers.append(server)
    for port in args.udp:
        server = socketserver.ThreadingUDPServer(("0.0.0.0", port), UdpHandler)
        server.reply = f"{args.name}:{port}\n".encode()
        servers.append(server)
    threads = [threading.Thread(target=server.serve_forever) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
