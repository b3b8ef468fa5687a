//! What images and file copies cost: the first start from a ~100 MB OCI image (verify and
//! unpack every layer) and each later one from the cache, against starts without an image
//! (the default view, and the same files as a root directory); and `cp` of 100 MB into and
//! out of a sandbox (one file, and a tree of 100 files) against `cat` / `tar` through a pipe
//! into the same kind of file system (tmpfs). Runs are interleaved where they are compared.
use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, ensure};

use crate::bench_kit::{BenchEnv, check, interrupted, percentile, print_grid, progress};

const STARTS: usize = 40;
const UNPACKS: usize = 3;
const COPIES: usize = 3;
const TRUE: &str = "/bin/true";

/// Writes the bench's image: a busybox layer and a data layer of 100 files of 1 MiB (half
/// random, half repeated text: it compresses about as a real image does), both gzip; and the
/// busybox tree alone as a root directory; and the 100 MB file and tree `cp` copies.
const MAKE_IMAGE: &str = r#"
import gzip, hashlib, io, json, os, random, sys, tarfile
out, rootfs, blob, tree = sys.argv[1:5]
rng = random.Random(7)
os.makedirs(out + "/blobs/sha256", exist_ok=True)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    open(out + "/blobs/sha256/" + h, "wb").write(data)
    return "sha256:" + h, len(data)
def layer(add):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        add(t)
    raw = b.getvalue()
    d, n = put(gzip.compress(raw, compresslevel=6))
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}, "sha256:" + hashlib.sha256(raw).hexdigest()
def busybox(t):
    t.add(rootfs, arcname=".")
def data(t):
    for i in range(100):
        body = rng.randbytes(512 << 10) + (b"sandbox-agent bench text line %d\n" % i) * 16384
        body = body[: 1 << 20]
        info = tarfile.TarInfo("data/file-%03d" % i)
        info.size = len(body)
        t.addfile(info, io.BytesIO(body))
layers = [layer(busybox), layer(data)]
config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/true"]},
          "rootfs": {"type": "layers", "diff_ids": [l[1] for l in layers]}}
cd, cn = put(json.dumps(config).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": [l[0] for l in layers]}
md, mn = put(json.dumps(manifest).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn}]}, open(out + "/index.json", "w"))
open(out + "/oci-layout", "w").write('{"imageLayoutVersion": "1.0.0"}')
open(blob, "wb").write(rng.randbytes(100 << 20))
os.makedirs(tree, exist_ok=True)
for i in range(100):
    open("%s/file-%03d" % (tree, i), "wb").write(rng.randbytes(1 << 20))
"#;

pub fn run(env: &mut BenchEnv, agent: &Path) -> Result<()> {
    progress("images: writing a ~100 MB image (2 gzip layers) and the files cp copies")?;
    let dir = env.dir.join("images");
    let (image, rootfs, blob, tree) = (
        dir.join("image"),
        dir.join("rootfs"),
        dir.join("blob"),
        dir.join("tree"),
    );
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::create_dir_all(rootfs.join("etc"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("/bin/busybox is missing: `cargo xtask setup` installs busybox-static")?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"))?;
    let made = Command::new("python3")
        .args(["-c", MAKE_IMAGE])
        .args([&image, &rootfs, &blob, &tree])
        .output()?;
    check(&made, "write the bench image")?;
    let image_bytes: u64 = fs::read_dir(image.join("blobs/sha256"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!("state_dir = \"{}\"\n", dir.join("state").display()),
    )?;
    let run = |extra: &[&Path]| -> Result<f64> {
        let mut cmd = env.agent(agent);
        cmd.args(["run", "--embedded", "--network", "blocked", "--config"])
            .arg(&config);
        for a in extra {
            cmd.arg(a);
        }
        cmd.args(["--", TRUE]);
        let t = Instant::now();
        let out = cmd.output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        check(&out, "sandbox-agent run")?;
        Ok(ms)
    };
    let image_flag = [Path::new("--image"), &image];
    let rootfs_flag = [Path::new("--rootfs"), &rootfs];

    progress(&format!(
        "images: {UNPACKS} first starts from the image (cache pruned before each)"
    ))?;
    let mut first = Vec::new();
    for _ in 0..UNPACKS {
        interrupted()?;
        let pruned = env
            .agent(agent)
            .args(["images", "prune", "--config"])
            .arg(&config)
            .output()?;
        check(&pruned, "sandbox-agent images prune")?;
        first.push(run(&image_flag)?);
    }
    progress(&format!(
        "images: {STARTS} starts each from the cache, a root directory and the default view, interleaved"
    ))?;
    let (mut cached, mut plain_root, mut default_view) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..STARTS {
        interrupted()?;
        cached.push(run(&image_flag)?);
        plain_root.push(run(&rootfs_flag)?);
        default_view.push(run(&[])?);
    }
    print_starts(image_bytes, &first, &cached, &plain_root, &default_view);
    copies(env, agent, &blob, &tree)
}

/// The start-up table: first and cached image starts against starts without an image.
fn print_starts(
    image_bytes: u64,
    first: &[f64],
    cached: &[f64],
    plain_root: &[f64],
    default_view: &[f64],
) {
    let p50 = |v: &[f64]| percentile(v, 50.0);
    println!();
    print_grid(
        &[
            "start from",
            "p50 ms",
            "p99 ms",
            "vs default view p50",
            "target",
        ],
        &[
            vec![
                format!(
                    "image, first start (verify + unpack {:.0} MB of gzip layers)",
                    mb(image_bytes)
                ),
                format!("{:.0}", p50(first)),
                format!("{:.0}", percentile(first, 99.0)),
                format!("+{:.0} ms", p50(first) - p50(default_view)),
                "-".into(),
            ],
            vec![
                "image, cached layers (2, stacked by overlayfs)".into(),
                format!("{:.2}", p50(cached)),
                format!("{:.2}", percentile(cached, 99.0)),
                format!("{:+.2} ms", p50(cached) - p50(default_view)),
                "within 2 ms of no image".into(),
            ],
            vec![
                "root directory (--rootfs, the busybox layer's files)".into(),
                format!("{:.2}", p50(plain_root)),
                format!("{:.2}", percentile(plain_root, 99.0)),
                format!("{:+.2} ms", p50(plain_root) - p50(default_view)),
                "-".into(),
            ],
            vec![
                "default view (the host's root)".into(),
                format!("{:.2}", p50(default_view)),
                format!("{:.2}", percentile(default_view, 99.0)),
                "-".into(),
                "-".into(),
            ],
        ],
        &[0],
    );
    println!(
        "cached image vs root directory: {:+.2} ms at p50",
        p50(cached) - p50(plain_root)
    );
}

fn mb(bytes: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "a size for a person")]
    let b = bytes as f64;
    b / 1e6
}

/// `cp` of the 100 MB file and the 100-file tree into and out of a daemon's sandbox, against
/// `cat` and `tar` through a pipe into a host tmpfs.
fn copies(env: &BenchEnv, agent: &Path, blob: &Path, tree: &Path) -> Result<()> {
    let daemon = crate::bench_daemon::Daemon::start(env, agent)?;
    let (id, _) = daemon.create(r#"{"command":["/bin/sleep","600"],"cwd":"/"}"#)?;
    let socket = env.dir.join("api.sock");
    let shm = Path::new("/dev/shm").join(format!("sa-bench-{}", std::process::id()));
    let out = env.dir.join("images/out");
    progress(&format!(
        "images: cp of 100 MB (one file, then 100 files) in and out, {COPIES} times each"
    ))?;
    let timed = |mut cmd: Command, what: &str| -> Result<f64> {
        let t = Instant::now();
        let output = cmd.output()?;
        let s = t.elapsed().as_secs_f64();
        check(&output, what)?;
        Ok(s)
    };
    let cp = |from: &str, to: &str| {
        let mut cmd = env.agent(agent);
        cmd.arg("--socket").arg(&socket).args(["cp", from, to]);
        cmd
    };
    let shell = |script: String| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        cmd
    };
    let mut rows: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; 4];
    for i in 0..COPIES {
        interrupted()?;
        let _ = fs::remove_dir_all(&shm);
        let _ = fs::remove_dir_all(&out);
        fs::create_dir_all(&shm)?;
        let (blob_s, tree_s) = (blob.to_string_lossy(), tree.to_string_lossy());
        let (shm_s, out_s) = (shm.to_string_lossy(), out.to_string_lossy());
        rows[0][0].push(timed(
            cp(&blob_s, &format!("{id}:/tmp/blob{i}")),
            "cp file in",
        )?);
        rows[0][1].push(timed(
            shell(format!("cat {blob_s} | cat > {shm_s}/blob")),
            "cat file in",
        )?);
        rows[1][0].push(timed(
            cp(&format!("{id}:/tmp/blob{i}"), &format!("{out_s}-blob")),
            "cp file out",
        )?);
        rows[1][1].push(timed(
            shell(format!("cat {shm_s}/blob | cat > {out_s}-blob-cat")),
            "cat file out",
        )?);
        rows[2][0].push(timed(
            cp(&tree_s, &format!("{id}:/tmp/tree{i}")),
            "cp tree in",
        )?);
        rows[2][1].push(timed(
            shell(format!(
                "mkdir {shm_s}/tree && tar -C {tree_s} -cf - . | tar -C {shm_s}/tree -xf -"
            )),
            "tar tree in",
        )?);
        rows[3][0].push(timed(
            cp(&format!("{id}:/tmp/tree{i}"), &out_s),
            "cp tree out",
        )?);
        rows[3][1].push(timed(
            shell(format!(
                "mkdir {out_s}-tar && tar -C {shm_s}/tree -cf - . | tar -C {out_s}-tar -xf -"
            )),
            "tar tree out",
        )?);
        for f in ["-blob", "-blob-cat"] {
            let _ = fs::remove_file(format!("{out_s}{f}"));
        }
        let _ = fs::remove_dir_all(format!("{out_s}-tar"));
        // The sandbox's /tmp is 512 MB: make room for the next round.
        let (status, body) = daemon.request(
            "POST",
            &format!("/v1/sandboxes/{id}/execs"),
            &format!(r#"{{"command":["/bin/rm","-rf","/tmp/blob{i}","/tmp/tree{i}"]}}"#),
        )?;
        ensure!(status == 201, "clean the sandbox's /tmp: {status} {body}");
    }
    let _ = fs::remove_dir_all(&shm);
    let _ = fs::remove_dir_all(&out);
    print_copies(&rows);
    Ok(())
}

/// The copy table: `cp` against the pipes, p50 of each.
fn print_copies(rows: &[[Vec<f64>; 2]]) {
    let names = [
        "cp FILE sandbox:/tmp (100 MB)",
        "cp sandbox:/tmp/FILE local (100 MB)",
        "cp DIR sandbox:/tmp (100 x 1 MB, tar stream)",
        "cp sandbox:/tmp/DIR local (100 x 1 MB)",
    ];
    let baselines = [
        "cat | cat > tmpfs",
        "cat | cat > disk",
        "tar c | tar x > tmpfs",
        "tar c | tar x > disk",
    ];
    let rows: Vec<Vec<String>> = rows
        .iter()
        .zip(names.iter().zip(baselines))
        .map(|([agent_s, base_s], (name, base))| {
            let (a, b) = (percentile(agent_s, 50.0), percentile(base_s, 50.0));
            vec![
                (*name).to_owned(),
                format!("{:.0}", 100.0 / a),
                format!("{:.0} ({base})", 100.0 / b),
                format!("{:.2}x", a / b),
            ]
        })
        .collect();
    println!();
    print_grid(
        &["copy", "MB/s p50", "baseline MB/s p50", "time vs baseline"],
        &rows,
        &[0, 2],
    );
}
