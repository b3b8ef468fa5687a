//! A fake internet for the domain-rule tests: one network namespace joined to the host by a
//! veth pair, with
//!
//! - an upstream DNS server (dnsmasq) on `.2` that knows the test names,
//! - web servers (`helpers/webserver.py`: HTTPS with a certificate of the tests' own CA, HTTP,
//!   plain TCP on 2222, a UDP/443 logger) on `.3` (`allowed.test`), `.4` (`*.wild.test`),
//!   `.5` (`other.test`) and `.6` (`evil.test`), and on IPv6 `::3`, `::4`,
//! - a rogue resolver on `.6:53` that logs and never answers,
//! - an operator's forward proxy on `.2:3128` (HTTP CONNECT and SOCKS5).
//!
//! Sandboxes run with `/etc/resolv.conf` bind-mounted (in a private mount namespace of the
//! agent) to name the rogue resolver, so every DNS packet a sandbox sends is aimed at this
//! namespace: the agent must steer it to its own resolver. All addresses exist only here.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use crate::{Run, agent, allocate_subnet, helpers, sh, sh_quiet, wait_bounded};

/// The tests' CA and one server certificate for every test name.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = helpers().join("certs");
        fs::create_dir_all(&dir).expect("cert dir");
        let d = dir.display();
        sh(&format!(
            "set -e; cd {d}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=sandbox-agent-test-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=allowed.test -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:allowed.test,DNS:wild.test,DNS:*.wild.test,DNS:*.b.wild.test,DNS:other.test,DNS:evil.test\\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out server.pem 2>/dev/null
chmod 755 {d}; chmod 644 {d}/*"
        ));
        Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    })
}

pub struct WebWorld {
    netns: String,
    host_if: String,
    /// `198.B.C`: the namespace's /24 is `198.B.C.0/24`, the host side is `.1`.
    pub net: String,
    /// The IPv6 /64 prefix, `2001:db8:5a:N:`; addresses are `{v6}:3` and so on.
    pub v6: String,
    log: PathBuf,
    dns_log: PathBuf,
    pub flow_log: PathBuf,
    resolv_conf: PathBuf,
    procs: Vec<Child>,
}

impl WebWorld {
    pub fn new() -> Self {
        let (n, net) = allocate_subnet();
        let netns = format!("sa-web-{n}");
        let host_if = format!("sw{n}h");
        let ns_if = format!("sw{n}n");
        sh_quiet(&format!("ip netns del {netns}; ip link del {host_if}"));
        let v6 = format!("2001:db8:5a:{n:x}:");
        let dir = helpers();
        let mut world = Self {
            netns: netns.clone(),
            host_if: host_if.clone(),
            net: net.clone(),
            v6: v6.clone(),
            log: dir.join(format!("web-{n}.log")),
            dns_log: dir.join(format!("dnsmasq-{n}.log")),
            flow_log: dir.join(format!("flows-{n}.log")),
            resolv_conf: dir.join(format!("resolv-{n}.conf")),
            procs: Vec::new(),
        };
        for f in [&world.log, &world.dns_log, &world.flow_log] {
            let _ = fs::remove_file(f);
        }
        fs::write(&world.resolv_conf, format!("nameserver {net}.6\n")).expect("resolv.conf");
        let mut script = format!(
            "set -e
ip netns add {netns}
ip link add {host_if} type veth peer name {ns_if} netns {netns}
ip addr add {net}.1/24 dev {host_if}
ip addr add {v6}:1/64 dev {host_if} nodad
ip link set {host_if} up
ip -n {netns} link set lo up
ip -n {netns} link set {ns_if} up
"
        );
        for i in 2..=6 {
            let _ = writeln!(
                script,
                "ip -n {netns} addr add {net}.{i}/24 dev {ns_if}\nip -n {netns} addr add {v6}:{i}/64 dev {ns_if} nodad"
            );
        }
        sh(&script);
        world.start_servers();
        let start = Instant::now();
        while !(fs::read_to_string(&world.log).is_ok_and(|l| l.contains("ready"))
            && fs::read_to_string(&world.dns_log).is_ok_and(|l| l.contains("started")))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "web world in {netns} did not start: web log {:?}, dns log {:?}",
                fs::read_to_string(&world.log),
                fs::read_to_string(&world.dns_log)
            );
            thread::sleep(Duration::from_millis(20));
        }
        world.wait_for_upstream_dns();
        world
    }

    /// dnsmasq and the web servers in the namespace.
    fn start_servers(&mut self) {
        let (net, v6, dir) = (self.net.clone(), self.v6.clone(), helpers());
        let c = certs();
        let dnsmasq = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
            ])
            .args([
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-queries",
            ])
            .arg(format!("--log-facility={}", self.dns_log.display()))
            .arg(format!("--listen-address={net}.2"))
            .arg(format!("--host-record=allowed.test,{net}.3,{v6}:3"))
            .arg(format!("--host-record=other.test,{net}.5"))
            .arg(format!("--host-record=evil.test,{net}.6,{v6}:6"))
            .arg("--host-record=internal.wild.test,10.0.0.1")
            .arg(format!("--address=/wild.test/{net}.4"))
            .arg(format!("--address=/wild.test/{v6}:4"))
            .arg("--txt-record=txt.allowed.test,hello")
            // HTTPS record: priority 1, target ".", alpn=h2 (key 1), ech (key 5).
            .arg("--dns-rr=allowed.test,65,0001000001000302683200050004deadbeef")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.procs.push(dnsmasq);
        let web = Command::new("ip")
            .args(["netns", "exec", &self.netns, "python3"])
            .arg(dir.join("webserver.py"))
            .arg("--log")
            .arg(&self.log)
            .arg("--cert")
            .arg(&c.cert)
            .arg("--key")
            .arg(&c.key)
            .args(["--lifetime", "600"])
            .args(["--web", &format!("{net}.3"), "--web", &format!("{net}.4")])
            .args(["--web", &format!("{net}.5"), "--web", &format!("{net}.6")])
            .args(["--web", &format!("{v6}:3"), "--web", &format!("{v6}:4")])
            .args(["--rogue-dns", &format!("{net}.6")])
            .args(["--upstream-proxy", &format!("{net}.2")])
            .args(["--host", &format!("allowed.test={net}.3")])
            .args(["--host", &format!("a.wild.test={net}.4")])
            .args(["--spam", &format!("{net}.5>{net}.1:{}", self.spam_port())])
            .stdout(Stdio::null())
            .spawn()
            .expect("start webserver");
        self.procs.push(web);
    }

    /// dnsmasq logs "started" before it may answer: wait for a real answer (bounded).
    fn wait_for_upstream_dns(&self) {
        // A query for allowed.test/A, id 0x5a5a.
        let mut query = vec![0x5a, 0x5a, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["allowed", "test"] {
            query.push(u8::try_from(label.len()).expect("short label"));
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            let _ = socket.send_to(&query, (self.upstream().as_str(), 53));
            if socket
                .recv(&mut buf)
                .is_ok_and(|n| n > 2 && buf[..2] == [0x5a, 0x5a])
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dnsmasq in {} does not answer",
                self.netns
            );
        }
    }

    /// `198.B.C.i`.
    pub fn v4(&self, i: u8) -> String {
        format!("{}.{i}", self.net)
    }

    /// `2001:db8:5a:N::i`.
    pub fn v6(&self, i: u8) -> String {
        format!("{}:{i}", self.v6)
    }

    /// The upstream resolver (dnsmasq).
    pub fn upstream(&self) -> String {
        self.v4(2)
    }

    /// What the web servers and the rogue resolver saw (see `helpers/webserver.py`).
    pub fn seen(&self) -> Vec<String> {
        crate::server_log(&self.log)
    }

    /// Whether any line of what the servers saw starts with `prefix`.
    pub fn saw(&self, prefix: &str) -> bool {
        self.seen().iter().any(|l| l.starts_with(prefix))
    }

    /// Whether a line of what the servers saw mentions `addr` as the local address.
    pub fn saw_addr(&self, addr: &str) -> bool {
        self.seen()
            .iter()
            .any(|l| l.split(' ').nth(1) == Some(addr))
    }

    /// The questions the upstream resolver was asked (dnsmasq's `query[TYPE] NAME` lines).
    pub fn upstream_queries(&self) -> Vec<String> {
        fs::read_to_string(&self.dns_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(": query[").map(|(_, q)| format!("query[{q}")))
            .collect()
    }

    /// Whether a flow event matches `pred`.
    pub fn has_flow(&self, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
        self.flows().iter().any(pred)
    }

    /// The flow events of the last runs, one JSON value each.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.flow_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("flow event is JSON"))
            .collect()
    }

    /// The host-side UDP port that `.5` sends a datagram to every 20 ms (a peer the policy
    /// denies, trying to reach a sandbox's socket).
    pub fn spam_port(&self) -> u16 {
        let n: u16 = self
            .net
            .rsplit('.')
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        41_000 + n
    }

    /// The operator's forward proxy (HTTP CONNECT and SOCKS5) on `.2:3128`.
    pub fn upstream_proxy(&self) -> String {
        format!("{}:3128", self.v4(2))
    }

    /// `sandbox-agent run --upstream-dns <.2> --flow-log <file> POLICY... -- python3
    /// webclient.py STEP...`, in a mount namespace where /etc/resolv.conf names the rogue
    /// resolver. Panics unless the agent exits 0.
    pub fn run(&self, policy: &[&str], steps: &[&str]) -> Run {
        let client = helpers().join("webclient.py").display().to_string();
        let mut command = vec!["/usr/bin/python3", client.as_str()];
        command.extend_from_slice(steps);
        let run = self.agent(&self.run_args(policy, &command));
        assert_eq!(run.code, 0, "sandboxed client failed: {run:#?}");
        run
    }

    /// `run --upstream-dns <.2> --flow-log <file> POLICY... -- COMMAND...`.
    pub fn run_args(&self, policy: &[&str], command: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--upstream-dns".into(),
            self.upstream(),
            "--flow-log".into(),
            self.flow_log.display().to_string(),
        ];
        args.extend(policy.iter().map(|s| (*s).to_owned()));
        args.push("--".into());
        args.extend(command.iter().map(|s| (*s).to_owned()));
        args
    }

    /// `sandbox-agent ARGS...` with this world's resolv.conf.
    pub fn agent(&self, args: &[String]) -> Run {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
            .arg(&self.resolv_conf)
            .arg(agent())
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sandbox-agent");
        wait_bounded(child)
    }

    /// `--cacert` for curl.
    pub fn ca(&self) -> &Path {
        &certs().ca
    }
}

impl Default for WebWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for WebWorld {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        sh_quiet(&format!(
            "ip netns del {}; ip link del {}",
            self.netns, self.host_if
        ));
        for f in [&self.log, &self.dns_log, &self.flow_log, &self.resolv_conf] {
            let _ = fs::remove_file(f);
        }
    }
}
