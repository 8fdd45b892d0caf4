//! `crx check`: whether this host can run crx, one line per check, each with a fix.

use std::path::Path;

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(root: &Path, _a: Args) -> Result<i32> {
    let checks = crx_runtime::check::run_all(root);
    let mut failed = 0;
    for c in &checks {
        let mark = if c.ok {
            "ok  "
        } else {
            failed += 1;
            "FAIL"
        };
        println!("{mark} {}: {}", c.name, c.detail);
        if let Some(fix) = c.fix.as_deref().filter(|_| !c.ok) {
            println!("     fix: {fix}");
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
