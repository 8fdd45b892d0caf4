//! The VM configuration: the typed description in `crx-vmconfig`, shared with the runtime that
//! writes it. crx-vmm reads it from `--config FILE` (flags for quick runs fill or replace
//! values, see `main.rs`) and validates it before any VM is created.

pub use crx_vmconfig::*;
