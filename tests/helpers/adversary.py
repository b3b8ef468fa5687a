"""Attacks run inside a sandbox by tests/tests/adversarial.rs.

Usage: adversary.py COMMAND ARGS...; prints one line per attempt, `<label> ok` or
`<label> <ERRNO name>` (plus a few `<label> <value>` facts), like client.py. The test judges
by what arrived outside (its own listeners, the test namespace's logs), these lines only say
what the kernel answered.

  bindtrick ADDR PORT TARGET  TCP bind(ADDR, 0) with IP_LOCAL_PORT_RANGE narrowed to PORT,
                              then connect(TARGET, PORT) from another socket
  namespaces                  unshare/clone/clone3 with CLONE_NEWUSER (and CLONE_NEWNET)
  hold ADDR PORT              connect to ADDR:PORT, send `from-B`, print what another sandbox
                              needs to attack this process, wait for stdin to close
  cross PID FD ADDR LEN SECRET  attack the `hold` process PID from another sandbox
  tty                         TIOCSTI/TIOCLINUX on stdin (the terminal the sandbox was given)
  families                    socket() of every family of interest
  sockopts                    setsockopt of source-forging and source-routing options, IPPROTO_RAW sockets
  forge PORT TAG DST6 SRC6 DST4 SRC4  datagrams to DST:PORT with forged sources SRC
  unix ADDR                   connect a unix stream socket (`@name`: abstract)
  rawicmp ADDR...             ICMP echo request from a raw socket (needs NET_RAW)
  tfo PORT ADDR...            TCP Fast Open (MSG_FASTOPEN, TCP_FASTOPEN_CONNECT)
  reconnect PORT TAG A B      connect A, connect(AF_UNSPEC), connect B (TCP and UDP)
  mcast PORT TAG IFNAME HOST4 UNICAST4 BCAST4  broadcast and multicast into the test network
  cgroup MOUNT                write own pid to the parent and root cgroup.procs
"""
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def name(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def err():
    e = ctypes.get_errno()
    return errno.errorcode.get(e, str(e))


def t(f):
    try:
        f()
        return "ok"
    except Exception as e:  # noqa: BLE001 - report whatever happened
        return name(e)


def say(label, outcome):
    print(f"{label} {outcome}", flush=True)


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def bindtrick(addr, port, target):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    # IP_LOCAL_PORT_RANGE (SOL_IP, 51): the kernel picks the port of a port-0 bind from it.
    say("range", t(lambda: s.setsockopt(0, 51, struct.pack("I", (port << 16) | port))))
    try:
        s.bind((addr, 0))
        say("bound", s.getsockname()[1])
    except OSError as e:
        say("bound", name(e))
    c = socket.socket(family(target), socket.SOCK_STREAM)
    c.settimeout(5)
    say("connect", t(lambda: c.connect((target, port))))
    c.close()
    s.close()


CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def namespaces():
    for label, flags in [
        ("unshare-user-net", CLONE_NEWUSER | CLONE_NEWNET),
        ("unshare-user", CLONE_NEWUSER),
        ("unshare-net", CLONE_NEWNET),
    ]:
        # Each in a child of its own, so that one that succeeds does not change the next.
        pid = os.fork()
        if pid == 0:
            os._exit(0 if libc.unshare(flags) == 0 else ctypes.get_errno())
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        say(label, "ok" if code == 0 else errno.errorcode.get(code, str(code)))
    # Raw clone (fork semantics): the child leaves at once.
    pid = libc.syscall(56, CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        say("clone-user", "ok")
    else:
        say("clone-user", err())
    # clone3: struct clone_args, flags and exit_signal set, the rest zero.
    args = struct.pack("11Q", CLONE_NEWUSER | CLONE_NEWNET, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, 0)
    buf = ctypes.create_string_buffer(args, len(args))
    pid = libc.syscall(435, buf, len(args))
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        say("clone3-user", "ok")
    else:
        say("clone3-user", err())


def hold(addr, port):
    s = socket.create_connection((addr, port), timeout=5)
    s.sendall(b"from-B\n")
    secret = os.environ.get("SA_SECRET", "").encode()
    buf = ctypes.create_string_buffer(secret, len(secret))
    say("hold", f"{os.getpid()} {s.fileno()} {ctypes.addressof(buf)} {len(secret)}")
    # Bounded: the test closes stdin when it is done (or after a minute, whatever happens).
    select.select([sys.stdin], [], [], 60)
    s.sendall(b"B-done\n")
    s.close()
    say("held", "ok")


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def cross(pid, fd, addr, length, secret):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
        say("environ", "LEAK" if secret.encode() in data else "read-without-secret")
    except OSError as e:
        say("environ", name(e))
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        say("pidfd_open", err())
        say("pidfd_getfd", "no-pidfd")
    else:
        say("pidfd_open", "ok")
        got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if got < 0:
            say("pidfd_getfd", err())
        else:
            stolen = socket.socket(fileno=got)
            say("pidfd_getfd", "ok")
            say("send-through-B", t(lambda: stolen.sendall(b"from-A\n")))
    local = ctypes.create_string_buffer(length)
    liov = Iovec(ctypes.cast(local, ctypes.c_void_p), length)
    riov = Iovec(addr, length)
    n = libc.syscall(310, pid, ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
    if n < 0:
        say("process_vm_readv", err())
    else:
        say("process_vm_readv", "LEAK" if local.raw == secret.encode() else f"read-{n}")
    PTRACE_SEIZE = 0x4206
    r = libc.syscall(101, PTRACE_SEIZE, pid, 0, 0)
    say("ptrace", "ok" if r == 0 else err())
    say("kill", t(lambda: os.kill(pid, signal.SIGKILL)))


TIOCSTI = 0x5412
TIOCLINUX = 0x541C


def tty():
    # The injected byte is one no other line prints: the test looks for it on the master.
    say("isatty", "yes" if os.isatty(0) else "no")
    ch = ctypes.c_char(b"~")
    r = libc.ioctl(0, TIOCSTI, ctypes.byref(ch))
    say("tiocsti", "ok" if r == 0 else err())
    # The command is an unsigned int in the kernel: the upper half of a 64-bit one is dropped.
    r = libc.syscall(16, 0, 0x1_0000_0000 | TIOCSTI, ctypes.byref(ch))
    say("tiocsti64", "ok" if r == 0 else err())
    # TIOCLINUX subcode 6 (TIOCL_GETSHIFTSTATE) only reads; any subcode must be refused.
    sub = ctypes.create_string_buffer(b"\x06", 8)
    r = libc.ioctl(0, TIOCLINUX, sub)
    say("tioclinux", "ok" if r == 0 else err())
    # The operator's terminal as the controlling terminal: opening /dev/tty says whether the
    # process has one; TIOCSCTTY tries to take this one (stealing needs CAP_SYS_ADMIN).
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        say("ctty", "yes")
    except OSError as e:
        say("ctty", name(e))
    TIOCSCTTY = 0x540E
    r = libc.ioctl(0, TIOCSCTTY, 0)
    say("tiocsctty", "ok" if r == 0 else err())


def families():
    cases = [
        ("xdp", 44, socket.SOCK_RAW, 0),
        ("packet", 17, socket.SOCK_RAW, socket.htons(3)),
        ("packet-dgram", 17, socket.SOCK_DGRAM, socket.htons(3)),
        ("sockpacket", socket.AF_INET, 10, socket.htons(3)),
        ("netlink-netfilter", 16, socket.SOCK_RAW, 12),
        ("netlink-sock-diag", 16, socket.SOCK_RAW, 4),
        ("netlink-audit", 16, socket.SOCK_RAW, 9),
        ("netlink-generic", 16, socket.SOCK_DGRAM, 16),
        ("bluetooth", 31, socket.SOCK_RAW, 1),
        ("vsock", 40, socket.SOCK_STREAM, 0),
        ("alg", 38, socket.SOCK_SEQPACKET, 0),
        ("key", 15, socket.SOCK_RAW, 2),
        ("can", 29, socket.SOCK_RAW, 1),
        ("tipc", 30, socket.SOCK_RDM, 0),
        ("rds", 21, socket.SOCK_SEQPACKET, 0),
        ("smc", 43, socket.SOCK_STREAM, 0),
        ("qipcrtr", 42, socket.SOCK_DGRAM, 0),
        ("mctp", 45, socket.SOCK_DGRAM, 0),
        # The ones a workload needs.
        ("unix-stream", socket.AF_UNIX, socket.SOCK_STREAM, 0),
        ("unix-dgram", socket.AF_UNIX, socket.SOCK_DGRAM, 0),
        ("inet-tcp", socket.AF_INET, socket.SOCK_STREAM, 0),
        ("inet-udp", socket.AF_INET, socket.SOCK_DGRAM, 0),
        ("inet6-tcp", socket.AF_INET6, socket.SOCK_STREAM, 0),
        ("inet6-udp", socket.AF_INET6, socket.SOCK_DGRAM, 0),
        ("raw-icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ]
    for label, fam, kind, proto in cases:
        fd = libc.syscall(41, fam, kind, proto)  # raw socket(): python knows not every family
        if fd >= 0:
            os.close(fd)
            say(label, "ok")
        else:
            say(label, err())
    # NETLINK_ROUTE works, bound and queried (what `ip addr` and getaddrinfo use).
    def route():
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        s.bind((0, 0))
        s.close()
    say("netlink-route", t(route))
    say("socketpair-unix", t(lambda: [x.close() for x in socket.socketpair()]))


def sockopts():
    def opt(label, fam, kind, proto, level, optname):
        try:
            s = socket.socket(fam, kind, proto)
        except OSError as e:
            say(label, "socket-" + name(e))
            return
        say(label, t(lambda: s.setsockopt(level, optname, 1)))
        s.close()
    v4, v6 = socket.AF_INET, socket.AF_INET6
    udp, raw = socket.SOCK_DGRAM, socket.SOCK_RAW
    opt("ipv6_freebind", v6, udp, 0, 41, 78)
    opt("ipv6_transparent", v6, udp, 0, 41, 75)
    opt("ip_freebind", v4, udp, 0, 0, 15)
    opt("ip_freebind-tcp", v4, socket.SOCK_STREAM, 0, 0, 15)
    opt("ip_freebind-on-v6", v6, udp, 0, 0, 15)
    opt("ip_transparent", v4, udp, 0, 0, 19)
    opt("ip_hdrincl", v4, raw, socket.IPPROTO_ICMP, 0, 3)
    opt("ipv6_hdrincl", v6, raw, socket.IPPROTO_ICMPV6, 41, 36)
    opt("so_reuseaddr", v4, udp, 0, socket.SOL_SOCKET, socket.SO_REUSEADDR)
    opt("ipv6_v6only", v6, udp, 0, 41, 26)
    # Source routes, well formed (without the filter the kernel takes them): an IPv4 loose
    # source route via 192.0.2.1, and an IPv6 segment routing header with two segments.
    lsrr = bytes([0x83, 7, 4]) + socket.inet_aton("192.0.2.1") + bytes([1])
    srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + socket.inet_pton(v6, "2001:db8::1") + socket.inet_pton(v6, "2001:db8::2")
    for label, fam, level, optname, value in [
        ("ip_options-lsrr", v4, 0, 4, lsrr),
        ("ipv6_rthdr-srh", v6, 41, 57, srh),
        ("ipv6_2292rthdr", v6, 41, 5, srh),
        ("ipv6_2292pktoptions", v6, 41, 6, b""),
    ]:
        s = socket.socket(fam, udp)
        say(label, t(lambda: s.setsockopt(level, optname, value)))
        s.close()
    say("raw4-ipproto-raw", t(lambda: socket.socket(v4, raw, 255).close()))
    say("raw6-ipproto-raw", t(lambda: socket.socket(v6, raw, 255).close()))


def forge(port, tag, dst6, src6, dst4, src4):
    # The plain datagram arrives with the host's source: the listener works.
    for label, dst in [("plain6", dst6), ("plain4", dst4)]:
        s = socket.socket(family(dst), socket.SOCK_DGRAM)
        say(label, t(lambda: s.sendto(f"plain-{tag}".encode(), (dst, port))))
        s.close()
    for label, fam, level, opt, src, dst in [
        ("freebind6", socket.AF_INET6, 41, 78, src6, dst6),
        ("transparent6", socket.AF_INET6, 41, 75, src6, dst6),
        ("freebind4", socket.AF_INET, 0, 15, src4, dst4),
        ("transparent4", socket.AF_INET, 0, 19, src4, dst4),
    ]:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        say(f"{label}-opt", t(lambda: s.setsockopt(level, opt, 1)))
        say(f"{label}-bind", t(lambda: s.bind((src, 0))))
        say(f"{label}-send", t(lambda: s.sendto(f"forged-{tag}-{label}".encode(), (dst, port))))
        s.close()
    # IPV6_PKTINFO names the source per datagram.
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    info = socket.inet_pton(socket.AF_INET6, src6) + struct.pack("I", 0)
    say("pktinfo6-send", t(lambda: s.sendmsg([f"forged-{tag}-pktinfo6".encode()],
                                            [(41, 50, info)], 0, (dst6, port))))
    s.close()
    # A hand-built IPv4 header (IPPROTO_RAW implies IP_HDRINCL; needs NET_RAW).
    def packet(label):
        payload = f"forged-{tag}-{label}".encode()
        udp_header = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0)
        ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64,
                                socket.IPPROTO_UDP, 0, socket.inet_aton(src4),
                                socket.inet_aton(dst4))
        return ip_header + udp_header + payload

    def raw(proto, hdrincl, label):
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
        try:
            if hdrincl:
                r.setsockopt(0, 3, 1)
            r.sendto(packet(label), (dst4, 0))
        finally:
            r.close()
    say("raw4-send", t(lambda: raw(255, False, "raw4")))
    say("hdrincl4-send", t(lambda: raw(socket.IPPROTO_UDP, True, "hdrincl4")))


def unix(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    target = "\0" + addr[1:] if addr.startswith("@") else addr
    say("unix-connect", t(lambda: s.connect(target)))
    say("unix-send", t(lambda: s.sendall(b"from-sandbox\n")))
    s.close()


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def rawicmp(addrs):
    for a in addrs:
        try:
            if ":" in a:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                msg = struct.pack("!BBHHH", 128, 0, 0, 0x5341, 1) + b"raw-icmp"  # kernel sums
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                body = struct.pack("!BBHHH", 8, 0, 0, 0x5341, 1) + b"raw-icmp"
                msg = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
            s.sendto(msg, (a, 0))
            say(a, "ok")
            s.close()
        except Exception as e:  # noqa: BLE001
            say(a, name(e))


def tfo(port, addrs):
    request = b"GET / HTTP/1.0\r\n\r\n"
    MSG_FASTOPEN = 0x20000000
    for a in addrs:
        # Blocking (a python timeout makes the socket non-blocking, and a fast-open sendto
        # then returns EINPROGRESS), bounded by SO_SNDTIMEO/SO_RCVTIMEO instead.
        s = socket.socket(family(a), socket.SOCK_STREAM)
        five = struct.pack("ll", 5, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, five)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, five)

        def sendto():
            s.sendto(request, MSG_FASTOPEN, (a, port))
            if b"200 OK" not in s.recv(4096):
                raise RuntimeError("no answer")
        say(f"fastopen {a}", t(sendto))
        s.close()
        s = socket.socket(family(a), socket.SOCK_STREAM)
        s.settimeout(5)

        def connect():
            s.setsockopt(socket.IPPROTO_TCP, 30, 1)  # TCP_FASTOPEN_CONNECT
            s.connect((a, port))
            s.sendall(request)
            if b"200 OK" not in s.recv(4096):
                raise RuntimeError("no answer")
        say(f"fastopen-connect {a}", t(connect))
        s.close()


def unspec(s):
    sa = struct.pack("H", 0) + b"\0" * 14  # sockaddr with sa_family AF_UNSPEC
    return "ok" if libc.connect(s.fileno(), sa, len(sa)) == 0 else err()


def reconnect(port, tag, a, b):
    s = socket.socket(family(a), socket.SOCK_STREAM)
    s.settimeout(5)

    def first():
        s.connect((a, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.recv(4096)
    say("tcp-first", t(first))
    say("tcp-unspec", unspec(s))
    say("tcp-second", t(lambda: s.connect((b, port))))
    say("tcp-second-send", t(lambda: s.sendall(b"GET / HTTP/1.0\r\n\r\n")))
    s.close()
    u = socket.socket(family(a), socket.SOCK_DGRAM)
    say("udp-first", t(lambda: (u.connect((a, port)), u.send(f"{tag}-first".encode()))))
    say("udp-unspec", unspec(u))
    say("udp-second", t(lambda: (u.connect((b, port)), u.send(f"{tag}-second".encode()))))
    say("udp-unconnected", t(lambda: u.sendto(f"{tag}-third".encode(), (b, port))))
    u.close()


def mcast(port, tag, ifname, host4, unicast4, bcast4):
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    say("unicast4", t(lambda: s.sendto(f"{tag}-unicast".encode(), (unicast4, port))))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    say("broadcast4", t(lambda: s.sendto(f"{tag}-bcast".encode(), (bcast4, port))))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(host4))
    say("multicast4", t(lambda: s.sendto(f"{tag}-mcast4".encode(), ("224.0.0.1", port))))
    s.close()
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
    say("multicast6", t(lambda: s6.sendto(f"{tag}-mcast6".encode(), ("ff02::1", port, 0, ifindex))))
    s6.close()


def unified_cgroup():
    # The cgroup v2 line (a hybrid host lists v1 hierarchies too).
    with open("/proc/self/cgroup") as f:
        return next(l.strip() for l in f if l.startswith("0::"))


def cgroup(mount):
    before = unified_cgroup()
    say("cgroup-before", before)
    own = before.split("::", 1)[1]
    parent = os.path.dirname(own)
    for label, path in [("parent", f"{mount}{parent}/cgroup.procs"),
                        ("root", f"{mount}/cgroup.procs")]:
        def write():
            with open(path, "w") as f:
                f.write(f"{os.getpid()}\n")
        say(f"write-{label}", t(write))
    say("cgroup-after", unified_cgroup())


def main():
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "bindtrick":
        bindtrick(rest[0], int(rest[1]), rest[2])
    elif cmd == "namespaces":
        namespaces()
    elif cmd == "hold":
        hold(rest[0], int(rest[1]))
    elif cmd == "cross":
        cross(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
    elif cmd == "tty":
        tty()
    elif cmd == "families":
        families()
    elif cmd == "sockopts":
        sockopts()
    elif cmd == "forge":
        forge(int(rest[0]), *rest[1:6])
    elif cmd == "unix":
        unix(rest[0])
    elif cmd == "rawicmp":
        rawicmp(rest)
    elif cmd == "tfo":
        tfo(int(rest[0]), rest[1:])
    elif cmd == "reconnect":
        reconnect(int(rest[0]), rest[1], rest[2], rest[3])
    elif cmd == "mcast":
        mcast(int(rest[0]), *rest[1:6])
    elif cmd == "cgroup":
        cgroup(rest[0])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
