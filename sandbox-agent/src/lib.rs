//! sandbox-agent: runs untrusted workloads in cgroups whose network egress is decided in the
//! kernel by eBPF programs. The CLI (`main.rs`, `cli/`) is a thin adapter over this library.
pub mod api;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod domain_state;
pub mod domains;
pub mod enforcement;
pub mod events;
pub mod files;
pub mod identity;
pub mod image;
pub mod ingress;
pub mod init;
pub mod launch;
pub mod learned;
pub mod lifecycle;
pub mod limits;
pub mod paths;
pub mod policy;
pub mod private_files;
pub mod proxy;
pub mod sandbox;
pub mod scoping;
pub mod seccomp;
pub mod tarball;
pub mod upstream_proxy;
pub mod user;
pub mod view;
pub mod workload;

/// An error and its causes on one line, each cause once: the agent's error format.
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
