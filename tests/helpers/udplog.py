"""UDP listener for tests/tests/adversarial.rs, run inside a test network namespace.

Binds every given address (`0.0.0.0` and `::` for the wildcards, which also receive
broadcast and multicast) on one port and appends `udp <bound address> <source address>
<payload>` to the log for each datagram, so a test can tell which source a datagram carried.
Writes `ready` once bound; exits after --lifetime seconds (bounded).
"""
import argparse
import selectors
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lifetime", type=float, default=300)
    p.add_argument("addresses", nargs="+")
    args = p.parse_args()
    log = open(args.log, "a", buffering=1)
    sel = selectors.DefaultSelector()
    for addr in args.addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        u = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        u.bind((addr, args.port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, addr)
    log.write("ready\n")
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                data, peer = key.fileobj.recvfrom(65535)
            except OSError:
                continue
            log.write(f"udp {key.data} {peer[0]} {data.decode(errors='replace').strip()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
