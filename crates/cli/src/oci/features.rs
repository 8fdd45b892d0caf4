//! `crx-runc features`: what this runtime supports, as JSON (runc's `features` document).

use anyhow::Result;

pub fn run() -> Result<i32> {
    let f = crx_runtime::oci::bundle::features();
    println!("{}", serde_json::to_string_pretty(&f)?);
    Ok(0)
}
