"""Test server for sandbox-agent's end-to-end tests, run inside a test network namespace.

Listens on every given address for TCP and UDP on one port and appends one line per event to
the log: `tcp <local address>` for each accepted connection, `udp <local address> <payload>`
for each datagram. Binding each address separately tells which destination a client reached.
Answers TCP with a minimal HTTP response. With --hold-port, also accepts long-lived TCP
connections on that port (`hold <local address>`) and logs every line they carry
(`data <local address> <line>`), so a test can see when a connection stops delivering.
Exits after --lifetime seconds (bounded).
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
    p.add_argument("--hold-port", type=int)
    p.add_argument("addresses", nargs="+")
    args = p.parse_args()
    log = open(args.log, "a", buffering=1)
    sel = selectors.DefaultSelector()
    for addr in args.addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, args.port))
        t.listen(64)
        t.setblocking(False)
        sel.register(t, selectors.EVENT_READ, ("tcp", addr))
        u = socket.socket(family, socket.SOCK_DGRAM)
        u.bind((addr, args.port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, ("udp", addr))
        if args.hold_port:
            h = socket.socket(family, socket.SOCK_STREAM)
            h.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            h.bind((addr, args.hold_port))
            h.listen(64)
            h.setblocking(False)
            sel.register(h, selectors.EVENT_READ, ("hold", addr))
    pending = {}
    log.write("ready\n")
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            kind, addr = key.data
            s = key.fileobj
            if kind == "hold":
                try:
                    conn, _peer = s.accept()
                except OSError:
                    continue
                log.write(f"hold {addr}\n")
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, ("held", addr))
                pending[conn] = b""
                continue
            if kind == "held":
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    pending.pop(s, None)
                    s.close()
                    continue
                buf = pending.get(s, b"") + data
                *lines, rest = buf.split(b"\n")
                pending[s] = rest
                for line in lines:
                    log.write(f"data {addr} {line.decode(errors='replace').strip()}\n")
                continue
            if kind == "udp":
                try:
                    data, _peer = s.recvfrom(65535)
                except OSError:
                    continue
                log.write(f"udp {addr} {data.decode(errors='replace').strip()}\n")
                continue
            try:
                conn, _peer = s.accept()
            except OSError:
                continue
            log.write(f"tcp {addr}\n")
            conn.settimeout(1)
            try:
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                body = f"hello from {addr}\n".encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            except OSError:
                pass
            finally:
                conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
