//! The state file format: round trip, each refusal, and a bounded fuzz of the decoder.

use super::*;
use crate::snapshot::identity::CpuIdentity;
use crate::snapshot::state::{DevicesState, FpuState, KvmVmState, VcpuState};
use crx_devices::virtio::{QueueState, TransportState, VirtioDeviceState};

fn sample() -> VmState {
    let regs = kvm_bindings::kvm_regs {
        rip: 0x10_0000,
        rcx: 12345,
        ..Default::default()
    };
    let vcpu = VcpuState {
        cpuid: vec![kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            eax: 0xa0_0f11,
            ..Default::default()
        }],
        msrs: vec![kvm_bindings::kvm_msr_entry {
            index: 0x10,
            data: 99,
            ..Default::default()
        }],
        regs,
        sregs: Default::default(),
        fpu: FpuState {
            fcw: 0x37f,
            ..Default::default()
        },
        xsave: Some(Default::default()),
        xcrs: None,
        lapic: Default::default(),
        events: Default::default(),
        mp_state: Default::default(),
        debug_regs: Default::default(),
        tsc_khz: Some(2_000_000),
    };
    VmState {
        memory_bytes: 16 << 20,
        kvm: KvmVmState {
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
            pit: Default::default(),
            clock: Default::default(),
        },
        vcpus: vec![vcpu],
        devices: DevicesState {
            serial: Default::default(),
            i8042: Default::default(),
            boot_timer: None,
            virtio: vec![TransportState {
                device_type: 4,
                device_features_sel: 0,
                driver_features_sel: 0,
                acked_features: 1 << 32,
                queue_sel: 0,
                status: 15,
                interrupt_status: 0,
                config_generation: 0,
                activated: true,
                queues: vec![QueueState {
                    max_size: 256,
                    size: 256,
                    ready: true,
                    ..Default::default()
                }],
                device: VirtioDeviceState::Stateless,
            }],
        },
    }
}

fn expect() -> Expect {
    Expect {
        cpu: CpuIdentity {
            vendor: *b"AuthenticAMD",
            signature: 0xa0_0f11,
        },
        config: [7; 32],
    }
}

#[test]
fn round_trip() {
    let bytes = encode(&sample(), &expect()).unwrap();
    assert_eq!(&bytes[..8], b"CRXSNAP\0");
    let back = decode(&bytes, &expect()).unwrap();
    assert_eq!(back.vcpus[0].regs.rcx, 12345);
    assert_eq!(back.vcpus[0].msrs[0].data, 99);
    assert_eq!(back.devices.virtio[0].queues[0].size, 256);
    // Encoding is deterministic: the decoded state encodes to the same bytes.
    assert_eq!(encode(&back, &expect()).unwrap(), bytes);
}

#[test]
fn truncated_altered_foreign_are_refused_with_one_line() {
    let e = expect();
    let good = encode(&sample(), &e).unwrap();
    let err = |b: &[u8], x: &Expect| decode(b, x).unwrap_err();
    for cut in [0, 5, 40, good.len() - 1] {
        assert!(
            matches!(err(&good[..cut], &e), FormatError::Truncated { .. }),
            "cut at {cut}"
        );
    }
    let mut altered = good.clone();
    altered[HEADER_LEN + 3] ^= 1;
    assert_eq!(err(&altered, &e), FormatError::Checksum);
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(err(&longer, &e), FormatError::Trailing(1));
    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(err(&magic, &e), FormatError::Magic);
    let mut version = good.clone();
    version[8] = 2;
    assert_eq!(err(&version, &e), FormatError::Version(2));
    let mut huge = good.clone();
    huge[64..72].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(err(&huge, &e), FormatError::TooLarge(u64::MAX));
    let other_cpu = Expect {
        cpu: CpuIdentity {
            vendor: *b"GenuineIntel",
            signature: 0x806f8,
        },
        ..e
    };
    let msg = err(&good, &other_cpu).to_string();
    assert!(msg.contains("another CPU"), "{msg}");
    assert!(msg.contains("AuthenticAMD family 0x19"), "{msg}");
    let other_cfg = Expect {
        config: [8; 32],
        ..e
    };
    assert_eq!(err(&good, &other_cfg), FormatError::OtherConfig);
    for m in [
        err(&good[..40], &e),
        err(&altered, &e),
        err(&version, &e),
        err(&good, &other_cfg),
    ] {
        assert!(!m.to_string().contains('\n'), "{m}");
    }
}

#[test]
fn counts_over_the_limits_are_refused() {
    let mut s = sample();
    s.vcpus[0].msrs = vec![Default::default(); crate::snapshot::state::MAX_MSRS + 1];
    let bytes = encode(&s, &expect()).unwrap();
    let e = decode(&bytes, &expect()).unwrap_err();
    assert!(e.to_string().contains("MSRs"), "{e}");
    let mut s = sample();
    s.vcpus.clear();
    let bytes = encode(&s, &expect()).unwrap();
    assert!(decode(&bytes, &expect()).is_err());
}

/// xorshift64: a deterministic stream of mutations.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Bounded fuzz: mutated, truncated and extended payloads (no checksum in the way) and whole
/// files must decode or be refused, never panic or allocate without bound.
#[test]
fn fuzz_decoder_with_mutations() {
    let e = expect();
    let good = encode(&sample(), &e).unwrap();
    let payload = &good[HEADER_LEN..good.len() - SUM_LEN];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..3000 {
        let mut p = payload.to_vec();
        for _ in 0..(1 + next(&mut seed) % 8) {
            let i = (next(&mut seed) as usize) % p.len();
            p[i] = next(&mut seed) as u8;
        }
        match round % 3 {
            0 => p.truncate((next(&mut seed) as usize) % (p.len() + 1)),
            1 => p.extend((0..next(&mut seed) % 64).map(|_| 0xff)),
            _ => {}
        }
        let _ = decode_payload(&p);
        let mut file = good.clone();
        let i = (next(&mut seed) as usize) % file.len();
        file[i] ^= (next(&mut seed) as u8) | 1;
        assert!(decode(&file, &e).is_err(), "one flipped byte at {i} passed");
    }
    for len in 0..512 {
        let raw: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
        let _ = decode_payload(&raw);
        let _ = decode(&raw, &e);
    }
}
