//! Sandboxes can use up the kernel's ephemeral ports (every steered bind and every
//! redirected socket takes one); the agent's own resolver and proxy ports must not depend on
//! what is left there. A file of its own: while this test holds every ephemeral port of
//! 127.0.0.1, no other test of the same binary could connect over loopback.
use std::{
    io::{BufRead as _, BufReader},
    net::{TcpListener, UdpSocket},
    process::{Command, Stdio},
};

use sandbox_tests::{Reap, agent_cmd};

/// Holds every port from LOW to HIGH of 127.0.0.1 for one protocol, prints how many, and
/// keeps them until its stdin closes (a process per share: the descriptor limit is per
/// process, and raising it needs a capability the test may not have).
const HOLDER: &str = r#"
import resource, socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
low, high = int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for port in range(low, high + 1):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
sys.stdin.read()
"#;

fn hold(proto: &str, low: u16, high: u16) -> (Reap, usize) {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", HOLDER, proto, &low.to_string(), &high.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a port holder");
    let stdout = child.stdout.take().expect("stdout");
    let holder = Reap(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the holder reports");
    let held = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("holder said {line:?}"));
    (holder, held)
}

#[test]
fn a_new_sandbox_starts_its_services_with_the_ephemeral_range_used_up() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .expect("ip_local_port_range");
    let mut bounds = range
        .split_whitespace()
        .map(|p| p.parse::<u16>().expect("a port"));
    let (low, high) = (bounds.next().expect("low"), bounds.next().expect("high"));
    // Every ephemeral port of 127.0.0.1, TCP and UDP, held (as sandboxes' sockets would),
    // in shares below the descriptor limit.
    let mut holders = Vec::new();
    let mut held = [0usize; 2];
    let step = 10_000u16;
    for (i, proto) in ["tcp", "udp"].into_iter().enumerate() {
        let mut from = low;
        loop {
            let to = from.saturating_add(step - 1).min(high);
            let (h, n) = hold(proto, from, to);
            holders.push(h);
            held[i] += n;
            if to == high {
                break;
            }
            from = to + 1;
        }
    }
    let span = usize::from(high - low) + 1;
    assert!(
        held.iter().all(|n| *n > span * 9 / 10),
        "held only {held:?} of {span} ports"
    );
    // The range is full: the kernel has no port to give on 127.0.0.1.
    assert!(
        UdpSocket::bind("127.0.0.1:0").is_err() || TcpListener::bind("127.0.0.1:0").is_err(),
        "the ephemeral range still had room"
    );
    // A sandbox with domain rules starts its resolver and proxy all the same.
    let run = agent_cmd(&[
        "run",
        "--network",
        "allowlist",
        "--allow-out",
        "example.test",
        "--",
        "/bin/true",
    ]);
    assert_eq!(run.code, 0, "{run:#?}");
    drop(holders);
}
