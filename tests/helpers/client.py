"""Network client run inside a sandbox by the end-to-end tests.

Usage: client.py COMMAND ARGS...; prints one line per target: `<target> ok` or
`<target> <ERRNO name>` (e.g. EPERM), so a test can tell a kernel refusal (EPERM at once)
from a timeout or a refused connection.

  tcp PORT ADDR...        connect, send an HTTP request, read the answer
  udp PORT MSG ADDR...    one datagram to each address
  udp1 PORT MSG ADDR...   datagrams to each address in turn from one socket
  rawudp PORT MSG ADDR... one UDP datagram built by hand on a raw IPv4 socket (needs NET_RAW)
  packet                  try to open an AF_PACKET socket
"""
import errno
import os
import socket
import struct
import sys


def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else type(e).__name__


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp(port, addrs):
    for a in addrs:
        s = socket.socket(family(a), socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((a, port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = s.recv(4096)
            print(f"{a} ok" if b"200 OK" in data else f"{a} BADREPLY")
        except Exception as e:  # noqa: BLE001 - report whatever happened
            print(f"{a} {name(e)}")
        finally:
            s.close()


def udp(port, msg, addrs):
    for a in addrs:
        s = socket.socket(family(a), socket.SOCK_DGRAM)
        try:
            s.sendto(msg.encode(), (a, port))
            print(f"{a} ok")
        except Exception as e:  # noqa: BLE001
            print(f"{a} {name(e)}")
        finally:
            s.close()


def udp_one_socket(port, msg, addrs):
    """Like udp, but every datagram from one socket: its cached verdict must follow the peer."""
    s = socket.socket(family(addrs[0]), socket.SOCK_DGRAM)
    for i, a in enumerate(addrs):
        try:
            s.sendto(f"{msg}-{i}".encode(), (a, port))
            print(f"{a}#{i} ok")
        except Exception as e:  # noqa: BLE001
            print(f"{a}#{i} {name(e)}")
    s.close()


def rawudp(port, msg, addrs):
    # One raw socket for all addresses: raw sends pass no sendmsg hook, so this also checks
    # that the kernel's per-socket verdict cache follows the peer of each packet. The kernel
    # writes the IP header (IPPROTO_RAW and IP_HDRINCL, which would let the workload write
    # its own source address, are refused by seccomp); the payload is a UDP header and data.
    payload = msg.encode()
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except Exception as e:  # noqa: BLE001
        for a in addrs:
            print(f"{a} {name(e)}")
        return
    for a in addrs:
        # Checksum 0: none, which UDP over IPv4 allows.
        udp_header = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0)
        try:
            s.sendto(udp_header + payload, (a, 0))
            print(f"{a} ok")
        except Exception as e:  # noqa: BLE001
            print(f"{a} {name(e)}")
    s.close()


def packet():
    # AF_PACKET, the old SOCK_PACKET type under AF_INET (also a packet socket), and io_uring
    # (which can create sockets without the socket syscall).
    for label, make in [
        ("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))),
        ("sockpacket", lambda: socket.socket(socket.AF_INET, 10, socket.htons(3))),
    ]:
        try:
            make().close()
            print(f"{label} ok")
        except Exception as e:  # noqa: BLE001
            print(f"{label} {name(e)}")
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 8, params)  # io_uring_setup(8 entries, params)
    if fd >= 0:
        os.close(fd)
        print("io_uring ok")
    else:
        print(f"io_uring {errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())}")


def main():
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "tcp":
        tcp(int(rest[0]), rest[1:])
    elif cmd == "udp":
        udp(int(rest[0]), rest[1], rest[2:])
    elif cmd == "udp1":
        udp_one_socket(int(rest[0]), rest[1], rest[2:])
    elif cmd == "rawudp":
        rawudp(int(rest[0]), rest[1], rest[2:])
    elif cmd == "packet":
        packet()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
