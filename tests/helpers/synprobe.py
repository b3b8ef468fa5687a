"""Sends one bare TCP SYN over IPv6 from a raw socket, optionally behind a Destination
Options extension header, and reports whether a SYN-ACK came back ("synack") or not
("nothing") within 3 s. Run as root in the test's namespace.

    synprobe.py SRC DST PORT plain|ext
"""
import os
import select
import socket
import struct
import sys
import time

src, dst, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sport = 40000 + os.getpid() % 20000


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


tcp = struct.pack("!HHIIBBHHH", sport, port, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
pseudo = (
    socket.inet_pton(socket.AF_INET6, src)
    + socket.inet_pton(socket.AF_INET6, dst)
    + struct.pack("!I", len(tcp))
    + b"\0\0\0\x06"
)
tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]

listen = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
if mode == "ext":
    # Next header TCP, length 0 (8 bytes), one PadN option filling them.
    out = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 60)
    payload = bytes([6, 0, 1, 4, 0, 0, 0, 0]) + tcp
else:
    out = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    payload = tcp
out.bind((src, 0))
out.sendto(payload, (dst, 0))

deadline = time.time() + 3
while time.time() < deadline:
    ready, _, _ = select.select([listen], [], [], max(0.0, deadline - time.time()))
    if not ready:
        break
    data, addr = listen.recvfrom(65535)
    if len(data) < 14:
        continue
    s, d = struct.unpack("!HH", data[:4])
    flags = data[13]
    if s == port and d == sport and flags & 0x12 == 0x12:
        print("synack", flush=True)
        sys.exit(0)
print("nothing", flush=True)
