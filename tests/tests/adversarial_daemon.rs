//! The adversary at the daemon: clients of its gateway (raw HTTP/1.1 over TCP, an HTTP/2
//! client, curl) try to remove or forge what the gateway tells a workload, one sandbox tries
//! to be served the requests of another or to take its name, another local user reads the
//! daemon's records, and a workload writes to the operator's terminal. Judged by what the
//! workload inside the sandbox received (`helpers/rawhttp.py echo` answers with the raw
//! bytes it read, `sa-web-helper` with the fields it parsed), by what user `nobody` could
//! read, and by what a real terminal (a pty) was sent.
//!
//! | attack | what stops it | test |
//! |---|---|---|
//! | `Connection: x-verified-user-data, x-forwarded-*, host` deletes the gateway's own headers (HTTP/1.1 and a WebSocket upgrade) | the client's hop-by-hop fields are stripped before the gateway sets its own; `Connection` cannot name a gateway-owned field | `connection_cannot_delete_the_gateways_headers` |
//! | `Trailer: X-Verified-User-Data` and the field in the trailer section (HTTP/1.1 chunked, HTTP/2 to `http` and `h2` ports) | the `Trailer` declaration and the trailer section lose gateway-owned and hop-by-hop fields | `trailers_cannot_carry_the_gateways_fields` |
//! | the connect token in a browser's `Referer` after a query-token login | the token parameter is removed from `Referer`; the query-token answer says `Referrer-Policy: no-referrer` | `the_token_never_reaches_the_workload_in_a_referer` |
//! | a pooled connection to a closed listener of sandbox A serves sandbox B, whose listener got A's old port | pools per sandbox and listener socket; a pool goes with its listener | `a_pooled_connection_never_serves_another_sandbox` |
//! | another local user reads `record.json` (command line, tunnels, routes) | directories 0700, files 0600 made by the daemon; a state directory others own or can write is refused | `records_are_root_s_alone` |
//! | a workload's escape sequences (title, screen clear, colours) reach the operator's terminal through `logs` or `run` | control characters escaped when the output is a terminal; `--raw` keeps them | `workload_output_is_escaped_on_a_terminal` |
//! | 12,000 resolver events from one sandbox evict another's from the daemon's history | a tenth of the history per sandbox, a publishing budget per sandbox, drops counted | `one_sandbox_cannot_evict_anothers_events` |
//! | a sandbox named `Web` next to a live `web`; host routes (lower case) reaching the wrong one | names unique regardless of case, found regardless of case | `names_are_unique_whatever_their_case` |
use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sandbox_tests::{
    agent,
    daemon::TestDaemon,
    gateway::{create, curl, installed, path_url, token},
    helpers, open_pty, read_terminal, wait_bounded,
};

const USER_DATA: &str = r#"{"user":"ann"}"#;

fn rawhttp() -> String {
    helpers().join("rawhttp.py").display().to_string()
}

fn web_helper() -> String {
    installed(env!("CARGO_BIN_EXE_sa-web-helper"))
}

/// A sandbox running `rawhttp.py echo` on 8080, its `Host` masked; a token with user data.
fn echo_sandbox(d: &TestDaemon) -> (String, String) {
    let sb = create(
        d,
        &[
            "--port",
            "8080",
            "--probe-tcp",
            "8080",
            "--mask-host",
            "masked.example:${PORT}",
        ],
        &["/usr/bin/python3", &rawhttp(), "echo", "8080"],
    );
    let (tok, _) = token(d, &sb, Some(USER_DATA));
    (sb, tok)
}

/// Sends `request` as is to the gateway and reads the answer to its end: status and body.
fn raw_request(d: &TestDaemon, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", d.ingress_port)).expect("connect the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of each line `name: value` of a raw HTTP head (names case-insensitive).
fn field<'a>(raw_head: &'a str, name: &str) -> Vec<&'a str> {
    raw_head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[test]
fn connection_cannot_delete_the_gateways_headers() {
    let d = TestDaemon::start();
    let (sb, tok) = echo_sandbox(&d);
    let owned = "x-verified-user-data, x-forwarded-for, x-forwarded-proto, x-forwarded-host, host";
    let (status, seen) = raw_request(
        &d,
        &format!(
            "GET /_sandbox/{sb}/8080/x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {tok}\r\nConnection: close, {owned}, x-mine\r\nX-Mine: gone\r\nX-Other: kept\r\n\r\n",
            d.ingress_port
        ),
    );
    assert_eq!(status, 200, "{seen}");
    let head = seen.split("\r\n\r\n").next().unwrap_or_default();
    // The gateway's fields arrive as it set them, once each.
    assert_eq!(field(head, "x-verified-user-data"), [USER_DATA], "{head}");
    assert_eq!(field(head, "host"), ["masked.example:8080"], "{head}");
    assert_eq!(field(head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(field(head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(field(head, "x-forwarded-host").len(), 1, "{head}");
    // What the client named as hop-by-hop of its own goes; the rest stays.
    assert!(field(head, "x-mine").is_empty(), "{head}");
    assert_eq!(field(head, "x-other"), ["kept"], "{head}");
    assert!(
        field(head, "connection")
            .iter()
            .all(|c| !c.contains("x-verified")),
        "{head}"
    );

    // A WebSocket upgrade request: the workload's `Connection` names the upgrade only, so
    // no proxy or framework behind it drops the identity either.
    let (status, seen) = raw_request(
        &d,
        &format!(
            "GET /_sandbox/{sb}/8080/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {tok}\r\nConnection: Upgrade, {owned}\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            d.ingress_port
        ),
    );
    assert_eq!(status, 200, "{seen}");
    let head = seen.split("\r\n\r\n").next().unwrap_or_default();
    assert_eq!(field(head, "x-verified-user-data"), [USER_DATA], "{head}");
    assert_eq!(field(head, "host"), ["masked.example:8080"], "{head}");
    assert_eq!(field(head, "connection"), ["upgrade"], "{head}");
    assert_eq!(field(head, "upgrade"), ["websocket"], "{head}");
    d.cli(&["kill", &sb]);
}

/// A body of these frames (in reverse), of unknown length: sent chunked to an HTTP/1.1 hop.
struct Trailed(Vec<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Trailed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop().map(Ok))
    }
}

/// A POST over HTTP/2 (cleartext, prior knowledge) to the gateway with these trailers:
/// status and body.
fn h2_post_with_trailers(d: &TestDaemon, path: &str, tok: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = d.ingress_port;
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect the gateway");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert(
            "x-verified-user-data",
            r#"{"user":"root"}"#.parse().unwrap(),
        );
        trailers.insert("x-forwarded-for", "10.9.9.9".parse().unwrap());
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let body = Trailed(vec![
            hyper::body::Frame::trailers(trailers),
            hyper::body::Frame::data(Bytes::from_static(b"payload")),
        ]);
        let req = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
            .header("authorization", format!("Bearer {tok}"))
            .header(
                "trailer",
                "x-verified-user-data, x-forwarded-for, x-checksum",
            )
            .body(body)
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

#[test]
fn trailers_cannot_carry_the_gateways_fields() {
    let d = TestDaemon::start();
    let (sb, tok) = echo_sandbox(&d);
    let forged = r#"{"user":"root"}"#;

    // HTTP/1.1, chunked, to an HTTP/1.1 workload: the raw bytes it read.
    let (status, seen) = raw_request(
        &d,
        &format!(
            "POST /_sandbox/{sb}/8080/t HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\nTE: trailers\r\nTrailer: X-Verified-User-Data, Host, X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npayload\r\n0\r\nX-Verified-User-Data: {forged}\r\nHost: evil.example\r\nX-Checksum: abc\r\n\r\n",
            d.ingress_port
        ),
    );
    assert_eq!(status, 200, "{seen}");
    let (head, body) = seen.split_once("\r\n\r\n").unwrap_or_default();
    assert_eq!(field(head, "x-verified-user-data"), [USER_DATA], "{seen}");
    assert_eq!(field(head, "trailer"), ["X-Checksum"], "{seen}");
    // Trailers do pass (the test can see them), only not these.
    assert!(body.contains("x-checksum: abc"), "{seen}");
    assert!(!seen.contains(forged), "{seen}");
    assert!(!seen.contains("evil.example"), "{seen}");

    // HTTP/2 from the client, to an HTTP/1.1 workload and to an HTTP/2 one.
    let (status, seen) = h2_post_with_trailers(&d, &format!("/_sandbox/{sb}/8080/t"), &tok);
    assert_eq!(status, 200, "{seen}");
    assert!(seen.contains("x-checksum: abc"), "{seen}");
    assert!(
        !seen.contains(forged) && !seen.contains("10.9.9.9"),
        "{seen}"
    );
    let helper = web_helper();
    let h2 = create(
        &d,
        &["--h2-port", "9090", "--probe-tcp", "9090"],
        &[&helper, "9090", "h2"],
    );
    let (h2_tok, _) = token(&d, &h2, Some(USER_DATA));
    let (status, seen) = h2_post_with_trailers(&d, &format!("/_sandbox/{h2}/9090/t"), &h2_tok);
    assert_eq!(status, 200, "{seen}");
    let v: serde_json::Value = serde_json::from_str(&seen).expect("JSON");
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    assert_eq!(v["body_len"], 7, "{v}");
    assert_eq!(v["headers"]["x-verified-user-data"], USER_DATA, "{v}");
    assert_eq!(
        v["trailers"],
        serde_json::json!({"x-checksum": "abc"}),
        "{v}"
    );
    d.cli(&["kill", &sb]);
    d.cli(&["kill", &h2]);
}

#[test]
fn the_token_never_reaches_the_workload_in_a_referer() {
    let d = TestDaemon::start();
    let helper = web_helper();
    let sb = create(
        &d,
        &["--port", "8080", "--probe-tcp", "8080"],
        &[&helper, "8080", "web"],
    );
    let (tok, _) = token(&d, &sb, None);
    let connect_to = format!("::127.0.0.1:{}", d.ingress_port);
    let page = format!("http://8080-{sb}.sandbox.localhost:{}/", d.ingress_port);
    // The login: the answer tells the browser to send no Referer from this page.
    let r = curl(&[
        "--connect-to",
        &connect_to,
        &format!("{page}login?_sandbox_connect_token={tok}&next=1"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let policy: Vec<&str> = r
        .headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("referrer-policy"))
        .map(|(_, v)| v.trim())
        .collect();
    assert_eq!(policy, ["no-referrer"], "{}", r.headers);
    // A browser that sends one anyway (with the cookie the login set): the workload sees
    // the page it came from, not the token.
    let r = curl(&[
        "--connect-to",
        &connect_to,
        "-b",
        &format!("_sandbox_connect_token={tok}"),
        "-H",
        &format!("Referer: {page}login?_sandbox_connect_token={tok}&next=1"),
        &format!("{page}style.css"),
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(
        seen["headers"]["referer"],
        format!("{page}login?next=1"),
        "{seen}"
    );
    assert!(!r.body.contains(&tok), "{}", r.body);
    d.cli(&["kill", &sb]);
}

/// Sets `net.ipv4.ip_autobind_reuse` for the test and restores it: with it, a port-0 bind
/// with `SO_REUSEADDR` may land on a port that a connected socket (with `SO_REUSEADDR`)
/// still holds, which is how a second sandbox's listener gets the port of a first one's
/// connection without exhausting the range.
struct AutobindReuse(String);

impl AutobindReuse {
    const PATH: &str = "/proc/sys/net/ipv4/ip_autobind_reuse";

    fn on() -> Self {
        let old = fs::read_to_string(Self::PATH).expect("read ip_autobind_reuse");
        fs::write(Self::PATH, "1").expect("set ip_autobind_reuse");
        Self(old.trim().to_owned())
    }
}

impl Drop for AutobindReuse {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

/// The loopback port a `rawhttp.py` server printed.
fn printed_port(stdout: &str) -> u16 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("port "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port printed: {stdout}"))
}

#[test]
fn a_pooled_connection_never_serves_another_sandbox() {
    let _reuse = AutobindReuse::on();
    let d = TestDaemon::start();
    // A serves one keep-alive connection, then closes its listener and keeps the connection.
    let a = create(
        &d,
        &["--port", "8080"],
        &["/usr/bin/python3", &rawhttp(), "hold", "8080", "A"],
    );
    let port = printed_port(&d.wait_output(&a, "port "));
    let (tok_a, _) = token(&d, &a, None);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {tok_a}"),
        &path_url(&d, &a, 8080, "x"),
    ]);
    assert_eq!((r.status, r.body.as_str()), (200, "A"), "{}", r.body);
    d.wait_output(&a, "listener closed");
    let closed = Instant::now();
    // B's listener lands on A's old loopback port, while A's connection may still be open;
    // B's clients reach B.
    let b = create(
        &d,
        &["--port", "8080"],
        &[
            "/usr/bin/python3",
            &rawhttp(),
            "grab",
            "8080",
            &port.to_string(),
            "B",
        ],
    );
    assert_eq!(printed_port(&d.wait_output(&b, "port ")), port);
    let (tok_b, _) = token(&d, &b, None);
    let r = curl(&[
        "-H",
        &format!("Authorization: Bearer {tok_b}"),
        &path_url(&d, &b, 8080, "x"),
    ]);
    assert_eq!((r.status, r.body.as_str()), (200, "B"), "{}", r.body);
    // The gateway drops the pool of a listener that is gone: A sees its connection end
    // (the idle timeout alone would take 30 s).
    while !d.stdout(&a).contains("upstream closed") {
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "the gateway kept its pooled connection to A's closed listener: {}",
            d.stdout(&a)
        );
        thread::sleep(Duration::from_millis(100));
    }
    d.cli(&["kill", &a]);
    d.cli(&["kill", &b]);
}

/// Every directory and file under `dir`: its path and mode.
fn modes(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        out.push((path.display().to_string(), meta.mode() & 0o7777));
        if meta.is_dir() {
            modes(&path, out);
        }
    }
}

/// `cmd args...` as user and group `nobody`: its exit code and output.
fn as_nobody(cmd: &str, args: &[&str]) -> (i32, String) {
    let child = Command::new(cmd)
        .args(args)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn as nobody");
    let run = wait_bounded(child);
    (run.code, run.stdout + &run.stderr)
}

#[test]
fn records_are_root_s_alone() {
    let d = TestDaemon::start();
    let secret = "--password=hunter2-in-argv";
    let sb = create(
        &d,
        &["--tcp-port", "9000"],
        &["/bin/sh", "-c", "echo started; sleep 60", "sh", secret],
    );
    d.wait_output(&sb, "started");
    let state = d.dir.join("state");
    let record = state.join(format!("sandboxes/{sb}/record.json"));
    assert!(
        fs::read_to_string(&record)
            .expect("the record")
            .contains("hunter2"),
        "the test's secret is in the record"
    );
    // Made private by the daemon, under the test's umask (022): every directory 0700,
    // every file 0600.
    let mut all = vec![(
        state.display().to_string(),
        fs::metadata(&state).unwrap().mode() & 0o7777,
    )];
    modes(&state, &mut all);
    for (path, mode) in &all {
        let dir = Path::new(path).is_dir();
        assert_eq!(*mode, if dir { 0o700 } else { 0o600 }, "{path}: {mode:04o}");
    }
    // Another user reads nothing: not the record, not even which sandboxes there are.
    let (code, out) = as_nobody("cat", &[&record.display().to_string()]);
    assert_ne!(code, 0, "nobody read the record: {out}");
    let (code, out) = as_nobody("ls", &[&state.join("sandboxes").display().to_string()]);
    assert_ne!(code, 0, "nobody listed the sandboxes: {out}");
    let (_, out) = as_nobody("grep", &["-rs", "hunter2", &state.display().to_string()]);
    assert!(!out.contains("hunter2"), "{out}");
    // Root's commands still work.
    assert!(d.ok(&["ls"]).contains(&sb));
    assert_eq!(d.inspect(&sb)["id"], sb);

    // A state directory another user owns, or others can write: refused, with why.
    let foreign = d.dir.join("foreign");
    fs::create_dir(&foreign).unwrap();
    for (setup, needle) in [
        ("chown 65534 {} && chmod 0700 {}", "is owned by uid 65534"),
        (
            "chown 0 {} && chmod 0777 {}",
            "can be written by group or others (mode 0777)",
        ),
    ] {
        let f = foreign.display().to_string();
        sandbox_tests::sh(&setup.replace("{}", &f));
        let child = Command::new(agent())
            .args(["daemon", "--config"])
            .arg(d.dir.join("config.toml"))
            .args(["--state-dir", &f])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a second daemon");
        let run = wait_bounded(child);
        assert_ne!(run.code, 0, "{run:#?}");
        assert!(
            run.stderr.contains(needle) && run.stderr.contains(&f),
            "{run:#?}"
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "one line: {}",
            run.stderr
        );
    }
    d.cli(&["kill", &sb]);
}

/// `sandbox-agent ARGS` against the daemon with stdout and stderr on a fresh terminal;
/// what the terminal was sent.
fn on_a_terminal(d: &TestDaemon, args: &[&str]) -> Vec<u8> {
    let (mut master, slave) = open_pty();
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .expect("open the pty");
    let child = Command::new(agent())
        .args(args)
        .env("SANDBOX_AGENT_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .stdout(tty.try_clone().expect("dup"))
        .stderr(tty)
        .spawn()
        .expect("start sandbox-agent");
    let run = wait_bounded(child);
    assert_eq!(run.code, 0, "sandbox-agent {args:?}");
    // Everything written is buffered in the pty, and the slave is closed by now.
    read_terminal(&mut master)
}

#[test]
fn workload_output_is_escaped_on_a_terminal() {
    let d = TestDaemon::start();
    let script = r"printf 'A\033]0;owned\007B\033[2JC\n'; printf 'E\033[31mF\233G\n' >&2; sleep 60";
    let sb = create(&d, &[], &["/bin/sh", "-c", script]);
    d.wait_output(&sb, "C");
    let shown = on_a_terminal(&d, &["logs", &sb]);
    let text = String::from_utf8_lossy(&shown);
    assert!(
        !shown.contains(&0x1b),
        "an escape reached the terminal: {text:?}"
    );
    assert!(text.contains(r"A\x1b]0;owned\x07B\x1b[2JC"), "{text:?}");
    assert!(text.contains(r"E\x1b[31mF\x9bG"), "{text:?}");
    // --raw: the bytes as written.
    let raw = on_a_terminal(&d, &["logs", "--raw", &sb]);
    assert!(
        raw.windows(5).any(|w| w == b"\x1b]0;o"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    // Not a terminal (a pipe): the bytes as written, for files and tools.
    let piped = d.cli(&["logs", "--stream", "stdout", &sb]);
    assert!(piped.stdout.contains("A\u{1b}]0;owned\u{7}B"), "{piped:#?}");
    // `run` through the daemon relays the same way.
    let shown = on_a_terminal(&d, &["run", "--", "/bin/sh", "-c", r"printf 'R\033[2JS\n'"]);
    let text = String::from_utf8_lossy(&shown);
    assert!(!shown.contains(&0x1b), "{text:?}");
    assert!(text.contains(r"R\x1b[2JS"), "{text:?}");
    d.cli(&["kill", &sb]);
}

#[test]
fn names_are_unique_whatever_their_case() {
    let d = TestDaemon::start();
    let helper = web_helper();
    let web = create(
        &d,
        &["--name", "Web", "--port", "8080", "--probe-tcp", "8080"],
        &[&helper, "8080", "Web"],
    );
    // `web` is the same name while `Web` lives.
    let taken = d.cli(&["create", "--name", "web", "--", "sleep", "5"]);
    assert_ne!(taken.code, 0, "{taken:#?}");
    assert!(
        taken.stderr.contains("case-insensitive") && taken.stderr.contains("\"Web\""),
        "{taken:#?}"
    );
    // Found by any spelling, and host routes (which are lower case) reach it.
    assert_eq!(d.inspect("WEB")["id"], web);
    let (tok, _) = token(&d, "web", None);
    for host in ["8080-web", "8080-WEB", "8080-Web"] {
        let r = curl(&[
            "--connect-to",
            &format!("::127.0.0.1:{}", d.ingress_port),
            "-H",
            &format!("Authorization: Bearer {tok}"),
            &format!("http://{host}.sandbox.localhost:{}/n", d.ingress_port),
        ]);
        assert_eq!(r.status, 200, "{host}: {}", r.body);
        assert_eq!(r.json()["server"], "Web", "{host}");
    }
    d.cli(&["kill", &web]);
}

/// A sandbox that asks its resolver about `names` (denied names: one event each), prints
/// `asked N` (the answers it got), and lives on.
fn asking(d: &TestDaemon, names: &str) -> (String, usize) {
    let script = format!(
        r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
n = 0
for i, name in enumerate({names}):
    q = struct.pack("!HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack("!HH", 1, 1)
    s.sendto(q, ("198.18.0.1", 53))
    try:
        s.recvfrom(512)
        n += 1
    except OSError:
        pass
print("asked", n, flush=True)
import time; time.sleep(60)
"#
    );
    let sb = create(
        d,
        &["--network", "allowlist", "--allow-out", "ok.example"],
        &["/usr/bin/python3", "-c", &script],
    );
    let out = d.wait_output(&sb, "asked");
    let asked: usize = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    (sb, asked)
}

#[test]
fn one_sandbox_cannot_evict_anothers_events() {
    let d = TestDaemon::start();
    let (b, _) = asking(&d, r#"["b-marker.example"]"#);
    // More events than the daemon keeps (10,000), as fast as the resolver answers.
    let (a, asked) = asking(&d, r#"["f%d.example" % i for i in range(12000)]"#);
    assert!(asked > 11_000, "the flood was not answered: {asked}");
    let history = |sandbox: &str| {
        let (status, body) = d.http(
            "GET",
            &format!("/v1/events?sandbox={sandbox}&follow=false"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    let of_b = history(&b);
    assert!(
        of_b.contains("b-marker.example"),
        "B's event was evicted: {of_b}"
    );
    let of_a = history(&a);
    let kept = of_a.lines().filter(|l| l.contains(".example")).count();
    assert!(
        (100..=1000).contains(&kept),
        "A kept {kept} events: more than its share, or none"
    );
    let metrics = d.metrics();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sandbox_agent_events_dropped") && l.contains(&a))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no drop count for {a}: {metrics}"));
    assert!(dropped >= 10_000.0, "{dropped}");
    d.cli(&["kill", &a]);
    d.cli(&["kill", &b]);
}
