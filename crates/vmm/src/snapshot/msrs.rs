//! Which MSRs a snapshot saves, and in which order a restore writes them.
//!
//! As Firecracker: KVM's own list (KVM_GET_MSR_INDEX_LIST, the MSRs KVM migrates) minus those
//! Linux does not export (IA32_MCG_CTL); an MSR on the list that KVM then fails to read is left
//! out of the snapshot (see `vcpu::read_msrs`). On restore the TSC deadline comes after the TSC
//! (a deadline written before the TSC it is relative to would fire at once or never).

use kvm_bindings::kvm_msr_entry;
use kvm_ioctls::Kvm;

/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MCG_CTL: not exported by Linux, refused on write.
pub const MSR_IA32_MCG_CTL: u32 = 0x17b;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Whether a listed MSR is saved.
pub fn should_save(index: u32) -> bool {
    index != MSR_IA32_MCG_CTL
}

/// The MSRs to save on this KVM.
pub fn to_save(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let list = kvm.get_msr_index_list()?;
    Ok(filter(list.as_slice()))
}

/// [`should_save`] applied to `indices`, each once.
pub fn filter(indices: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(indices.len());
    for &i in indices {
        if should_save(i) && !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// `msrs` with the TSC deadline moved after everything else.
pub fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let (deadline, mut rest): (Vec<_>, Vec<_>) = msrs
        .iter()
        .copied()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    rest.extend(deadline);
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_and_order() {
        assert_eq!(
            filter(&[MSR_IA32_TSC_DEADLINE, 0x10, 0x17b, 0x10, 0xc000_0080]),
            vec![MSR_IA32_TSC_DEADLINE, 0x10, 0xc000_0080]
        );
        let e = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let order: Vec<u32> = restore_order(&[e(MSR_IA32_TSC_DEADLINE), e(MSR_IA32_TSC), e(1)])
            .iter()
            .map(|m| m.index)
            .collect();
        assert_eq!(order, vec![MSR_IA32_TSC, 1, MSR_IA32_TSC_DEADLINE]);
    }
}
