//! crx-initrd: build page-aligned, reproducible initramfs layers from a spec; list and check them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use crx_initrd::{parse, parse_spec, Archive, EntryKind, WriteOptions, PAGE_SIZE};

/// The base layer spec shipped with this tool (`crx-initrd base` uses it).
const BASE_SPEC: &str = include_str!("../layers/base.spec");

#[derive(Parser)]
#[command(name = "crx-initrd", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a layer from a spec file.
    Build {
        /// The layer spec (see crates/initrd/README.md).
        spec: PathBuf,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
        /// Define `${NAME}` in the spec: NAME=VALUE (repeatable).
        #[arg(short = 'D', long = "define", value_name = "NAME=VALUE")]
        defines: Vec<String>,
        #[command(flatten)]
        time: Time,
    },
    /// Build the base layer (crx-init at /init, /dev/console, mount points).
    Base {
        /// The crx-init binary (static).
        #[arg(long)]
        init: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        time: Time,
    },
    /// List an archive (or concatenated layers) and check that every file's data is aligned.
    List { archive: PathBuf },
}

#[derive(clap::Args)]
struct Time {
    /// mtime of every entry; defaults to $SOURCE_DATE_EPOCH, else 0.
    #[arg(long)]
    mtime: Option<u32>,
}

impl Time {
    fn options(&self) -> Result<WriteOptions> {
        let mtime = match (self.mtime, std::env::var("SOURCE_DATE_EPOCH")) {
            (Some(t), _) => t,
            (None, Ok(s)) => s
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a u32 number"))?,
            (None, Err(_)) => 0,
        };
        Ok(WriteOptions { mtime })
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crx-initrd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Build {
            spec,
            out,
            defines,
            time,
        } => {
            let mut defs = BTreeMap::new();
            for d in defines {
                let Some((k, v)) = d.split_once('=') else {
                    bail!("-D {d:?}: expected NAME=VALUE");
                };
                defs.insert(k.to_string(), v.to_string());
            }
            let text = fs::read_to_string(&spec)
                .with_context(|| format!("reading spec {}", spec.display()))?;
            let base = spec.parent().unwrap_or(Path::new("."));
            let a = parse_spec(&text, base, &defs)
                .with_context(|| format!("spec {}", spec.display()))?;
            write(&a, &out, time.options()?)
        }
        Cmd::Base { init, out, time } => {
            let mut defs = BTreeMap::new();
            defs.insert("CRX_INIT".to_string(), init.display().to_string());
            let a = parse_spec(BASE_SPEC, Path::new("."), &defs).context("base layer spec")?;
            write(&a, &out, time.options()?)
        }
        Cmd::List { archive } => list(&archive),
    }
}

fn write(a: &Archive, out: &Path, opts: WriteOptions) -> Result<ExitCode> {
    let tmp = out.with_extension("tmp");
    let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = BufWriter::new(f);
    let n = a.write_to(&mut w, opts)?;
    w.flush()
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(w);
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    let files = a
        .entries()
        .filter(|(_, e)| matches!(e.kind, EntryKind::File(_)))
        .count();
    eprintln!(
        "crx-initrd: wrote {} ({n} bytes, {files} files)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(path: &Path) -> Result<ExitCode> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let entries = parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let mut bad = 0;
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let mode = e.header.mode;
        let is_file = mode & crx_initrd::newc::S_IFMT == crx_initrd::newc::S_IFREG;
        let aligned = !is_file || e.data_offset % PAGE_SIZE == 0;
        if !aligned {
            bad += 1;
        }
        writeln!(
            out,
            "{:06o} {:>5}:{:<5} {:>9} @{:<9} {}{}",
            mode,
            e.header.uid,
            e.header.gid,
            e.header.filesize,
            e.data_offset,
            e.name,
            if aligned { "" } else { "  MISALIGNED" }
        )?;
    }
    if bad > 0 {
        eprintln!("crx-initrd: {bad} regular file(s) not aligned to {PAGE_SIZE}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
