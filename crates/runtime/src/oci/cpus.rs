//! CPU lists (`0-3,6`: `cpus` of `linux.resources.cpu`, `process.execCPUAffinity`) against the
//! VM's vCPUs, whose ids are `0..vcpus`.

/// The ranges of a CPU list, `None` when malformed (empty, a bad number, a reversed range).
fn ranges(list: &str) -> Option<Vec<(u32, u32)>> {
    list.split(',')
        .map(|part| {
            let part = part.trim();
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let a = part.parse().ok()?;
                    (a, a)
                }
            };
            (a <= b).then_some((a, b))
        })
        .collect()
}

/// The highest id of a CPU list; `None` when malformed.
pub fn highest(list: &str) -> Option<u32> {
    ranges(list)?.iter().map(|r| r.1).max()
}

/// The number of CPUs in a CPU list; `None` when malformed.
pub fn count(list: &str) -> Option<u64> {
    Some(
        ranges(list)?
            .iter()
            .map(|(a, b)| u64::from(b - a) + 1)
            .sum(),
    )
}

/// `list` made to fit a VM with `vcpus` vCPUs, `None` when it fits as it is (or is malformed:
/// left for the guest to refuse). Its ids below `vcpus` stay; the lowest other vCPUs are added
/// until it has as many CPUs as it had, or all of the VM's.
pub fn fit(list: &str, vcpus: u32) -> Option<String> {
    let vcpus = vcpus.max(1);
    let r = ranges(list)?;
    if r.iter().all(|&(_, b)| b < vcpus) {
        return None;
    }
    let mut set = vec![false; vcpus as usize];
    for &(a, b) in &r {
        for id in a..=b.min(vcpus - 1) {
            set[id as usize] = true;
        }
    }
    let want = count(list)?.min(u64::from(vcpus));
    let mut have = set.iter().filter(|x| **x).count() as u64;
    for x in set.iter_mut() {
        if have >= want {
            break;
        }
        if !*x {
            *x = true;
            have += 1;
        }
    }
    Some(format_list(&set))
}

/// The CPU list of the ids set in `set` (`0-1,3`).
fn format_list(set: &[bool]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < set.len() {
        if !set[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < set.len() && set[i + 1] {
            i += 1;
        }
        parts.push(if start == i {
            start.to_string()
        } else {
            format!("{start}-{i}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(highest("0-3,6"), Some(6));
        assert_eq!(highest("2"), Some(2));
        assert_eq!(count("0-3,6"), Some(5));
        assert_eq!(count("0-4294967295"), Some(1 << 32));
        for bad in ["", "x", "3-1", "1,", "-1", "1-"] {
            assert_eq!(highest(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lists_fit_the_vm() {
        assert_eq!(fit("0-1", 2), None);
        assert_eq!(fit("0-3,6", 7), None);
        assert_eq!(fit("0-3,6", 2).as_deref(), Some("0-1"));
        assert_eq!(fit("0-3,6", 4).as_deref(), Some("0-3"));
        assert_eq!(fit("6", 2).as_deref(), Some("0"));
        assert_eq!(fit("1,5", 4).as_deref(), Some("0-1"));
        assert_eq!(fit("1,3,9", 8).as_deref(), Some("0-1,3"));
        assert_eq!(fit("0-4294967295", 3).as_deref(), Some("0-2"));
        assert_eq!(fit("bad", 2), None);
    }
}
