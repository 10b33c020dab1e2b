"""Asks the L2 segment who has an IPv4 address, as a host about to send to it.

    arp_probe.py IFACE TARGET [SECONDS]

Sends one ARP request from IFACE (its own MAC and first IPv4 address) for
TARGET, then prints the sender MAC of every ARP reply for TARGET that arrives
within SECONDS (default 1), one a line. Prints nothing when no host answers.
Runs in the namespace that owns IFACE (ip netns exec).
"""
import fcntl
import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806
SIOCGIFADDR = 0x8915


def own_ipv4(iface):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request = struct.pack("256s", iface.encode()[:15])
    return fcntl.ioctl(s.fileno(), SIOCGIFADDR, request)[20:24]


def main():
    iface, target = sys.argv[1], socket.inet_aton(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((iface, ETH_P_ARP))
    mac = sock.getsockname()[4]
    ip = own_ipv4(iface)
    # Ethernet broadcast, then ARP: Ethernet/IPv4, request, who-has target.
    frame = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    frame += struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + target
    sock.send(frame)
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(128)
        except socket.timeout:
            break
        op = struct.unpack("!H", data[20:22])[0]
        if op == 2 and data[28:32] == target:
            print(data[22:28].hex(":"))


main()
