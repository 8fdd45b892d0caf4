//! One module per command; each has `Args` (clap) and `run(root, args) -> exit code`.

pub mod check;
pub mod exec;
pub mod gc;
pub mod images;
pub mod inspect;
pub mod kill;
pub mod load;
pub mod logs;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod rmi;
pub mod run;
pub mod vm;

/// The exit code of crx's own errors (as docker and podman).
pub const CRX_ERROR: u8 = 125;

/// Runs `f` on each instance key in turn and prints the id of each it did (stops at the first
/// error); exit code 0.
pub fn each_instance(
    keys: &[String],
    f: impl Fn(&str) -> Result<crx_runtime::Home, crx_runtime::RuntimeError>,
) -> anyhow::Result<i32> {
    for key in keys {
        println!("{}", f(key)?.state.id);
    }
    Ok(0)
}
