//! `sandbox-agent state`: what the kernel enforces right now, as JSON.
use sandbox_agent::{
    enforcement::{self, Enforcement},
    paths::Paths,
    sandbox,
};
use serde_json::json;

pub fn main() -> i32 {
    let paths = Paths::default();
    let (mut enforcement, install) = match Enforcement::open(&paths) {
        Ok(e) => e,
        Err(e) => return super::fail(&e),
    };
    sandbox::collect_orphans(&paths, &mut enforcement);
    let rules_by_policy = enforcement.rules_by_policy();
    let sandboxes: Vec<_> = enforcement
        .sandboxes()
        .into_iter()
        .map(|(cgroup_id, entry)| {
            let c = enforcement.counters(cgroup_id).unwrap_or_default();
            let rules = rules_by_policy.get(&entry.policy_id).copied().unwrap_or_default();
            json!({
                "cgroup_id": cgroup_id,
                "cgroup": sandbox::cgroup_path_of(&enforcement.parent_cgroup, cgroup_id),
                "policy_id": entry.policy_id,
                "default_allow": entry.default_verdict == 1,
                "precedence": entry.precedence,
                "dns_port": entry.dns_port,
                "proxy_port": entry.proxy_port,
                "rules": { "allow_v4": rules[0], "deny_v4": rules[1], "allow_v6": rules[2], "deny_v6": rules[3] },
                "counters": {
                    "allowed_packets": c.allowed_packets, "allowed_bytes": c.allowed_bytes,
                    "denied_packets": c.denied_packets, "denied_bytes": c.denied_bytes,
                    "denied_connects": c.denied_connects, "denied_sends": c.denied_sends,
                    "dns_redirects": c.dns_redirects, "proxy_redirects": c.proxy_redirects,
                    "learned_connects": c.learned_connects,
                },
            })
        })
        .collect();
    let cgroups = sandbox_agent::cgroup::child_cgroups(&enforcement.parent_cgroup);
    let programs: Vec<_> = enforcement::program_stats()
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "verified_instructions": p.verified_instructions,
                "translated_bytes": p.translated_bytes,
            })
        })
        .collect();
    // What the host cannot give sandboxes: missing Landlock scopes, non-local binds, and the
    // cgroup v2 controllers that --memory, --cpus and --pids need.
    let controllers = sandbox_agent::cgroup::find_cgroup2_mount()
        .ok()
        .and_then(|root| std::fs::read_to_string(root.join("cgroup.controllers")).ok())
        .unwrap_or_default();
    let controllers: Vec<&str> = controllers.split_whitespace().collect();
    let state = json!({
        "host_gaps": sandbox_agent::scoping::host_gaps(),
        "cgroup_v2_controllers": controllers,
        "programs": programs,
        "pin_dir": paths.pin_dir,
        "parent_cgroup": enforcement.parent_cgroup,
        "install": format!("{install:?}").to_lowercase(),
        "sandboxes": sandboxes,
        "sandbox_cgroups": cgroups,
        "total_rules": rules_by_policy.values().flatten().sum::<usize>(),
        "rules_by_policy": rules_by_policy
            .iter()
            .map(|(id, kinds)| (id.to_string(), kinds.iter().sum::<usize>()))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "policy_ids": enforcement.policy_id_count(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&state).expect("JSON of plain values")
    );
    0
}
