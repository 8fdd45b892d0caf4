//! The Intel MultiProcessor table (spec 1.4) at the EBDA, so Linux brings up every vCPU and
//! routes ISA interrupts through the in-kernel IOAPIC without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::layout::{EBDA_START, HIMEM_START, IOAPIC_ADDR, LAPIC_ADDR};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
// Family 6 stepping; FPU and APIC present.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;
const NUM_IRQS: u8 = 24;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Builds the floating pointer and configuration table for `vcpus` CPUs; returns the bytes to
/// place at [`EBDA_START`]. Public for tests.
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let mut e = vec![0u8, id, APIC_VERSION];
        e.push(CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 });
        e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        entries.extend(e);
        count += 1;
    }
    // Bus: ISA.
    entries.extend_from_slice(&[1, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    // IOAPIC.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    // ISA IRQ i -> IOAPIC pin i, conforming polarity/trigger.
    for irq in 0..NUM_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0: ExtINT to all local APICs; LINT1: NMI.
    entries.extend_from_slice(&[4, 3, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_addr = EBDA_START as u32 + 16;
    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"CRX     "); // OEM id
    table.extend_from_slice(b"CRXMICROVM  "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length/checksum
    table.extend(entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec 1.4
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // features: table present, no default config, no IMCR
    fp[10] = checksum(&fp);
    fp.extend(table);
    fp
}

/// Writes the MP table for `vcpus` CPUs at the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), BootError> {
    let bytes = build(vcpus);
    if EBDA_START + bytes.len() as u64 > HIMEM_START {
        return Err(BootError::WriteStructure("MP table (too many vCPUs)"));
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| BootError::WriteStructure("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for n in [1u8, 2, 254] {
            let b = build(n);
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0);
            let t = &b[16..];
            assert_eq!(&t[..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0);
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count, u16::from(n) + 2 + 24 + 2);
            // First processor is the BSP.
            assert_eq!(t[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
            assert!(EBDA_START + b.len() as u64 <= HIMEM_START);
        }
    }
}
