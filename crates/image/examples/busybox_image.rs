//! Writes an OCI image layout with Debian's static busybox, for machines without registry
//! access: `cargo run -p crx-image --example busybox_image -- OUT_DIR [NAME]`.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: busybox_image OUT_DIR [NAME (default busybox:latest)]");
        return ExitCode::from(2);
    };
    let name = args.next().unwrap_or_else(|| "busybox:latest".into());
    match crx_image::build_busybox_layout(
        Path::new(crx_image::busybox::DEFAULT_BUSYBOX),
        Path::new(&out),
        &name,
    ) {
        Ok(digest) => {
            println!("{out}: {name} {digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("busybox_image: {e}");
            ExitCode::FAILURE
        }
    }
}
