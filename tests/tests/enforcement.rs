//! Kernel enforcement with real clients and real packets, checked at the receiver.
use sandbox_tests::{PORT, RemoteHost, agent_cmd, loopback_service, run_client, sh, tcp_outcomes};

fn net24(addr: &str) -> String {
    let mut parts: Vec<&str> = addr.split('.').collect();
    parts[3] = "0";
    format!("{}/24", parts.join("."))
}

fn net30(addr: &str) -> String {
    // .2 and .3 are in x.x.x.0/30; .4 and .5 are not.
    let mut parts: Vec<&str> = addr.split('.').collect();
    parts[3] = "0";
    format!("{}/30", parts.join("."))
}

#[test]
fn allowlist_reaches_listed_address_and_refuses_others_with_eperm() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let out = tcp_outcomes(&["--network", "allowlist", "--allow-out", a], &[a, b]);
    assert_eq!(out, ["ok", "EPERM"]);
    assert!(
        host.saw_tcp(a),
        "server did not see the allowed connection: {:?}",
        host.seen()
    );
    assert!(
        !host.saw_tcp(b),
        "a denied connection arrived: {:?}",
        host.seen()
    );
}

#[test]
fn blocked_is_the_default_and_refuses_tcp_and_udp() {
    let host = RemoteHost::new();
    let a = host.v4[0].as_str();
    assert_eq!(tcp_outcomes(&[], &[a]), ["EPERM"]);
    let port = PORT.to_string();
    let run = run_client(&["--network", "blocked"], &["udp", &port, "blocked-udp", a]);
    assert_eq!(run.outcome(a), "EPERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        host.seen().is_empty(),
        "traffic arrived from a blocked sandbox: {:?}",
        host.seen()
    );
}

#[test]
fn open_mode_denies_only_deny_out() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let out = tcp_outcomes(&["--network", "open", "--deny-out", b], &[a, b]);
    assert_eq!(out, ["ok", "EPERM"]);
    assert!(!host.saw_tcp(b));
}

/// Every mode × precedence: a /30 and a /32 inside it, one allowed and one denied, and an
/// address outside both that only the mode's default decides.
#[test]
fn every_mode_and_precedence() {
    let host = RemoteHost::new();
    let (in_net, specific, outside) = (
        host.v4[0].as_str(),
        host.v4[1].as_str(),
        host.v4[2].as_str(),
    );
    let net = net30(in_net);
    // (mode, precedence, allow, deny, expected for [in_net, specific, outside])
    let cases: &[(&str, &str, &str, &str, [&str; 3])] = &[
        // allowlist: allow the /30, deny the /32 inside it.
        (
            "allowlist",
            "deny-wins",
            &net,
            specific,
            ["ok", "EPERM", "EPERM"],
        ),
        (
            "allowlist",
            "allow-wins",
            &net,
            specific,
            ["ok", "ok", "EPERM"],
        ),
        (
            "allowlist",
            "most-specific",
            &net,
            specific,
            ["ok", "EPERM", "EPERM"],
        ),
        // allowlist: allow the /32, deny the /30 around it.
        (
            "allowlist",
            "deny-wins",
            specific,
            &net,
            ["EPERM", "EPERM", "EPERM"],
        ),
        (
            "allowlist",
            "allow-wins",
            specific,
            &net,
            ["EPERM", "ok", "EPERM"],
        ),
        (
            "allowlist",
            "most-specific",
            specific,
            &net,
            ["EPERM", "ok", "EPERM"],
        ),
        // open: the default allows what no rule matches.
        (
            "open",
            "deny-wins",
            specific,
            &net,
            ["EPERM", "EPERM", "ok"],
        ),
        ("open", "allow-wins", specific, &net, ["EPERM", "ok", "ok"]),
        (
            "open",
            "most-specific",
            specific,
            &net,
            ["EPERM", "ok", "ok"],
        ),
        // most-specific tie: the same prefix allowed and denied.
        (
            "allowlist",
            "most-specific",
            specific,
            specific,
            ["EPERM", "EPERM", "EPERM"],
        ),
    ];
    for (mode, precedence, allow, deny, expected) in cases {
        let policy = [
            "--network",
            mode,
            "--precedence",
            precedence,
            "--allow-out",
            allow,
            "--deny-out",
            deny,
        ];
        let out = tcp_outcomes(&policy, &[in_net, specific, outside]);
        assert_eq!(
            out, expected,
            "{mode} {precedence} allow {allow} deny {deny}"
        );
    }
    // Blocked refuses even with a deny list (allow entries are rejected, see cli_errors.rs).
    assert_eq!(
        tcp_outcomes(&["--network", "blocked", "--deny-out", specific], &[in_net]),
        ["EPERM"]
    );
}

#[test]
fn policy_file_and_flags_combine() {
    let host = RemoteHost::new();
    let (a, b, c) = (
        host.v4[0].as_str(),
        host.v4[1].as_str(),
        host.v4[2].as_str(),
    );
    let file = sandbox_tests::helpers().join(format!("policy-{}.toml", host.netns));
    std::fs::write(
        &file,
        format!(
            "network = \"allowlist\"\nallow_out = [\"{}\"]\ndeny_out = [\"{b}\"]\n",
            net24(a)
        ),
    )
    .expect("write policy");
    sh(&format!("chmod 644 {}", file.display()));
    let out = tcp_outcomes(
        &["--policy", file.to_str().expect("utf-8"), "--deny-out", c],
        &[a, b, c],
    );
    assert_eq!(out, ["ok", "EPERM", "EPERM"]);
    let _ = std::fs::remove_file(file);
}

#[test]
fn ipv6_rules() {
    let host = RemoteHost::new();
    let (a, b) = (host.v6[0].as_str(), host.v6[1].as_str());
    let out = tcp_outcomes(&["--network", "allowlist", "--allow-out", a], &[a, b]);
    assert_eq!(out, ["ok", "EPERM"]);
    assert!(host.saw_tcp(a));
    assert!(!host.saw_tcp(b));
    let out = tcp_outcomes(
        &["--network", "open", "--deny-out", &format!("{b}/128")],
        &[a, b],
    );
    assert_eq!(out, ["ok", "EPERM"]);
}

#[test]
fn v4_mapped_ipv6_is_decided_by_the_ipv4_rules() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let (ma, mb) = (format!("::ffff:{a}"), format!("::ffff:{b}"));
    // An IPv4 rule opens the mapped address; a missing one keeps it closed.
    let out = tcp_outcomes(&["--network", "allowlist", "--allow-out", a], &[&ma, &mb]);
    assert_eq!(out, ["ok", "EPERM"]);
    assert!(host.saw_tcp(a) && !host.saw_tcp(b), "{:?}", host.seen());
    // A mapped entry in the policy is an IPv4 rule too, and a v6 catch-all does not open IPv4.
    let out = tcp_outcomes(
        &[
            "--network",
            "allowlist",
            "--allow-out",
            &mb,
            "--allow-out",
            "::/0",
        ],
        &[&ma, &mb, a],
    );
    assert_eq!(out, ["EPERM", "ok", "EPERM"]);
}

#[test]
fn udp_to_a_denied_address_never_arrives() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let (a6, b6) = (host.v6[0].as_str(), host.v6[1].as_str());
    let port = PORT.to_string();
    let policy = [
        "--network",
        "allowlist",
        "--allow-out",
        a,
        "--allow-out",
        a6,
    ];
    let run = run_client(&policy, &["udp", &port, "udp-probe", a, b, a6, b6]);
    assert_eq!(run.outcome(a), "ok");
    assert_eq!(run.outcome(b), "EPERM");
    assert_eq!(run.outcome(a6), "ok");
    assert_eq!(run.outcome(b6), "EPERM");
    // The receiver is the judge: allowed datagrams arrive, denied ones do not.
    let start = std::time::Instant::now();
    while !(host.saw_udp(a, "udp-probe") && host.saw_udp(a6, "udp-probe")) {
        assert!(
            start.elapsed().as_secs() < 5,
            "allowed datagrams did not arrive: {:?}",
            host.seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !host.saw_udp(b, "udp-probe") && !host.saw_udp(b6, "udp-probe"),
        "{:?}",
        host.seen()
    );
}

/// Raw sockets do not get around the wall: with `CAP_NET_RAW` granted, a hand-built UDP packet
/// to a denied address is dropped by `cgroup_skb`, one to an allowed address arrives, and
/// link-layer (`AF_PACKET`) sockets are refused outright.
#[test]
fn raw_sockets_are_filtered_too() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let port = PORT.to_string();
    let policy = [
        "--network",
        "allowlist",
        "--allow-out",
        a,
        "--cap-add",
        "NET_RAW",
    ];
    let run = run_client(&policy, &["rawudp", &port, "raw-probe", a, b]);
    assert_eq!(run.outcome(a), "ok");
    assert_eq!(
        run.outcome(b),
        "EPERM",
        "the raw send to a denied address was not refused"
    );
    let start = std::time::Instant::now();
    while !host.saw_udp(a, "raw-probe") {
        assert!(
            start.elapsed().as_secs() < 5,
            "the allowed raw datagram did not arrive: {:?}",
            host.seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !host.saw_udp(b, "raw-probe"),
        "a raw packet reached a denied address: {:?}",
        host.seen()
    );
    let run = run_client(&policy, &["packet"]);
    assert_eq!(run.outcome("packet"), "EPERM");
    assert_eq!(run.outcome("sockpacket"), "EPERM");
    assert_eq!(run.outcome("io_uring"), "EPERM");
}

/// ICMP echo through unprivileged ping sockets (enabled for the test, restored after).
#[test]
fn icmp_echo_is_denied_unless_allowed() {
    struct PingRange(String);
    impl Drop for PingRange {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", &self.0);
        }
    }
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let _restore = PingRange(
        std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").expect("read sysctl"),
    );
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .expect("allow ping sockets");
    // Debian's ping carries file capabilities, which no_new_privs refuses to grant (exec
    // fails); a copy without them uses an unprivileged ICMP socket.
    let ping = sandbox_tests::helpers().join("ping");
    sh(&format!(
        "cp /usr/bin/ping {0} && chmod 755 {0}",
        ping.display()
    ));
    let ping = ping.to_str().expect("utf-8").to_owned();
    // Control: both answer outside a sandbox.
    sh(&format!("{ping} -c1 -W2 {a} && {ping} -c1 -W2 {b}"));
    let policy = [
        "run",
        "--network",
        "allowlist",
        "--allow-out",
        a,
        "--",
        &ping,
        "-c1",
        "-W2",
    ];
    let mut allowed = policy.to_vec();
    allowed.push(a);
    let run = agent_cmd(&allowed);
    assert_eq!(run.code, 0, "ping to the allowed address failed: {run:#?}");
    let mut denied = policy.to_vec();
    denied.push(b);
    let run = agent_cmd(&denied);
    assert_ne!(run.code, 0, "ping to a denied address succeeded: {run:#?}");
    assert!(
        run.stderr.contains("not permitted"),
        "expected EPERM from ping: {run:#?}"
    );
}

#[test]
fn presets() {
    let host = RemoteHost::new();
    let (a, ll) = (host.v4[0].as_str(), host.link_local.as_str());
    // @cloud-metadata covers link-local 169.254.0.0/16.
    assert_eq!(
        tcp_outcomes(
            &["--network", "open", "--deny-out", "@cloud-metadata"],
            &[a, ll]
        ),
        ["ok", "EPERM"]
    );
    // @private includes link-local, not 198.18.0.0/15 (under a config without the default
    // host floor, which denies link-local whatever the policy says).
    let no_floor = std::env::temp_dir().join(format!("sa-no-floor-{}.toml", std::process::id()));
    std::fs::write(&no_floor, "floor_deny = []\n").expect("config");
    assert_eq!(
        tcp_outcomes(
            &[
                "--config",
                no_floor.to_str().expect("utf-8"),
                "--network",
                "allowlist",
                "--allow-out",
                "@private"
            ],
            &[a, ll]
        ),
        ["EPERM", "ok"]
    );
    // With the default floor, the same policy cannot reach link-local (cloud metadata).
    assert_eq!(
        tcp_outcomes(
            &["--network", "allowlist", "--allow-out", "@private"],
            &[a, ll]
        ),
        ["EPERM", "EPERM"]
    );
    let _ = std::fs::remove_file(&no_floor);
    // @all opens everything but loopback...
    assert_eq!(
        tcp_outcomes(
            &[
                "--network",
                "allowlist",
                "--allow-out",
                "@all",
                "--deny-out",
                "@cloud-metadata"
            ],
            &[a, ll]
        ),
        ["ok", "EPERM"]
    );
}

/// Loopback is the host's own services: closed unless the policy names it.
#[test]
fn loopback_is_denied_unless_named() {
    let port = loopback_service().to_string();
    let probe = |policy: &[&str], target: &str| {
        let run = run_client(policy, &["tcp", &port, target]);
        run.outcome(target)
    };
    assert_eq!(probe(&["--network", "allowlist"], "127.0.0.1"), "EPERM");
    assert_eq!(
        probe(
            &["--network", "allowlist", "--allow-out", "@all"],
            "127.0.0.1"
        ),
        "EPERM"
    );
    // 0.0.0.0 reaches the local host on Linux: it counts as loopback.
    assert_eq!(
        probe(
            &["--network", "allowlist", "--allow-out", "@all"],
            "0.0.0.0"
        ),
        "EPERM"
    );
    assert_eq!(
        probe(
            &["--network", "allowlist", "--allow-out", "@loopback"],
            "127.0.0.1"
        ),
        "ok"
    );
    assert_eq!(
        probe(
            &["--network", "allowlist", "--allow-out", "127.0.0.1"],
            "127.0.0.1"
        ),
        "ok"
    );
    assert_eq!(probe(&["--network", "open"], "127.0.0.1"), "ok");
    assert_eq!(
        probe(
            &["--network", "open", "--deny-out", "@loopback"],
            "127.0.0.1"
        ),
        "EPERM"
    );
}

/// Two sandboxes at once with opposite policies do not see each other's rules.
#[test]
fn concurrent_sandboxes_with_opposite_policies() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].clone(), host.v4[1].clone());
    let spawn = |allow: String, deny: String| {
        let (a, b) = (a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut results = Vec::new();
            for _ in 0..5 {
                results.push(tcp_outcomes(
                    &[
                        "--network",
                        "open",
                        "--deny-out",
                        &deny,
                        "--allow-out",
                        &allow,
                    ],
                    &[&a, &b],
                ));
            }
            results
        })
    };
    let first = spawn(a.clone(), b.clone());
    let second = spawn(b.clone(), a.clone());
    for r in first.join().expect("first") {
        assert_eq!(r, ["ok", "EPERM"]);
    }
    for r in second.join().expect("second") {
        assert_eq!(r, ["EPERM", "ok"]);
    }
}

/// The kernel caches a verdict per socket; one socket talking to an allowed, a denied and
/// again the allowed peer must get each verdict afresh, and the receiver sees only the
/// allowed datagrams.
#[test]
fn one_socket_alternating_peers_gets_each_verdict() {
    let host = RemoteHost::new();
    let (a, b) = (host.v4[0].as_str(), host.v4[1].as_str());
    let port = PORT.to_string();
    let run = run_client(
        &["--network", "allowlist", "--allow-out", a],
        &["udp1", &port, "alt", a, b, a, b],
    );
    assert_eq!(run.outcome(&format!("{a}#0")), "ok");
    assert_eq!(run.outcome(&format!("{b}#1")), "EPERM");
    assert_eq!(run.outcome(&format!("{a}#2")), "ok");
    assert_eq!(run.outcome(&format!("{b}#3")), "EPERM");
    let start = std::time::Instant::now();
    while !(host.saw_udp(a, "alt-0") && host.saw_udp(a, "alt-2")) {
        assert!(
            start.elapsed().as_secs() < 5,
            "allowed datagrams did not arrive: {:?}",
            host.seen()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !host.saw_udp(b, "alt-1") && !host.saw_udp(b, "alt-3"),
        "{:?}",
        host.seen()
    );
}
