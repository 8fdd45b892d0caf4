//! The crate arrows of ARCHITECTURE.md, checked: every workspace crate has a row in its
//! "allowed dependencies" table, and no crate depends (normal or build dependency) on one of
//! ours that its row does not name. Dev-dependencies are free (tests may use any crate).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const BEGIN: &str = "<!-- arrows:begin -->";
const END: &str = "<!-- arrows:end -->";

/// Crate name -> the crates of ours it may depend on, from the table between the markers.
pub fn allowed(architecture_md: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let start = architecture_md
        .find(BEGIN)
        .context("ARCHITECTURE.md has no arrows table (<!-- arrows:begin -->)")?;
    let table = &architecture_md[start + BEGIN.len()..];
    let table = &table[..table.find(END).context("arrows table not closed")?];
    let mut rows = BTreeMap::new();
    for line in table.lines().map(str::trim).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [name, deps] = cells[..] else {
            bail!("arrows table: expected two columns in {line:?}");
        };
        let name = name.trim_matches('`');
        if name == "crate" || name.starts_with("---") {
            continue;
        }
        let deps = deps
            .split(',')
            .map(|d| d.trim().trim_matches('`'))
            .filter(|d| !d.is_empty() && *d != "-")
            .map(str::to_owned)
            .collect();
        if rows.insert(name.to_owned(), deps).is_some() {
            bail!("arrows table: {name} has two rows");
        }
    }
    Ok(rows)
}

/// Crate name -> its normal and build dependencies among the workspace's crates.
pub fn actual(metadata: &serde_json::Value) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    let ours: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut edges = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().context("a package without a name")?;
        let deps = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str())
            .filter(|d| ours.contains(d) && *d != name)
            .map(str::to_owned)
            .collect();
        edges.insert(name.to_owned(), deps);
    }
    Ok(edges)
}

/// Every way `actual` departs from `allowed`, one line each.
pub fn violations(
    allowed: &BTreeMap<String, BTreeSet<String>>,
    actual: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, deps) in actual {
        let Some(may) = allowed.get(name) else {
            out.push(format!(
                "{name} has no row in ARCHITECTURE.md's arrows table: add it (and its arrows)"
            ));
            continue;
        };
        for d in deps.difference(may) {
            out.push(format!(
                "{name} depends on {d}, which ARCHITECTURE.md's arrows do not allow"
            ));
        }
    }
    for name in allowed.keys().filter(|n| !actual.contains_key(*n)) {
        out.push(format!(
            "ARCHITECTURE.md's arrows table names {name}, which is not a workspace crate"
        ));
    }
    out
}

/// Checks the workspace at `root` against its ARCHITECTURE.md.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let md =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("reading ARCHITECTURE.md")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    Ok(violations(&allowed(&md)?, &actual(&metadata)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD: &str = "x\n<!-- arrows:begin -->\n| crate | may depend on |\n|---|---|\n\
        | `a` | `b`, `c` |\n| `b` | - |\n| `c` | |\n<!-- arrows:end -->\n";

    /// (crate, [(dependency, kind)]): kind None for a normal dependency.
    type Edges<'a> = [(&'a str, &'a [(&'a str, Option<&'a str>)])];

    fn meta(edges: &Edges) -> serde_json::Value {
        let packages: Vec<_> = edges
            .iter()
            .map(|(n, deps)| {
                let deps: Vec<_> = deps
                    .iter()
                    .map(|(d, kind)| serde_json::json!({"name": d, "kind": kind}))
                    .collect();
                serde_json::json!({"name": n, "dependencies": deps})
            })
            .collect();
        serde_json::json!({ "packages": packages })
    }

    #[test]
    fn a_forbidden_arrow_a_missing_row_and_a_stale_row_are_reported() {
        let allowed = allowed(MD).unwrap();
        assert_eq!(allowed["a"].len(), 2);
        assert!(allowed["b"].is_empty() && allowed["c"].is_empty());
        let ok = meta(&[
            ("a", &[("b", None), ("serde", None)]),
            ("b", &[("a", Some("dev"))]),
            ("c", &[]),
        ]);
        assert!(violations(&allowed, &actual(&ok).unwrap()).is_empty());
        let bad = meta(&[
            ("a", &[("b", None)]),
            ("b", &[("a", Some("build"))]),
            ("d", &[]),
        ]);
        let v = violations(&allowed, &actual(&bad).unwrap());
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("b depends on a"), "{v:?}");
        assert!(v[1].contains("d has no row"), "{v:?}");
        assert!(v[2].contains("names c, which is not"), "{v:?}");
    }

    #[test]
    fn the_workspace_follows_its_architecture_arrows() {
        let v = check(&crate::workspace_root()).unwrap();
        assert!(v.is_empty(), "crate arrows broken:\n{}", v.join("\n"));
    }
}
