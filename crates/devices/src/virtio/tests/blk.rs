use vm_memory::{Bytes, GuestAddress};

use crate::virtio::blk::*;
use crate::virtio::test_utils::*;
use crate::virtio::{Chain, VirtioDevice};

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 64;

fn header(mem: &vm_memory::GuestMemoryMmap, type_: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&type_.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn status(mem: &vm_memory::GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

fn disk() -> MemDisk {
    MemDisk((0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect())
}

fn run(dev: &mut Block, drv: &mut Driver<'_>, descs: &[D]) -> (u8, u32) {
    let mut qs = [drv.queue()];
    let head = drv.add(descs);
    dev.process_queue(drv.mem, &mut qs, 0);
    let used = drv.used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].0, head);
    (status(drv.mem), used[0].1)
}

#[test]
fn read_write_roundtrip() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(disk()), false);
    assert_eq!(dev.capacity(), DISK_SECTORS);

    // IN, data split over two descriptors.
    header(&mem, 0, 2);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let (st, len) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 512), w(DATA + 512, 512), w(STATUS, 1)],
    );
    assert_eq!((st, len), (S_OK, 1025));
    let mut buf = vec![0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    let expect: Vec<u8> = (1024..2048u64).map(|i| (i % 251) as u8).collect();
    assert_eq!(buf, expect);

    // OUT with header and data in one descriptor (no framing assumption).
    let mut hdr_and_data = vec![0u8; 16 + 512];
    hdr_and_data[..4].copy_from_slice(&1u32.to_le_bytes());
    hdr_and_data[8..16].copy_from_slice(&5u64.to_le_bytes());
    hdr_and_data[16..].fill(0xab);
    mem.write_slice(&hdr_and_data, GuestAddress(HDR)).unwrap();
    let (st, len) = run(&mut dev, &mut drv, &[r(HDR, 16 + 512), w(STATUS, 1)]);
    assert_eq!((st, len), (S_OK, 1));

    header(&mem, 0, 5);
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_OK);
    mem.read_slice(&mut buf[..512], GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0xab));
}

#[test]
fn large_read_crosses_bounce_chunks() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(MemDisk(vec![7u8; 1 << 20])), false);
    header(&mem, 0, 0);
    let (st, len) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 1 << 20), w(STATUS, 1)],
    );
    assert_eq!((st, len), (S_OK, (1 << 20) + 1));
}

#[test]
fn flush_and_get_id_and_unsupported() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(disk()), false);
    dev.set_id(b"serial-1");

    header(&mem, 4, 0);
    assert_eq!(
        run(&mut dev, &mut drv, &[r(HDR, 16), w(STATUS, 1)]),
        (S_OK, 1)
    );

    header(&mem, 8, 0);
    let (st, len) = run(&mut dev, &mut drv, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!((st, len), (S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..8], b"serial-1");
    assert!(id[8..].iter().all(|&b| b == 0));

    header(&mem, 11, 0); // DISCARD: not offered.
    assert_eq!(
        run(&mut dev, &mut drv, &[r(HDR, 16), w(STATUS, 1)]),
        (S_UNSUPP, 1)
    );
}

#[test]
fn out_of_range_and_unaligned_fail() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(disk()), false);
    for (sector, len) in [
        (DISK_SECTORS, 512),
        (DISK_SECTORS - 1, 1024),
        (u64::MAX, 512),
    ] {
        header(&mem, 0, sector);
        let (st, _) = run(
            &mut dev,
            &mut drv,
            &[r(HDR, 16), w(DATA, len), w(STATUS, 1)],
        );
        assert_eq!(st, S_IOERR, "sector {sector} len {len}");
    }
    // The last sector is fine.
    header(&mem, 0, DISK_SECTORS - 1);
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_OK);
    // Not a multiple of 512.
    header(&mem, 0, 0);
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 100), w(STATUS, 1)],
    );
    assert_eq!(st, S_IOERR);
}

#[test]
fn read_only_refuses_writes() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(disk()), true);
    assert_ne!(dev.features() & (1 << 5), 0, "VIRTIO_BLK_F_RO offered");
    header(&mem, 1, 0);
    mem.write_slice(&[0x55u8; 512], GuestAddress(DATA)).unwrap();
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_IOERR);
    // The disk is unchanged.
    header(&mem, 0, 0);
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_OK);
    let b: u8 = mem.read_obj(GuestAddress(DATA + 1)).unwrap();
    assert_eq!(b, 1);
}

#[test]
fn malformed_chains_complete_without_panic() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    let mut dev = Block::with_backend(Box::new(disk()), false);
    // Short header.
    header(&mem, 0, 0);
    assert_eq!(
        run(&mut dev, &mut drv, &[r(HDR, 8), w(STATUS, 1)]),
        (S_IOERR, 1)
    );
    // No status byte: completed with length 0.
    let (_, len) = run(&mut dev, &mut drv, &[r(HDR, 16), r(DATA, 512)]);
    assert_eq!(len, 0);
    // Data buffer outside guest memory.
    let (st, len) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), w(1 << 40, 512), w(STATUS, 1)],
    );
    assert_eq!((st, len), (S_IOERR, 1));
    // IN with device-readable data.
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_IOERR);

    // A descriptor loop (0 -> 1 -> 0), and a head beyond the queue size.
    let mut qs = [drv.queue()];
    let _ = drv.used();
    let base = 8;
    drv.write_desc(base, HDR, 16, VRING_DESC_F_NEXT as u16, base + 1);
    drv.write_desc(
        base + 1,
        STATUS,
        1,
        (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
        base,
    );
    drv.publish(base);
    drv.publish(1000);
    dev.process_queue(&mem, &mut qs, 0);
    let used = drv.used();
    assert_eq!(
        used.len(),
        1,
        "the loop completes, the bogus head is dropped"
    );

    // A driver that claims more available entries than the queue holds.
    drv.set_avail_idx(drv_avail_jump());
    assert!(!dev.process_queue(&mem, &mut qs, 0));
}

fn drv_avail_jump() -> u16 {
    1000
}

#[test]
fn parser_reports_structure() {
    let mem = test_mem();
    let drv = Driver::new(&mem, 0, 16);
    header(&mem, 0, 3);
    let mut q = drv.queue();
    let mut d2 = Driver::new(&mem, 0, 16);
    d2.add(&[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)]);
    let chain: Chain<'_> = crate::virtio::queue::pop_chain(&mut q, &mem).unwrap();
    let parsed = parse_request(&mem, chain);
    let req = parsed.request.ok().unwrap();
    assert_eq!(req.kind, RequestType::In);
    assert_eq!(req.sector, 3);
    assert_eq!(req.data_len(), 1024);
    assert_eq!(parsed.status, Some(GuestAddress(STATUS)));
}

#[test]
fn file_backed_device() {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/crx-blk").unwrap();
    let path = dir.as_path().join("disk.img");
    std::fs::write(&path, vec![3u8; 4096 + 100]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut dev = Block::new(file, false).unwrap();
    // The partial trailing sector is not addressable.
    assert_eq!(dev.capacity(), 8);
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 8);

    let mem = test_mem();
    let mut drv = Driver::new(&mem, 0, 16);
    header(&mem, 1, 7);
    mem.write_slice(&[9u8; 512], GuestAddress(DATA)).unwrap();
    let (st, _) = run(
        &mut dev,
        &mut drv,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, S_OK);
    header(&mem, 4, 0);
    assert_eq!(run(&mut dev, &mut drv, &[r(HDR, 16), w(STATUS, 1)]).0, S_OK);
    let content = std::fs::read(&path).unwrap();
    assert!(content[7 * 512..8 * 512].iter().all(|&b| b == 9));
    assert!(content[..7 * 512].iter().all(|&b| b == 3));
}
