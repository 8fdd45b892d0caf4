//! `crx-runc list [-q] [-f table|json]`: the containers under the root.

use std::path::Path;

use anyhow::{bail, Result};
use crx_runtime::oci::container;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// table or json.
    #[arg(short, long, default_value = "table")]
    format: String,
    /// Only the ids.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(root: &Path, a: Args) -> Result<i32> {
    let states: Vec<serde_json::Value> = container::list(root)?
        .iter()
        .filter_map(|c| crx_runtime::oci::lifecycle::state(root, &c.id).ok())
        .collect();
    if a.quiet {
        for s in &states {
            println!("{}", s["id"].as_str().unwrap_or_default());
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&states)?),
        "table" => {
            println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for s in &states {
                let f = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    f("id"),
                    s["pid"],
                    f("status"),
                    f("bundle"),
                    f("created"),
                    f("owner")
                );
            }
        }
        other => bail!("unknown format {other:?} (table or json)"),
    }
    Ok(0)
}
