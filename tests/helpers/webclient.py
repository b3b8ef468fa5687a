"""Client for the domain-rule tests, run inside a sandbox.

Usage: webclient.py STEP [STEP...], each STEP one argument of words separated by spaces;
prints one line per step, `<label> <outcome>`:

  curl LABEL ARGS...             run curl -sS ARGS ($VARS expanded); `exit=N <first line>`
  requests LABEL URL CAFILE      python requests GET (honours HTTP(S)_PROXY); `status=N <first
                                 line>` or the exception's name
  dns LABEL SERVER NAME TYPE     raw DNS query over UDP to SERVER:53; `RCODE addr,addr` or errno
  dnstcp LABEL SERVER NAME TYPE  the same over TCP
  resolve LABEL NAME             getaddrinfo (the system resolver); `ok addr,addr` or the error
  tcp LABEL ADDR PORT            connect and read a line; `ok <line>`, errno, `reset`, `closed`
  udp LABEL ADDR PORT            one datagram; `ok` or errno
  udpmark LABEL PORT SERVER      bind UDP PORT, send one DNS query to SERVER:53 (the agent
                                 marks the socket), then count for 1.5 s what arrives:
                                 `answers=N others=M`
  hello LABEL ADDR SNI|- [ech]   a hand-made TLS ClientHello to ADDR:443 (optionally with an
                                 Encrypted Client Hello extension); `reset`, `closed` or `data`
"""
import errno
import os
import random
import socket
import struct
import subprocess
import sys


def err(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def curl(args):
    args = [os.path.expandvars(a) for a in args]
    r = subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True)
    body = (r.stdout.strip().splitlines() or [""])[0]
    return f"exit={r.returncode} {body}".strip()


def requests_get(url, ca):
    try:
        import requests
        r = requests.get(url, verify=ca, timeout=10)
        body = (r.text.strip().splitlines() or [""])[0]
        return f"status={r.status_code} {body}".strip()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPES = {"A": 1, "AAAA": 28, "TXT": 16, "HTTPS": 65, "MX": 15}


def query(name, qtype):
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return qid, q + b"\0" + struct.pack(">HH", TYPES[qtype], 1)


def skip_name(msg, i):
    while True:
        n = msg[i]
        if n & 0xC0 == 0xC0:
            return i + 2
        if n == 0:
            return i + 1
        i += n + 1


def svc_keys(rdata):
    """The SvcParam keys of an HTTPS record, as `:key=N` (uncompressed target name)."""
    i = skip_name(rdata, 2)
    keys = []
    while i + 4 <= len(rdata):
        key, length = struct.unpack(">HH", rdata[i:i + 4])
        keys.append(f":key={key}")
        i += 4 + length
    return "".join(keys)


def parse(msg, qid):
    rid, flags, qd, an = struct.unpack(">HHHH", msg[:8])
    if rid != qid:
        return "BADID"
    i = 12
    for _ in range(qd):
        i = skip_name(msg, i) + 4
    addrs = []
    for _ in range(an):
        i = skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        rdata = msg[i:i + rdlen]
        i += rdlen
        if rtype == 1:
            addrs.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28:
            addrs.append(socket.inet_ntop(socket.AF_INET6, rdata))
        elif rtype == 16:
            addrs.append("txt")
        elif rtype == 65:
            addrs.append("https" + svc_keys(rdata))
    return f"{RCODES.get(flags & 0xF, flags & 0xF)} {','.join(addrs)}".strip()


def dns(server, name, qtype, tcp=False):
    qid, q = query(name, qtype)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    s = socket.socket(family(server), kind)
    s.settimeout(5)
    try:
        if tcp:
            s.connect((server, 53))
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", recv_exact(s, 2))[0]
            return parse(recv_exact(s, n), qid)
        s.sendto(q, (server, 53))
        msg, peer = s.recvfrom(65535)
        # Resolver libraries drop answers from another address than the one asked.
        if peer[0] != server or peer[1] != 53:
            return f"WRONGPEER {peer[0]}:{peer[1]}"
        return parse(msg, qid)
    except Exception as e:  # noqa: BLE001 - report whatever happened
        return err(e)
    finally:
        s.close()


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def resolve(name):
    try:
        infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
        return "ok " + ",".join(sorted({i[4][0] for i in infos}))
    except socket.gaierror as e:
        return f"gaierror {e.errno}"


def tcp(addr, port):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, int(port)))
        data = s.recv(4096)
        return "ok " + data.decode(errors="replace").strip() if data else "closed"
    except Exception as e:  # noqa: BLE001
        return err(e)
    finally:
        s.close()


def udp(addr, port):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    try:
        s.sendto(b"quic?", (addr, int(port)))
        return "ok"
    except Exception as e:  # noqa: BLE001
        return err(e)
    finally:
        s.close()


def ext(kind, data):
    return struct.pack(">HH", kind, len(data)) + data


def client_hello(sni, ech):
    exts = b""
    if sni != "-":
        name = sni.encode()
        entry = b"\0" + struct.pack(">H", len(name)) + name
        exts += ext(0, struct.pack(">H", len(entry)) + entry)
    exts += ext(43, b"\x02\x03\x04")  # supported_versions: TLS 1.3
    exts += ext(10, b"\x00\x02\x00\x1d")  # supported_groups: x25519
    if ech:
        exts += ext(0xFE0D, b"\x00\x00\x01\x00\x01\x07\x00\x20" + os.urandom(32) + b"\x00\x10" + os.urandom(16))
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack(">H", len(exts)) + exts
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def hello(addr, sni, ech=False):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, 443))
        s.sendall(client_hello(sni, ech))
        data = s.recv(4096)
        return "data" if data else "closed"
    except Exception as e:  # noqa: BLE001
        return err(e)
    finally:
        s.close()


def udpmark(port, server):
    import time
    s = socket.socket(family(server), socket.SOCK_DGRAM)
    s.bind(("0.0.0.0" if family(server) == socket.AF_INET else "::", int(port)))
    s.settimeout(0.1)
    _qid, q = query("allowed.test", "A")
    try:
        s.sendto(q, (server, 53))
    except OSError as e:
        return err(e)
    answers = others = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        try:
            _data, peer = s.recvfrom(65535)
        except socket.timeout:
            continue
        if peer[0] == server and peer[1] == 53:
            answers += 1
        else:
            others += 1
    s.close()
    return f"answers={answers} others={others}"


def step(words):
    cmd, label, rest = words[0], words[1], words[2:]
    if cmd == "curl":
        out = curl(rest)
    elif cmd == "requests":
        out = requests_get(rest[0], rest[1])
    elif cmd == "dns":
        out = dns(rest[0], rest[1], rest[2])
    elif cmd == "dnstcp":
        out = dns(rest[0], rest[1], rest[2], tcp=True)
    elif cmd == "resolve":
        out = resolve(rest[0])
    elif cmd == "tcp":
        out = tcp(rest[0], rest[1])
    elif cmd == "udp":
        out = udp(rest[0], rest[1])
    elif cmd == "udpmark":
        out = udpmark(rest[0], rest[1])
    elif cmd == "hello":
        out = hello(rest[0], rest[1], ech=len(rest) > 2 and rest[2] == "ech")
    else:
        out = f"unknown step {cmd}"
    print(f"{label} {out}", flush=True)


def main():
    for arg in sys.argv[1:]:
        step(arg.split(" "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
