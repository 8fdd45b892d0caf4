use crate::virtio::rng::{Rng, MAX_BYTES_PER_REQUEST};
use crate::virtio::test_utils::*;
use crate::virtio::VirtioDevice;
use vm_memory::Bytes;
use vm_memory::GuestAddress;

#[test]
fn fills_buffers() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut qs = [drv.queue()];
    let h1 = drv.add(&[w(0x10_0000, 256)]);
    let h2 = drv.add(&[w(0x20_0000, 100), w(0x30_0000, 28)]);
    let mut rng = Rng::new();
    assert!(rng.process_queue(&mem, &mut qs, 0));
    assert_eq!(drv.used(), vec![(h1, 256), (h2, 128)]);
    let mut buf = [0u8; 256];
    mem.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
    // 256 random bytes are all zero with probability 2^-2048.
    assert!(buf.iter().any(|&b| b != 0));
}

#[test]
fn caps_huge_requests_and_survives_bad_buffers() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut qs = [drv.queue()];
    let h1 = drv.add(&[w(0x10_0000, 1 << 20)]);
    // Outside guest memory.
    let h2 = drv.add(&[w(0xffff_ffff_0000, 64)]);
    // Read-only buffer: nothing to fill.
    let h3 = drv.add(&[r(0x10_0000, 64)]);
    let mut rng = Rng::new();
    rng.process_queue(&mem, &mut qs, 0);
    assert_eq!(
        drv.used(),
        vec![(h1, MAX_BYTES_PER_REQUEST as u32), (h2, 0), (h3, 0)]
    );
}
