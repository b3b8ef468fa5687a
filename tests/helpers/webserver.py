"""A fake internet host for the domain-rule tests, run inside a test network namespace.

On every --web address it serves HTTPS on 443 (one certificate for all test names, signed by
the tests' CA), HTTP on 80, plain TCP on 2222, and logs UDP on 443 (QUIC). On every --rogue-dns
address it logs DNS queries on port 53 (UDP and TCP) without answering them: a resolver the
sandbox must never reach. One line per event in the log:

  tls <local addr> <sni or -> <host header or ->
  http <local addr> <host header or ->
  tcp <local addr> 2222
  udp <local addr> 443
  dns <local addr> udp|tcp
  proxy http|socks <target host:port>

With --upstream-proxy ADDR it also runs a forward proxy on ADDR:3128 speaking HTTP CONNECT and
SOCKS5 (no authentication), resolving names with the --host NAME=ADDR table only: an
operator's proxy that the agent may chain through.

Replies name the local address and the name asked for, so a client can tell which server it
reached. Exits after --lifetime seconds (bounded).
"""
import argparse
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time

LOCK = threading.Lock()
LOG = None


def log(line):
    with LOCK:
        LOG.write(line + "\n")
        LOG.flush()


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def read_head(conn):
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    host = "-"
    for line in buf.split(b"\r\n")[1:]:
        if line.lower().startswith(b"host:"):
            host = line[5:].strip().decode(errors="replace")
    return host


def answer(conn, text):
    body = (text + "\n").encode()
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def make_tcp_server(addr, port, handler):
    class Server(socketserver.ThreadingTCPServer):
        address_family = family(addr)
        allow_reuse_address = True
        daemon_threads = True

    return Server((addr, port), handler)


def web(addr, ctx):
    class Tls(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(5)
            sni = {"name": "-"}

            def on_sni(_sock, name, _ctx):
                sni["name"] = name or "-"

            local = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            local.load_cert_chain(ctx["cert"], ctx["key"])
            local.sni_callback = on_sni
            try:
                conn = local.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                log(f"tls {addr} {sni['name']} handshake-failed")
                return
            host = read_head(conn)
            log(f"tls {addr} {sni['name']} {host}")
            answer(conn, f"hello from {addr} sni={sni['name']} host={host}")
            conn.close()

    class Http(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.settimeout(5)
            host = read_head(self.request)
            log(f"http {addr} {host}")
            answer(self.request, f"hello from {addr} host={host}")

    class Plain(socketserver.BaseRequestHandler):
        def handle(self):
            log(f"tcp {addr} 2222")
            self.request.sendall(f"hello from {addr} port 2222\n".encode())

    servers = [
        make_tcp_server(addr, 443, Tls),
        make_tcp_server(addr, 80, Http),
        make_tcp_server(addr, 2222, Plain),
    ]
    udp = socket.socket(family(addr), socket.SOCK_DGRAM)
    udp.bind((addr, 443))

    def quic():
        while True:
            udp.recvfrom(65535)
            log(f"udp {addr} 443")

    return servers, [quic]


def rogue_dns(addr):
    class Tcp(socketserver.BaseRequestHandler):
        def handle(self):
            log(f"dns {addr} tcp")

    servers = [make_tcp_server(addr, 53, Tcp)]
    udp = socket.socket(family(addr), socket.SOCK_DGRAM)
    udp.bind((addr, 53))

    def serve():
        while True:
            udp.recvfrom(65535)
            log(f"dns {addr} udp")

    return servers, [serve]


def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def tunnel(client, host, port, hosts):
    addr = hosts.get(host, host)
    upstream = socket.create_connection((addr, port), timeout=5)
    upstream.settimeout(None)
    client.settimeout(None)
    t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
    t.start()
    pipe(client, upstream)
    t.join(10)
    upstream.close()


def upstream_proxy(addr, hosts):
    class Proxy(socketserver.BaseRequestHandler):
        def handle(self):
            c = self.request
            c.settimeout(5)
            first = c.recv(1, socket.MSG_PEEK)
            if first == b"\x05":
                c.recv(2 + c.recv(2, socket.MSG_PEEK)[1])
                c.sendall(b"\x05\x00")
                head = c.recv(4)
                if head[3] == 3:
                    n = c.recv(1)[0]
                    host = c.recv(n).decode()
                elif head[3] == 1:
                    host = socket.inet_ntop(socket.AF_INET, c.recv(4))
                else:
                    host = socket.inet_ntop(socket.AF_INET6, c.recv(16))
                port = struct.unpack(">H", c.recv(2))[0]
                log(f"proxy socks {host}:{port}")
                c.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
            else:
                buf = b""
                while b"\r\n\r\n" not in buf and len(buf) < 16384:
                    chunk = c.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                target = buf.split(b" ")[1].decode()
                host, port = target.rsplit(":", 1)
                host, port = host.strip("[]"), int(port)
                log(f"proxy http {target}")
                c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tunnel(c, host, port, hosts)

    return [make_tcp_server(addr, 3128, Proxy)], []


def main():
    global LOG
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--lifetime", type=float, default=300)
    p.add_argument("--web", action="append", default=[])
    p.add_argument("--rogue-dns", action="append", default=[])
    p.add_argument("--upstream-proxy", action="append", default=[])
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--spam", help="SRC>DST:PORT: send a datagram from SRC to DST:PORT every 20 ms")
    args = p.parse_args()
    LOG = open(args.log, "a", buffering=1)
    ctx = {"cert": args.cert, "key": args.key}
    servers, loops = [], []
    for a in args.web:
        s, l = web(a, ctx)
        servers += s
        loops += l
    hosts = dict(h.split("=", 1) for h in args.host)
    for a in args.upstream_proxy:
        s, l = upstream_proxy(a, hosts)
        servers += s
        loops += l
    for a in args.rogue_dns:
        s, l = rogue_dns(a)
        servers += s
        loops += l
    if args.spam:
        src, dst = args.spam.split(">")
        host, port = dst.rsplit(":", 1)

        def spam():
            u = socket.socket(family(src), socket.SOCK_DGRAM)
            u.bind((src, 0))
            while True:
                try:
                    u.sendto(b"spam", (host, int(port)))
                except OSError:
                    pass
                time.sleep(0.02)

        loops.append(spam)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    for l in loops:
        threading.Thread(target=l, daemon=True).start()
    log("ready")
    time.sleep(args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
