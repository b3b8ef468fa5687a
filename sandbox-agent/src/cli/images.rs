//! `sandbox-agent images [prune]`: the layer cache under the state directory.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use sandbox_agent::image::{Store, human_bytes};

#[derive(Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    action: Option<ImagesAction>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The agent's configuration, for its state directory (default
    /// /etc/sandbox-agent/config.toml if it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ImagesAction {
    /// Remove every cached layer no live sandbox stacks (and what only they made up).
    Prune,
}

pub fn main(args: &ImagesArgs) -> i32 {
    let config = match sandbox_agent::config::Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    let store = Store::new(&config.state_dir);
    match args.action {
        None => list(&store, args.json),
        Some(ImagesAction::Prune) => prune(&store, args.json),
    }
}

fn list(store: &Store, json: bool) -> i32 {
    let listing = match store.list() {
        Ok(l) => l,
        Err(e) => return super::fail(&e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&listing).unwrap_or_default()
        );
        return 0;
    }
    println!("{:<19} {:>6} {:>10}  SOURCE", "IMAGE", "LAYERS", "SIZE");
    for image in &listing.images {
        let short = image.digest.get(..19).unwrap_or(&image.digest);
        let note = if image.complete {
            ""
        } else {
            " (layers pruned)"
        };
        println!(
            "{short:<19} {:>6} {:>10}  {}{note}",
            image.layers,
            human_bytes(image.bytes),
            image.source
        );
    }
    let total: u64 = listing.layers.iter().map(|l| l.bytes).sum();
    let in_use = listing.layers.iter().filter(|l| l.in_use > 0).count();
    println!(
        "{} layers, {} in the cache; {in_use} stacked by live sandboxes",
        listing.layers.len(),
        human_bytes(total)
    );
    0
}

fn prune(store: &Store, json: bool) -> i32 {
    match store.prune() {
        Ok(p) if json => {
            println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
            0
        }
        Ok(p) => {
            println!(
                "removed {} layers ({}) and {} image records; kept {} layers stacked by live sandboxes",
                p.layers,
                human_bytes(p.bytes),
                p.images,
                p.kept
            );
            0
        }
        Err(e) => super::fail(&e),
    }
}
