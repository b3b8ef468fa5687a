//! OCI images as a sandbox's root: layouts and archives the test writes itself (tar layers and
//! JSON, hostile entries included) and images made by buildah and umoci, run with their own
//! files, `Env`, `WorkingDir` and `Cmd`; the layer cache judged on the host (what it holds,
//! what a refused image left behind, what prune removes).
use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use sandbox_tests::{
    agent_cmd,
    daemon::TestDaemon,
    helpers,
    oci::{Entry, Layer, blob_path, busybox_layer, layer_tar, sha256, write_layout},
    sh,
};

/// A private state directory (its own layer cache) through a config file.
struct State {
    dir: PathBuf,
    config: PathBuf,
}

impl State {
    fn new(tag: &str) -> Self {
        let dir = helpers().join(format!("oci-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("state dir");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!("state_dir = \"{}\"\n", dir.join("state").display()),
        )
        .expect("config");
        Self { dir, config }
    }

    fn run(&self, args: &[&str]) -> sandbox_tests::Run {
        let mut all = vec!["run", "--embedded", "--config", path(&self.config)];
        all.extend_from_slice(args);
        agent_cmd(&all)
    }

    /// Names in a directory of the cache (`layers`, `tmp`...), sorted.
    fn cache(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join("state/images").join(sub))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn plain(tar: Vec<u8>) -> Layer {
    Layer {
        tar,
        gzip: false,
        media_type: None,
    }
}

fn gzipped(tar: Vec<u8>) -> Layer {
    Layer {
        tar,
        gzip: true,
        media_type: None,
    }
}

/// Three layers: busybox (gzip), the image's files, then a whiteout and a link to a host
/// directory with an entry written through it.
fn test_image(dir: &Path, host_dir: &Path) -> String {
    let middle = layer_tar(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/os-release", b"ID=sa-oci-test\n", 0o644),
        Entry::File("etc/gone", b"whited out above\n", 0o644),
        // An absolute link to a host file: it must resolve in the image, which lacks it.
        Entry::Symlink("etc/host-shadow", "/etc/shadow"),
        Entry::Dir("app", 0o777),
        Entry::File("app/hello", b"hello from layer 2\n", 0o644),
        Entry::Hardlink("app/hello-link", "app/hello"),
    ]);
    let host = path(host_dir);
    let top = layer_tar(&[
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::Symlink("out", host),
        Entry::File("out/planted", b"through a link\n", 0o644),
    ]);
    write_layout(
        dir,
        &[gzipped(busybox_layer()), plain(middle), gzipped(top)],
        &serde_json::json!({
            "Env": ["PATH=/bin", "GREETING=hello-from-env"],
            "WorkingDir": "/app",
            "Cmd": ["/bin/sh", "-c",
                    "echo $GREETING; pwd; cat /etc/os-release hello-link; \
                     cat /etc/gone 2>&1; cat /etc/host-shadow 2>&1; ls /out; id -u; \
                     echo root-writes > /etc/os-release && cat /etc/os-release"],
        }),
    )
}

#[test]
fn an_image_runs_with_its_env_cmd_workdir_and_layers_and_is_unpacked_once() {
    let state = State::new("run");
    let host_dir = state.dir.join("host-dir");
    fs::create_dir_all(&host_dir).expect("host dir");
    let image = state.dir.join("layout");
    let digest = test_image(&image, &host_dir);

    let run = state.run(&["--image", path(&image)]);
    assert_eq!(run.code, 0, "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "hello-from-env",
            "/app",
            "ID=sa-oci-test",
            "hello from layer 2",
            "cat: can't open '/etc/gone': No such file or directory"
        ],
        "{run:#?}"
    );
    assert!(
        lines[5].contains("No such file"),
        "an absolute link resolved outside the image: {run:#?}"
    );
    // The entry written through the link landed in the layer, not in the host's directory.
    assert_eq!(lines[6], "planted", "{run:#?}");
    assert_eq!(fs::read_dir(&host_dir).expect("host dir").count(), 0);
    // User unset: root of the sandbox's own user namespace, which owns what the image's root
    // owns (idmapped layers): it changes it in its private layer, never in the cache.
    assert_eq!(lines[7..], ["0", "root-writes"], "{run:#?}");

    // The cache: three layers by diff id, nothing left in tmp/, the image recorded.
    let layers = state.cache("layers");
    assert_eq!(layers.len(), 3, "{layers:?}");
    assert!(state.cache("tmp").is_empty());
    let info = state
        .dir
        .join("state/images/layers")
        .join(&layers[0])
        .join("info.json");
    let unpacked_at = fs::metadata(&info)
        .expect("info")
        .modified()
        .expect("mtime");

    // Flags override the image's defaults; the cached layers are used as they are.
    let run = state.run(&[
        "--image",
        path(&image),
        "--env",
        "GREETING=from-flag",
        "--cwd",
        "/etc",
        "--",
        "/bin/sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(run.stdout, "from-flag\n/etc\n", "{run:#?}");
    let run = state.run(&[
        "--image",
        path(&image),
        "--entrypoint",
        "/bin/echo",
        "--",
        "a",
        "b",
    ]);
    assert_eq!(run.stdout, "a b\n", "{run:#?}");
    assert_eq!(state.cache("layers"), layers);
    assert_eq!(
        fs::metadata(&info)
            .expect("info")
            .modified()
            .expect("mtime"),
        unpacked_at,
        "a cached layer was unpacked again"
    );

    // The same layout as an archive (what `oci-archive:` writes).
    let archive = state.dir.join("image.tar");
    sh(&format!(
        "tar -C {} -cf {} .",
        image.display(),
        archive.display()
    ));
    let run = state.run(&["--image", path(&archive), "--", "cat", "/etc/os-release"]);
    assert_eq!(run.stdout, "ID=sa-oci-test\n", "{run:#?}");

    // `images` lists it with its size; prune with no sandbox live removes every layer.
    let listed = sandbox_tests::agent_cmd(&["images", "--json", "--config", path(&state.config)]);
    let listing: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(listing["images"][0]["digest"], digest.as_str(), "{listing}");
    assert_eq!(listing["images"][0]["layers"], 3, "{listing}");
    assert!(
        listing["images"][0]["bytes"].as_u64().expect("bytes") > 500_000,
        "{listing}"
    );
    let pruned = agent_cmd(&["images", "prune", "--config", path(&state.config)]);
    assert_eq!(pruned.code, 0, "{pruned:#?}");
    assert!(pruned.stdout.starts_with("removed 3 layers"), "{pruned:#?}");
    assert!(state.cache("layers").is_empty() && state.cache("tmp").is_empty());
}

#[test]
fn a_non_root_image_user_runs_as_the_sandbox_user_and_owns_its_files() {
    let state = State::new("user");
    let image = state.dir.join("layout");
    let files = layer_tar(&[
        Entry::Dir("etc", 0o755),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        Entry::Dir("home", 0o755),
        Entry::OwnedDir("home/app", 0o755, 1000),
    ]);
    write_layout(
        &image,
        &[gzipped(busybox_layer()), plain(files)],
        &serde_json::json!({
            "User": "app",
            "Cmd": ["/bin/sh", "-c",
                    "id -u; echo mine > /home/app/out && cat /home/app/out; \
                     (echo x > /etc/new) 2>/dev/null || echo etc-is-roots"],
        }),
    );
    let run = state.run(&["--image", path(&image)]);
    assert_eq!(run.code, 0, "{run:#?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    // The sandbox's own uid (not root, not the image's 1000), owning app's home.
    let uid: u32 = lines[0].parse().expect("uid");
    assert!(uid >= 0x6000_0000, "{run:#?}");
    assert_eq!(lines[1..], ["mine", "etc-is-roots"], "{run:#?}");
    // --root: root's files are its own again.
    let run = state.run(&[
        "--image",
        path(&image),
        "--root",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /etc/new && echo etc-is-mine",
    ]);
    assert_eq!(run.stdout, "etc-is-mine\n", "{run:#?}");
    // A User the image does not list is refused.
    write_layout(
        &image,
        &[gzipped(busybox_layer())],
        &serde_json::json!({"User": "ghost", "Cmd": ["/bin/true"]}),
    );
    let run = state.run(&["--image", path(&image)]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(
        run.stderr.contains("no user \"ghost\" in its /etc/passwd"),
        "{run:#?}"
    );
}

#[test]
fn a_docker_save_archive_runs_with_its_layers_checked() {
    let state = State::new("docker-save");
    let layer = busybox_layer();
    let files = layer_tar(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/os-release", b"ID=sa-docker-save\n", 0o644),
    ]);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/cat", "/etc/os-release"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer), sha256(&files)]},
    })
    .to_string();
    let config_name = format!("{}.json", &sha256(config.as_bytes())[7..]);
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": ["test:latest"],
        "Layers": ["a/layer.tar", "b/layer.tar"],
    }])
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        ("a/layer.tar", &layer[..]),
        ("b/layer.tar", &files[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, name, data)
            .expect("append");
    }
    let file = state.dir.join("saved.tar");
    fs::write(&file, archive.into_inner().expect("tar")).expect("archive");
    let run = state.run(&["--image", path(&file)]);
    assert_eq!(run.stdout, "ID=sa-docker-save\n", "{run:#?}");
}

#[test]
fn bad_images_are_refused_in_one_line_and_leave_nothing_behind() {
    let state = State::new("bad");
    let image = state.dir.join("layout");
    let one_line = |args: &[&str], needle: &str| {
        let run = state.run(args);
        assert_eq!(run.code, 125, "{args:?}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains(needle),
            "{args:?}: want {needle:?}: {run:#?}"
        );
        assert!(state.cache("layers").is_empty(), "{args:?} left a layer");
        assert!(state.cache("tmp").is_empty(), "{args:?} left an unpack");
        run.stderr
    };
    let small = || {
        layer_tar(&[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/os-release", b"ID=x\n", 0o644),
        ])
    };
    let cmd = serde_json::json!({"Cmd": ["/bin/true"]});

    // A layer whose bytes are not those its digest names.
    write_layout(&image, &[gzipped(small())], &cmd);
    let index = read_json(&image.join("index.json"));
    let manifest = read_json(&blob_path(
        &image,
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ));
    let layer_blob = blob_path(&image, manifest["layers"][0]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&layer_blob).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    fs::write(&layer_blob, &bytes).unwrap();
    one_line(&["--image", path(&image)], "does not match its digest");

    // A layer whose media type is not a layer's.
    write_layout(
        &image,
        &[Layer {
            tar: small(),
            gzip: false,
            media_type: Some("application/x-not-a-layer".into()),
        }],
        &cmd,
    );
    one_line(
        &["--image", path(&image)],
        "unknown media type application/x-not-a-layer",
    );

    // A layer with `../` entries: refused, and nothing written outside the cache.
    let outside = state.dir.join("state/images/escaped");
    write_layout(
        &image,
        &[plain(layer_tar(&[
            Entry::Dir("etc", 0o755),
            Entry::File("../escaped", b"out\n", 0o644),
            Entry::File("../../../escaped", b"out\n", 0o644),
        ]))],
        &cmd,
    );
    one_line(&["--image", path(&image)], "leaves the directory");
    assert!(!outside.exists() && !state.dir.join("escaped").exists());

    // A hard link to a path outside the layer.
    write_layout(
        &image,
        &[plain(layer_tar(&[Entry::Hardlink(
            "passwd",
            "../../../../etc/passwd",
        )]))],
        &cmd,
    );
    one_line(&["--image", path(&image)], "leaves the directory");

    // Registry references, missing paths, things that are not images.
    one_line(&["--image", "debian:12"], "looks like a registry reference");
    one_line(
        &["--image", "docker.io/library/debian"],
        "does not pull images",
    );
    one_line(
        &["--image", "/nonexistent/image"],
        "no such file or directory",
    );
    let not_image = state.dir.join("not-an-image");
    fs::create_dir_all(&not_image).unwrap();
    one_line(&["--image", path(&not_image)], "not an OCI image layout");

    // An image with no command and none given; a command the image lacks (a good image:
    // its layer stays in the cache).
    write_layout(&image, &[plain(small())], &serde_json::json!({}));
    let run = state.run(&["--image", path(&image)]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(
        run.stderr.contains("the image has no Entrypoint or Cmd"),
        "{run:#?}"
    );
    let run = state.run(&["--image", path(&image), "--", "/bin/nothing"]);
    assert_eq!(run.code, 127, "{run:#?}");
    assert!(
        run.stderr.contains("command not found in the image"),
        "{run:#?}"
    );
    // Both roots at once.
    let run = state.run(&["--image", path(&image), "--rootfs", "/tmp", "--", "true"]);
    assert_eq!(run.code, 125, "{run:#?}");
    assert!(run.stderr.contains("--rootfs"), "{run:#?}");
}

#[test]
fn daemon_sandboxes_from_one_image_keep_their_writes_apart_and_prune_keeps_live_layers() {
    let d = TestDaemon::start();
    let scratch = helpers().join(format!("oci-daemon-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("scratch");
    let image = scratch.join("layout");
    test_image(&image, &scratch.join("host-dir"));
    let create = |script: &str| {
        d.ok(&[
            "create",
            "--network",
            "blocked",
            "--image",
            path(&image),
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    };
    let a = create("echo from-a > /app/mark; exec sleep 60");
    let b = create("exec sleep 60");
    let view = d.inspect(&a);
    assert_eq!(view["image"], path(&image));
    assert!(
        view["image_digest"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{view}"
    );
    assert!(view["root"].as_bool().unwrap_or(false), "{view}");
    let seen = (0..100)
        .map(|_| {
            thread::sleep(Duration::from_millis(20));
            d.ok(&[
                "exec",
                &a,
                "--",
                "/bin/sh",
                "-c",
                "cat /app/mark 2>/dev/null || true",
            ])
        })
        .find(|o| o == "from-a");
    assert!(seen.is_some(), "sandbox a never wrote its mark");
    let in_b = d.cli(&["exec", &b, "--", "/bin/cat", "/app/mark"]);
    assert_ne!(in_b.code, 0, "b sees a's write: {in_b:#?}");
    // The shared layers did not change.
    let layers = d.dir.join("state/images/layers");
    let marks = sh(&format!("find {} -name mark | wc -l", layers.display()));
    assert_eq!(marks.trim(), "0", "a write reached the cache");

    // A relative path is the client's, not the daemon's (whose working directory is /).
    let relative = std::process::Command::new(sandbox_tests::agent())
        .args(["create", "--image", "layout", "--", "/bin/echo"])
        .env("SANDBOX_AGENT_SOCKET", &d.socket)
        .current_dir(&scratch)
        .output()
        .expect("create");
    assert!(relative.status.success(), "{relative:?}");

    // Prune while both live: their layers stay.
    let config = d_config(&d);
    let pruned = agent_cmd(&["images", "prune", "--json", "--config", &config]);
    let pruned: serde_json::Value = serde_json::from_str(&pruned.stdout).expect("json");
    assert_eq!(pruned["layers"], 0, "{pruned}");
    assert_eq!(pruned["kept"], 3, "{pruned}");

    // Through the API, a bad image is a 400 with the same one-line message.
    let (status, body) = d.json(
        "POST",
        "/v1/sandboxes",
        Some(r#"{"image": "debian:12", "command": ["true"]}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("looks like a registry reference")),
        "{body}"
    );

    d.cli(&["kill", &a]);
    d.cli(&["kill", &b]);
    let pruned = agent_cmd(&["images", "prune", "--json", "--config", &config]);
    let pruned: serde_json::Value = serde_json::from_str(&pruned.stdout).expect("json");
    assert_eq!(pruned["layers"], 3, "{pruned}");
    let _ = fs::remove_dir_all(&scratch);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).expect("read")).expect("json")
}

fn d_config(d: &TestDaemon) -> String {
    d.dir.join("config.toml").to_string_lossy().into_owned()
}

/// A busybox tree with applets, os-release and the given extra files, for the image tools.
fn busybox_tree(dir: &Path, id: &str) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "cat", "echo", "pwd", "id"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("etc/os-release"), format!("ID={id}\n")).unwrap();
}

#[test]
fn images_made_by_buildah_and_umoci_run() {
    for tool in ["buildah", "umoci"] {
        assert!(
            Path::new("/usr/bin").join(tool).exists(),
            "{tool} is missing: `cargo xtask setup` installs it"
        );
    }
    let state = State::new("tools");
    let tree = state.dir.join("tree");

    // buildah: from scratch, the tree copied in, config set, pushed as an OCI archive.
    busybox_tree(&tree, "sa-buildah");
    let storage = state.dir.join("buildah");
    let buildah = format!(
        "buildah --root {0}/root --runroot {0}/runroot --storage-driver vfs",
        storage.display()
    );
    let archive = state.dir.join("buildah.tar");
    sh(&format!(
        "set -e; c=$({buildah} from scratch); {buildah} copy $c {tree} / >/dev/null; \
         {buildah} config --env GREETING=from-buildah --workingdir /etc \
           --cmd '/bin/sh -c \"echo $GREETING; pwd; cat os-release\"' $c; \
         {buildah} commit -q $c sa-test >/dev/null; \
         {buildah} push -q sa-test oci-archive:{archive}; {buildah} rm $c >/dev/null",
        tree = tree.display(),
        archive = archive.display(),
    ));
    let run = state.run(&["--image", path(&archive)]);
    assert_eq!(
        run.stdout, "from-buildah\n/etc\nID=sa-buildah\n",
        "{run:#?}"
    );

    // umoci: a new image, the tree unpacked into its bundle, repacked, config set.
    busybox_tree(&tree, "sa-umoci");
    let layout = state.dir.join("umoci");
    let bundle = state.dir.join("bundle");
    sh(&format!(
        "set -e; umoci init --layout {layout}; umoci new --image {layout}:t; \
         umoci unpack --image {layout}:t {bundle}; cp -a {tree}/. {bundle}/rootfs/; \
         umoci repack --image {layout}:t {bundle}; \
         umoci config --image {layout}:t --config.env GREETING=from-umoci \
           --config.cmd /bin/sh --config.cmd -c --config.cmd 'echo $GREETING; cat /etc/os-release'",
        layout = layout.display(),
        bundle = bundle.display(),
        tree = tree.display(),
    ));
    let run = state.run(&["--image", path(&layout)]);
    assert_eq!(run.stdout, "from-umoci\nID=sa-umoci\n", "{run:#?}");
    let _ = fs::remove_dir_all(&storage);
}
