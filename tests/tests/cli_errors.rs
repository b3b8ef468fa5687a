//! Bad input: exit 125 and one line on stderr that names the culprit; nothing is started.
use sandbox_tests::{agent_cmd, helpers, sh};

#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_inputs_are_refused_with_one_line_naming_the_culprit() {
    let unknown_key = helpers().join("unknown-key.toml");
    std::fs::write(
        &unknown_key,
        "network = \"allowlist\"\nallowed = [\"1.1.1.1\"]\n",
    )
    .expect("write");
    let bad_entry = helpers().join("bad-entry.toml");
    std::fs::write(
        &bad_entry,
        "network = \"allowlist\"\nallow_out = [\"300.1.1.1\"]\n",
    )
    .expect("write");
    sh(&format!(
        "chmod 644 {} {}",
        unknown_key.display(),
        bad_entry.display()
    ));
    let unknown_key = unknown_key.to_str().expect("utf-8").to_owned();
    let bad_entry = bad_entry.to_str().expect("utf-8").to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--allow-out", "10.0.0.300"],
            "invalid --allow-out entry \"10.0.0.300\": not a valid IPv4 address or CIDR",
        ),
        (
            vec!["--allow-out", "10.0.0.1/8"],
            "host bits are set (did you mean 10.0.0.0/8?)",
        ),
        (
            vec!["--allow-out", "10.0.0.0/33"],
            "prefix length must be 0..=32",
        ),
        (
            vec!["--deny-out", "fe80::1::2"],
            "invalid --deny-out entry \"fe80::1::2\": not a valid IPv6 address",
        ),
        (
            vec!["--allow-out", "@nope"],
            "invalid --allow-out entry \"@nope\": unknown preset",
        ),
        (
            vec!["--network", "allowlist", "--allow-out", "*.bad_name.org"],
            "invalid --allow-out entry \"*.bad_name.org\": invalid domain name",
        ),
        (
            vec!["--network", "blocked", "--allow-out", "pypi.org"],
            "has no effect with --network blocked",
        ),
        (
            vec![
                "--network",
                "allowlist",
                "--allow-out",
                "pypi.org",
                "--upstream-dns",
                "dns.example",
            ],
            "invalid upstream DNS server \"dns.example\"",
        ),
        (
            vec![
                "--network",
                "allowlist",
                "--allow-out",
                "pypi.org",
                "--upstream-dns",
                "127.0.0.1",
                "--flow-log",
                "/nonexistent/dir/flows.log",
            ],
            "cannot open --flow-log /nonexistent/dir/flows.log",
        ),
        (
            vec!["--network", "allowlist", "--upstream-dns", "10.0.0.2:x"],
            "invalid upstream DNS server \"10.0.0.2:x\"",
        ),
        (vec!["--allow-out", "*."], "empty wildcard"),
        (vec!["--allow-out", "bad_name.com"], "invalid domain name"),
        (
            vec!["--network", "blocked", "--allow-out", "1.1.1.1"],
            "has no effect with --network blocked",
        ),
        (
            vec!["--allow-out", "1.1.1.1"],
            "has no effect with --network blocked",
        ),
        (
            vec!["--network", "bogus"],
            "invalid value 'bogus' for '--network <MODE>'",
        ),
        (
            vec!["--precedence", "loudest"],
            "invalid value 'loudest' for '--precedence",
        ),
        (
            vec!["--policy", "/nonexistent/policy.toml"],
            "cannot read policy file /nonexistent/policy.toml",
        ),
        (vec!["--policy", &unknown_key], "unknown field `allowed`"),
        (
            vec!["--policy", &bad_entry],
            "invalid allow_out entry \"300.1.1.1\" in /",
        ),
        (vec!["--user", "root"], "refusing to run a workload as root"),
        (vec!["--user", "0:0"], "refusing to run a workload as root"),
        (
            vec!["--user", "no-such-user-x"],
            "invalid --user \"no-such-user-x\": no such user",
        ),
        (
            vec!["--timeout", "soon"],
            "invalid value 'soon' for '--timeout",
        ),
        (
            vec!["--cap-add", "SYS_ADMIN"],
            "invalid --cap-add \"SYS_ADMIN\"",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["--", "sh", "-c", "echo the workload ran"]);
        let run = agent_cmd(&args);
        assert_eq!(run.code, 125, "{flags:?}: {run:#?}");
        assert!(
            !run.stdout.contains("the workload ran"),
            "{flags:?} started the workload: {run:#?}"
        );
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{flags:?}: not one line: {run:#?}"
        );
        assert!(
            run.stderr.starts_with("sandbox-agent: "),
            "{flags:?}: {run:#?}"
        );
        assert!(
            run.stderr.contains(expected),
            "{flags:?}: expected {expected:?} in {:?}",
            run.stderr
        );
    }
    // A missing command is a usage error too.
    let run = agent_cmd(&["run", "--network", "open"]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
}

/// The bad-entry policy file names the file and the key.
#[test]
fn policy_file_errors_name_the_file_and_key() {
    let file = helpers().join("bad-entry-2.toml");
    std::fs::write(
        &file,
        "network = \"allowlist\"\nallow_out = [\"10.0.0.0/8\", \"@bogus\"]\n",
    )
    .expect("write");
    sh(&format!("chmod 644 {}", file.display()));
    let run = agent_cmd(&[
        "run",
        "--policy",
        file.to_str().expect("utf-8"),
        "--",
        "true",
    ]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(
        run.stderr.contains(&format!(
            "invalid allow_out entry \"@bogus\" in {}: unknown preset",
            file.display()
        )),
        "{run:#?}"
    );
}
