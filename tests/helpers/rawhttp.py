"""Workloads for the gateway attacks: HTTP/1.1 servers that show exactly what arrived.

  rawhttp.py echo PORT
      Answers every request with the request's raw bytes as received (head, chunked body and
      trailer section included), one request per connection.
  rawhttp.py hold PORT NAME
      Serves NAME on keep-alive connections. After its first answer it closes its listening
      socket but keeps serving the connection it has; prints `port P` (the loopback port it
      really got), `listener closed`, and `upstream closed` when that connection ends.
  rawhttp.py grab PORT P NAME
      Narrows IP_LOCAL_PORT_RANGE to P, so that its (steered) bind of PORT lands on loopback
      port P, then serves NAME on keep-alive connections; prints `port P`.

Every server stops after 120 s (bounded).
"""
import socket
import struct
import sys
import threading
import time

IP_LOCAL_PORT_RANGE = 51
LIFETIME = 120


def say(line):
    print(line, flush=True)


def read_request(conn):
    """The raw bytes of one request (b"" at EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = [l.lower() for l in head.split(b"\r\n")[1:]]
    chunked = any(l.startswith(b"transfer-encoding:") and b"chunked" in l for l in lines)
    length = 0
    for l in lines:
        if l.startswith(b"content-length:"):
            length = int(l.split(b":", 1)[1])
    if chunked:
        rest = read_chunked(conn, rest)
    else:
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
    return head + b"\r\n\r\n" + rest


def read_chunked(conn, rest):
    """Reads chunks until the last one and its trailer section; returns them as received."""
    pos = 0

    def need(n):
        nonlocal rest
        while len(rest) < n:
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError
            rest += chunk

    try:
        while True:
            while b"\r\n" not in rest[pos:]:
                need(len(rest) + 1)
            eol = rest.index(b"\r\n", pos)
            size = int(rest[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                # Trailer fields, then an empty line.
                while True:
                    while b"\r\n" not in rest[pos:]:
                        need(len(rest) + 1)
                    eol = rest.index(b"\r\n", pos)
                    line, pos = rest[pos:eol], eol + 2
                    if not line:
                        return rest
            need(pos + size + 2)
            pos += size + 2
    except EOFError:
        return rest


def answer(conn, body, close):
    extra = b"Connection: close\r\n" if close else b""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def listen(port, only=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if only is not None:
        s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", only | (only << 16)))
    s.bind(("0.0.0.0", port))
    s.listen(16)
    say("port %d" % s.getsockname()[1])
    return s


def keep_alive(conn, name, after_first=None):
    first = True
    while True:
        req = read_request(conn)
        if not req:
            return
        answer(conn, name.encode(), close=False)
        if first and after_first:
            after_first()
        first = False


def main():
    threading.Timer(LIFETIME, lambda: __import__("os")._exit(0)).start()
    mode = sys.argv[1]
    port = int(sys.argv[2])
    if mode == "echo":
        s = listen(port)
        while True:
            conn, _ = s.accept()
            req = read_request(conn)
            answer(conn, req, close=True)
            conn.close()
    elif mode == "hold":
        name = sys.argv[3]
        s = listen(port)
        conn, _ = s.accept()

        def close_listener():
            s.close()
            say("listener closed")

        keep_alive(conn, name, close_listener)
        say("upstream closed")
        time.sleep(LIFETIME)
    elif mode == "grab":
        only, name = int(sys.argv[3]), sys.argv[4]
        s = listen(port, only)
        while True:
            conn, _ = s.accept()
            threading.Thread(target=keep_alive, args=(conn, name), daemon=True).start()


main()
