"""An upstream DNS server whose answers are floods, and a listener on every flood address.

  flooddns.py --dns ADDR --prefix P --log FILE [--per-answer N]

Run in a test namespace where `P1:0/112` is routed to `lo` as local (any address of it is
the namespace's own). Over UDP and TCP on ADDR:53 it answers

  qK.flood.test AAAA   N addresses P1:K00 ... (K = 0..255, N at most 255), TTL 3600
  ok.test AAAA         P1:ff00
  anything else        NXDOMAIN

(UDP answers of more than one address come truncated, as a real server's would past the
agent's 1232 bytes, so the agent asks again over TCP.) On [::]:9300 it accepts TCP, logs
`tcp <local addr>` and says `hi`. Exits after 300 s (bounded).
"""
import argparse
import os
import socket
import struct
import threading

LOCK = threading.Lock()


def log(path, line):
    with LOCK, open(path, "a") as f:
        f.write(line + "\n")


def parse_question(msg):
    pos, labels = 12, []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1 : pos + 1 + n].decode().lower())
        pos += 1 + n
    qtype, qclass = struct.unpack("!HH", msg[pos + 1 : pos + 5])
    return ".".join(labels), qtype, msg[12 : pos + 5]


def addresses(prefix, name, per_answer):
    if name == "ok.test":
        return [prefix + "1:ff00"]
    first = name.split(".")[0]
    if name.endswith(".flood.test") and first.startswith("q") and first[1:].isdigit():
        k = int(first[1:]) % 256
        return ["%s1:%x%02x" % (prefix, k, i) for i in range(per_answer)]
    return None


def answer(msg, prefix, per_answer, udp):
    qid = msg[:2]
    name, qtype, question = parse_question(msg)
    addrs = addresses(prefix, name, per_answer) if qtype == 28 else None
    if addrs is None:
        return qid + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
    if udp and len(addrs) > 1:
        return qid + struct.pack("!HHHHH", 0x8380, 1, 0, 0, 0) + question
    out = qid + struct.pack("!HHHHH", 0x8180, 1, len(addrs), 0, 0) + question
    for a in addrs:
        out += struct.pack("!HHHIH", 0xC00C, 28, 1, 3600, 16) + socket.inet_pton(socket.AF_INET6, a)
    return out


def serve_udp(s, prefix, per_answer):
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            s.sendto(answer(msg, prefix, per_answer, True), peer)
        except Exception:  # noqa: BLE001
            pass


def serve_tcp_client(c, prefix, per_answer):
    with c:
        while True:
            head = c.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                return
            msg = c.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
            reply = answer(msg, prefix, per_answer, False)
            c.sendall(struct.pack("!H", len(reply)) + reply)


def serve_tcp(s, prefix, per_answer):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_tcp_client, args=(c, prefix, per_answer), daemon=True).start()


def serve_listener(s, path):
    while True:
        c, _ = s.accept()
        log(path, "tcp " + c.getsockname()[0])
        try:
            c.sendall(b"hi\n")
        finally:
            c.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dns", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--per-answer", type=int, default=100)
    a = p.parse_args()
    threading.Timer(300, lambda: os._exit(0)).start()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind((a.dns, 53))
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((a.dns, 53))
    tcp.listen(64)
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", 9300))
    listener.listen(64)
    for target, args in [
        (serve_udp, (udp, a.prefix, a.per_answer)),
        (serve_tcp, (tcp, a.prefix, a.per_answer)),
        (serve_listener, (listener, a.log)),
    ]:
        threading.Thread(target=target, args=args, daemon=True).start()
    log(a.log, "ready")
    threading.Event().wait()


main()
