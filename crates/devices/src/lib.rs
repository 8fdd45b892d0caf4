//! Emulated devices for crx-vmm.
//!
//! Invariants: this crate never calls KVM (it receives guest memory, eventfds and an
//! interrupt handle from `crx-vmm`), and nothing a guest writes can panic it.

pub mod bus;
pub mod legacy;
pub mod state;
pub mod virtio;
