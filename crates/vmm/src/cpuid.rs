//! Guest CPUID: KVM's supported set, adjusted per vCPU (APIC ids, topology, hypervisor bit,
//! KVM signature leaf).

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// "KVMKVMKVM\0\0\0".
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x4d];

fn bits_for(n: u32) -> u32 {
    // Number of bits needed to number `n` logical processors.
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Advertises the TSC-deadline timer (leaf 1, ECX bit 24). Without it Linux calibrates the
/// local APIC timer against another clock, which fails under nested virtualization ("APIC
/// timer disabled due to verification failure") and leaves the guest on the slow PIT.
pub fn enable_tsc_deadline(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut().filter(|e| e.function == LEAF_FEATURES) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

/// Adjusts KVM's supported CPUID for vCPU `id` of `vcpus` (one socket, one thread per core).
pub fn filter(entries: &mut Vec<kvm_cpuid_entry2>, id: u8, vcpus: u8) {
    let id32 = u32::from(id);
    let n = u32::from(vcpus);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ecx |= ECX_HYPERVISOR;
                e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (n.clamp(1, 255) << 16);
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
                // EAX[31:26]: cores per package - 1 (only for described caches).
                e.eax = (e.eax & 0x03ff_ffff) | ((n.saturating_sub(1) & 0x3f) << 26);
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0]: threads - 1; ECX[15:12]: APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | (n.saturating_sub(1) & 0xff) | (bits_for(n) << 12);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = id32;
                // One thread per compute unit; compute unit id = vCPU id.
                e.ebx = (e.ebx & !0xffff) | (id32 & 0xff);
                e.ecx &= !0x7ff; // one node, node id 0
            }
            _ => {}
        }
    }
    // Extended topology: KVM passes the host's sub-leaves (often only a zeroed sub-leaf 0),
    // so replace them: SMT level (1 thread per core), core level (all vCPUs), terminator.
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        let present = entries.iter().any(|e| e.function == leaf);
        if !present && leaf == LEAF_EXT_TOPOLOGY_V2 {
            continue;
        }
        entries.retain(|e| e.function != leaf);
        let sub = |index, eax, ebx, ecx| kvm_cpuid_entry2 {
            function: leaf,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax,
            ebx,
            ecx,
            edx: id32,
            ..Default::default()
        };
        entries.push(sub(0, 0, 1, 1 << 8));
        entries.push(sub(1, bits_for(n), n, (2 << 8) | 1));
        entries.push(sub(2, 0, 0, 2));
    }
    if !entries.iter().any(|e| e.function == LEAF_HYPERVISOR) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_is_set_in_leaf_one_only() {
        let mut all = vec![leaf(1, 0), leaf(7, 0)];
        enable_tsc_deadline(&mut all);
        assert_eq!(all[0].ecx & ECX_TSC_DEADLINE, ECX_TSC_DEADLINE);
        assert_eq!(all[1].ecx, 0);
    }

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut all = vec![leaf(1, 0), leaf(0xb, 0)];
        filter(&mut all, 3, 4);
        let topo: Vec<_> = all.iter().filter(|e| e.function == 0xb).copied().collect();
        assert_eq!(topo.len(), 3);
        let v = [all[0], topo[0], topo[1], topo[2]];
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_ne!(v[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(v[0].edx & EDX_HTT, 0);
        assert_eq!((v[1].ebx, v[1].edx), (1, 3));
        assert_eq!((v[2].eax, v[2].ebx), (2, 4));
        assert_eq!(v[3].ecx, 2);
        let h = all.iter().find(|e| e.function == LEAF_HYPERVISOR).unwrap();
        assert_eq!(h.ebx.to_le_bytes(), *b"KVMK");
    }

    #[test]
    fn bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(254), 8);
    }
}
