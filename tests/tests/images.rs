//! Root directories and mounts: a sandbox runs from a directory the test builds (busybox,
//! its own `/etc/os-release`), read-only below a private writable layer, and sees host paths
//! bound in with `--mount`, read-only or writable. Judged from inside and on the host.
use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use sandbox_tests::{Holder, agent_cmd, daemon::TestDaemon, helpers, sh};

/// The default range of sandboxes' own uids (identity.rs).
const UID_FIRST: u32 = 0x6000_0000;

/// A root directory of busybox applets with an os-release of its own, readable by all.
fn busybox_root(tag: &str) -> PathBuf {
    let dir = helpers().join(format!("rootfs-{tag}"));
    let _ = fs::remove_dir_all(&dir);
    for sub in ["bin", "etc", "proc", "dev", "sys", "tmp", "root", "home"] {
        fs::create_dir_all(dir.join(sub)).expect("rootfs dir");
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy busybox (busybox-static)");
    for applet in [
        "sh", "cat", "ls", "id", "echo", "touch", "test", "grep", "head", "wc", "sleep", "whoami",
        "stat",
    ] {
        symlink("busybox", dir.join("bin").join(applet)).expect("applet link");
    }
    fs::write(
        dir.join("etc/os-release"),
        format!("ID=sa-test-os\nNAME=\"sandbox test os {tag}\"\n"),
    )
    .expect("os-release");
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(dir.join("etc/group"), "root:x:0:\n").expect("group");
    // A link that points out of the root: it must resolve inside it.
    symlink("/etc/os-release", dir.join("etc/os-link")).expect("link");
    sh(&format!("chmod -R a+rX {}", dir.display()));
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

#[test]
fn a_root_directory_runs_with_its_own_files_and_writes_stay_private() {
    let root = busybox_root("own");
    let run = agent_cmd(&[
        "run",
        "--embedded",
        "--rootfs",
        path(&root),
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/os-release; whoami; echo hi > /tmp/new && cat /tmp/new; \
         echo home > $HOME/f && cat $HOME/f; echo own > /etc/new && cat /etc/new; \
         stat -c %U /etc/os-release; ls /; \
         test -s /etc/resolv.conf && echo resolv; cat /etc/os-link | head -1",
    ]);
    assert_eq!(run.code, 0, "{run:#?}");
    let out = &run.stdout;
    assert!(out.contains("ID=sa-test-os"), "{out}");
    assert!(out.contains("\nsandbox\n"), "not the sandbox's user: {out}");
    // The directory's root-owned files are the sandbox's user's (idmapped): it may change
    // them, in its private layer only.
    assert!(out.contains("\nhi\nhome\nown\nsandbox\n"), "{out}");
    assert!(
        !out.contains("usr") && !out.contains("var"),
        "host directories: {out}"
    );
    assert!(out.contains("resolv"), "no name resolution file: {out}");
    assert!(
        out.ends_with("ID=sa-test-os\n"),
        "a link resolved outside: {out}"
    );
    // The directory itself did not change.
    assert!(
        !root.join("tmp/new").exists()
            && !root.join("home/sandbox").exists()
            && !root.join("etc/new").exists()
    );

    // Two sandboxes of one root do not see each other's writes.
    let a = Holder::start(&[
        "run",
        "--embedded",
        "--rootfs",
        path(&root),
        "--",
        "/bin/sh",
        "-c",
        "echo a > /tmp/from-a; echo a > $HOME/from-a; echo written; sleep 20",
    ]);
    a.line("written");
    let b = agent_cmd(&[
        "run",
        "--embedded",
        "--rootfs",
        path(&root),
        "--",
        "/bin/sh",
        "-c",
        "test -e /tmp/from-a -o -e $HOME/from-a && echo SEEN || echo absent",
    ]);
    drop(a);
    assert_eq!(b.stdout.trim(), "absent", "{b:#?}");
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn bad_root_directories_are_refused_in_one_line() {
    let root = busybox_root("bad");
    let file = root.join("etc/os-release");
    for (args, code, message) in [
        (vec!["--rootfs", path(&file)], 125, "not a directory"),
        (
            vec!["--rootfs", "/nonexistent-sa-root"],
            125,
            "does not exist",
        ),
        (
            vec!["--rootfs", path(&root), "--", "/bin/python3"],
            127,
            "command not found in the root directory",
        ),
    ] {
        let mut all = vec!["run", "--embedded"];
        all.extend_from_slice(&args);
        if !args.contains(&"--") {
            all.extend_from_slice(&["--", "/bin/true"]);
        }
        let run = agent_cmd(&all);
        assert_eq!(run.code, code, "{args:?}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains(message), "{args:?}: {run:#?}");
    }
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn mounts_bind_host_paths_read_only_or_writable() {
    let base = helpers().join(format!("mounts-{}", std::process::id()));
    let (data, out) = (base.join("data"), base.join("out"));
    fs::create_dir_all(&data).expect("data");
    fs::create_dir_all(&out).expect("out");
    fs::write(data.join("in.txt"), "input").expect("input");
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).expect("chmod");
    sh(&format!("chmod -R a+rX {}", data.display()));
    let ro = format!("{}:/tmp/data:ro", data.display());
    let rw = format!("{}:/home/out", out.display());
    for root in [None, Some(busybox_root("mounts"))] {
        let mut args = vec!["run", "--embedded", "--mount", &ro, "--mount", &rw];
        if let Some(r) = &root {
            args.extend_from_slice(&["--rootfs", path(r)]);
        }
        args.extend_from_slice(&[
            "--",
            "/bin/sh",
            "-c",
            "cat /tmp/data/in.txt; echo; (echo x > /tmp/data/new) 2>/dev/null && echo WROTE || echo ro; \
             echo result > /home/out/r.txt && echo rw",
        ]);
        let run = agent_cmd(&args);
        assert_eq!(run.code, 0, "{run:#?}");
        assert_eq!(run.stdout, "input\nro\nrw\n", "{run:#?}");
        assert!(!data.join("new").exists());
        let written = out.join("r.txt");
        assert_eq!(fs::read_to_string(&written).expect("written"), "result\n");
        let owner = fs::metadata(&written).expect("meta").uid();
        assert!(
            owner >= UID_FIRST,
            "written as uid {owner}, not the sandbox's own"
        );
        fs::remove_file(&written).expect("clean");
        if let Some(r) = root {
            let _ = fs::remove_dir_all(r);
        }
    }
    let _ = fs::remove_dir_all(&base);
}

#[test]
fn bad_mounts_are_refused_in_one_line_on_every_path() {
    let base = helpers().join(format!("badmounts-{}", std::process::id()));
    let state = base.join("state");
    fs::create_dir_all(base.join("src")).expect("src");
    fs::create_dir_all(&state).expect("state");
    let config = base.join("config.toml");
    fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).expect("config");
    let src = base.join("src").display().to_string();
    let cases = [
        (
            "/nonexistent-sa-src:/tmp/x".to_owned(),
            "source /nonexistent-sa-src: does not exist",
        ),
        (format!("{src}:/proc/x"), "is below /proc"),
        (
            format!("{src}:/opt/sa-not-there"),
            "does not exist, and the sandbox's root",
        ),
        (format!("{src}:relative"), "use an absolute path"),
        (format!("{}:/tmp/s", state.display()), "the agent's state"),
        ("nocolon".to_owned(), "use SRC:DST or SRC:DST:ro"),
    ];
    for (spec, message) in &cases {
        let run = agent_cmd(&[
            "run",
            "--embedded",
            "--config",
            path(&config),
            "--mount",
            spec,
            "--",
            "/bin/true",
        ]);
        assert_eq!(run.code, 125, "{spec}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains(message), "{spec}: {run:#?}");
    }
    // The daemon says the same, as a 400.
    let d = TestDaemon::start();
    let (status, body) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(r#"{"command":["/bin/true"],"mounts":[{"source":"/nonexistent-sa-src","target":"/tmp/x"}]}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("source /nonexistent-sa-src: does not exist")),
        "{body}"
    );
    let _ = fs::remove_dir_all(&base);
}

#[test]
fn daemon_sandboxes_run_from_a_root_directory_and_execs_enter_it() {
    let root = busybox_root("daemon");
    let d = TestDaemon::start();
    let id = d.ok(&[
        "create",
        "--rootfs",
        path(&root),
        "--",
        "/bin/sh",
        "-c",
        "echo main > /tmp/mark; exec sleep 60",
    ]);
    let seen = (0..50)
        .map(|_| {
            thread::sleep(Duration::from_millis(20));
            d.ok(&[
                "exec",
                &id,
                "--",
                "/bin/sh",
                "-c",
                "cat /etc/os-release /tmp/mark 2>/dev/null || true",
            ])
        })
        .find(|o| o.ends_with("main"));
    let seen = seen.expect("the exec does not see the sandbox's root");
    assert!(seen.contains("ID=sa-test-os"), "{seen}");
    assert_eq!(d.inspect(&id)["rootfs"], path(&root));
    d.cli(&["kill", &id]);
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn cp_moves_files_into_and_out_of_a_blocked_sandbox_as_its_user() {
    let d = TestDaemon::start();
    let id = d.ok(&[
        "create",
        "--network",
        "blocked",
        "--",
        "/bin/sh",
        "-c",
        "echo from-inside > /tmp/out.txt; ln -s / /tmp/root-link; ln -s /tmp /tmp/tmp-link; exec sleep 60",
    ]);
    let uid = d.inspect(&id)["uid"].as_u64().expect("uid");
    let base = helpers().join(format!("cp-{}", std::process::id()));
    fs::create_dir_all(&base).expect("base");
    let input = base.join("in.bin");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&input, &payload).expect("input");
    // In: the file arrives whole, owned by the sandbox's user.
    d.ok(&["cp", path(&input), &format!("{id}:/tmp/in.bin")]);
    let seen = d.ok(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "stat -c '%u %s' /tmp/in.bin; md5sum < /tmp/in.bin | cut -c1-32",
    ]);
    let md5 = sh(&format!("md5sum < {} | cut -c1-32", input.display()));
    assert_eq!(
        seen,
        format!("{uid} {}\n{}", payload.len(), md5.trim()),
        "{seen}"
    );
    // Out, also through a link inside the sandbox.
    let (out, via_link) = (base.join("out.txt"), base.join("via-link.txt"));
    for (remote, local) in [("/tmp/out.txt", &out), ("/tmp/tmp-link/out.txt", &via_link)] {
        let _ = wait_for_file(&d, &id, remote);
        d.ok(&["cp", &format!("{id}:{remote}"), path(local)]);
        assert_eq!(fs::read_to_string(local).expect("copied"), "from-inside\n");
    }
    // Nothing leaves the sandbox's view, nor is read with more than its user's rights: `..`
    // stays at its root, a link to / is its own /, the agent's state is not there, and the
    // host's shadow file (visible read-only in the default view) is not the user's to read.
    let state = d.dir.join("state");
    fs::write(state.join("sa-marker"), "agent state").expect("marker");
    // A host file anyone may read, in a host directory the sandbox's view covers (its /tmp
    // is its own): only the resolving inside the sandbox keeps it out of reach.
    let hidden = PathBuf::from(format!("/tmp/sa-cp-{}", std::process::id()));
    fs::create_dir_all(&hidden).expect("hidden dir");
    fs::write(hidden.join("secret"), "host only").expect("secret");
    sh(&format!(
        "chmod 755 {0} && chmod 644 {0}/secret",
        hidden.display()
    ));
    // A host file only root's group may read: the daemon has that group (as under sudo),
    // the sandbox's user has not.
    let group_only = helpers().join(format!("group-only-{}", std::process::id()));
    fs::write(&group_only, "root group only").expect("group-only file");
    sh(&format!(
        "chown 0:0 {0} && chmod 0440 {0}",
        group_only.display()
    ));
    for remote in [
        group_only.display().to_string(),
        format!("/../../../{}/sa-marker", state.display()),
        format!("/tmp/root-link{}/sa-marker", state.display()),
        format!("/tmp/root-link{}/secret", hidden.display()),
        format!("/../..{}/secret", hidden.display()),
        "/etc/shadow".to_owned(),
    ] {
        let run = d.cli(&["cp", &format!("{id}:{remote}"), path(&base.join("stolen"))]);
        assert_ne!(run.code, 0, "{remote}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(!base.join("stolen").exists(), "{remote} was read");
    }
    // Writing through a link to / stays in the sandbox's view (where this host directory is
    // read-only), never on the host, though the sandbox's user could write there.
    let open_dir = PathBuf::from(format!("/tmp/sa-cp-open-{}", std::process::id()));
    fs::create_dir_all(&open_dir).expect("open dir");
    sh(&format!("chmod 777 {}", open_dir.display()));
    let host_target = open_dir.join("planted");
    let run = d.cli(&[
        "cp",
        path(&input),
        &format!("{id}:/tmp/root-link{}", host_target.display()),
    ]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(!host_target.exists(), "a write left the sandbox");
    // Bad input: a relative path, an ended sandbox.
    let run = d.cli(&["cp", path(&input), &format!("{id}:relative")]);
    assert!(run.stderr.contains("invalid path \"relative\""), "{run:#?}");
    d.cli(&["kill", &id]);
    let run = d.cli(&["cp", path(&input), &format!("{id}:/tmp/late")]);
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("has ended"), "{run:#?}");
    let _ = fs::remove_dir_all(&base);
    let _ = fs::remove_dir_all(&hidden);
    let _ = fs::remove_dir_all(&open_dir);
}

#[test]
fn cp_copies_directories_as_tar_streams_both_ways_without_leaving_either_root() {
    let d = TestDaemon::start_with("max_file_bytes = 1000000");
    let id = d.ok(&[
        "create",
        "--network",
        "blocked",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -p /tmp/outdir/sub && echo result > /tmp/outdir/result.txt && \
         head -c 300000 /dev/urandom > /tmp/outdir/sub/blob && ln -s /etc/passwd /tmp/outdir/abs && \
         ln -s ../../../../.. /tmp/outdir/up && exec sleep 60",
    ]);
    let uid = d.inspect(&id)["uid"].as_u64().expect("uid");
    let base = helpers().join(format!("cp-dir-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(base.join("in/sub/deeper")).expect("input tree");
    fs::write(base.join("in/a.txt"), "alpha\n").expect("a");
    let blob: Vec<u8> = (0..250_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(base.join("in/sub/deeper/b.bin"), &blob).expect("b");
    symlink("/etc/hostname", base.join("in/host-link")).expect("link");

    // In: the tree arrives whole, owned by the sandbox's user, the link still a link.
    d.ok(&["cp", path(&base.join("in")), &format!("{id}:/tmp/in")]);
    let seen = d.ok(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "cd /tmp/in && cat a.txt && stat -c '%u' sub/deeper/b.bin && \
         md5sum < sub/deeper/b.bin | cut -c1-32 && readlink host-link",
    ]);
    let md5 = sh(&format!(
        "md5sum < {} | cut -c1-32",
        base.join("in/sub/deeper/b.bin").display()
    ));
    assert_eq!(
        seen,
        format!("alpha\n{uid}\n{}\n/etc/hostname", md5.trim()),
        "{seen}"
    );
    // A second copy to the same path is refused, and leaves no partial directory.
    let run = d.cli(&["cp", path(&base.join("in")), &format!("{id}:/tmp/in")]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(run.stderr.contains("/tmp/in: it exists"), "{run:#?}");
    let listing = d.ok(&["exec", &id, "--", "/bin/ls", "-a", "/tmp"]);
    assert!(!listing.contains("sa-partial"), "{listing}");

    // Out: into an existing local directory under its own name, links kept as links.
    let _ = wait_for_file(&d, &id, "/tmp/outdir/up");
    d.ok(&["cp", &format!("{id}:/tmp/outdir"), path(&base)]);
    let out = base.join("outdir");
    assert_eq!(
        fs::read_to_string(out.join("result.txt")).expect("result"),
        "result\n"
    );
    assert_eq!(
        fs::metadata(out.join("sub/blob")).expect("blob").len(),
        300_000
    );
    assert_eq!(
        fs::read_link(out.join("abs")).expect("link"),
        PathBuf::from("/etc/passwd")
    );
    assert!(
        fs::symlink_metadata(out.join("up"))
            .expect("up")
            .is_symlink()
    );
    d.cli(&["kill", &id]);
    let _ = fs::remove_dir_all(&base);
}

#[test]
fn hostile_tars_and_trees_over_the_limit_are_refused_and_leave_nothing() {
    let d = TestDaemon::start_with("max_file_bytes = 1000000");
    let id = d.ok(&["create", "--network", "blocked", "--", "/bin/sleep", "60"]);
    let base = helpers().join(format!("cp-hostile-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).expect("base");
    // A hostile tar through the API: `..` entries are refused and nothing is left; a link to
    // / planted by an entry keeps later entries inside the new directory.
    let hostile = sandbox_tests::oci::layer_tar(&[
        sandbox_tests::oci::Entry::File("ok.txt", b"fine\n", 0o644),
        sandbox_tests::oci::Entry::File("../../../../escaped-by-tar", b"out\n", 0o644),
    ]);
    let (status, body) = d.http(
        "PUT",
        &format!("/v1/sandboxes/{id}/archive?path=/tmp/hostile"),
        Some(&hostile),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("leaves the directory"), "{body}");
    let run = d.cli(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "ls -a /tmp; ls / /tmp/hostile",
    ]);
    assert!(
        !run.stdout.contains("escaped-by-tar") && !run.stdout.contains("sa-partial"),
        "{run:#?}"
    );
    let planted = format!("etc/planted-by-tar-{}", std::process::id());
    let through_link = sandbox_tests::oci::layer_tar(&[
        sandbox_tests::oci::Entry::Symlink("root", "/"),
        sandbox_tests::oci::Entry::File(&format!("root/{planted}"), b"x\n", 0o644),
    ]);
    let (status, body) = d.http(
        "PUT",
        &format!("/v1/sandboxes/{id}/archive?path=/tmp/linked"),
        Some(&through_link),
    );
    assert_eq!(status, 204, "{body}");
    let inside = d.ok(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        &format!("cat /tmp/linked/{planted}; test -e /{planted} || echo not-at-root"),
    ]);
    assert_eq!(inside, "x\nnot-at-root", "{inside}");
    assert!(
        !Path::new("/").join(&planted).exists(),
        "a tar entry reached the host"
    );

    // The size limit (max_file_bytes) holds for a tree's files together, both ways.
    fs::create_dir_all(base.join("big")).expect("big");
    for i in 0..3 {
        fs::write(base.join(format!("big/{i}")), vec![7u8; 400_000]).expect("big file");
    }
    let run = d.cli(&["cp", path(&base.join("big")), &format!("{id}:/tmp/big")]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(run.stderr.contains("larger than the limit"), "{run:#?}");
    d.ok(&[
        "exec",
        &id,
        "--",
        "/bin/sh",
        "-c",
        "mkdir /tmp/huge && for i in 1 2 3; do head -c 400000 /dev/zero > /tmp/huge/$i; done",
    ]);
    let run = d.cli(&["cp", &format!("{id}:/tmp/huge"), path(&base.join("huge"))]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(run.stderr.contains("larger than the limit"), "{run:#?}");
    assert!(!base.join("huge").exists());
    d.cli(&["kill", &id]);
    let _ = fs::remove_dir_all(&base);
}

/// Waits until the sandbox shows `path` (its workload writes it at start).
fn wait_for_file(d: &TestDaemon, id: &str, path: &str) -> bool {
    (0..100).any(|_| {
        let seen = d
            .cli(&[
                "exec",
                id,
                "--",
                "/bin/sh",
                "-c",
                &format!("test -e {path}"),
            ])
            .code
            == 0;
        if !seen {
            thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}
