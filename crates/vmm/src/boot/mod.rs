//! Direct kernel boot: place the kernel, initrds, command line and boot structures in guest
//! memory and say where and how the BSP starts.

pub mod bzimage;
pub mod e820;
pub mod elf;
pub mod gdt;
pub mod initrd;
pub mod mptable;
pub mod paging;
pub mod pvh;

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::VmConfig;
use crate::layout::{BOOT_PARAMS_ADDR, CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, IDT_ADDR};

/// Boot errors.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A boot file could not be opened.
    #[error("cannot open {path}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A boot file could not be read into guest memory.
    #[error(
        "cannot read {0} into guest memory (file shorter than its size, or guest RAM too small)"
    )]
    ReadFile(PathBuf),
    /// The kernel image is malformed or unsupported.
    #[error("kernel image: {0}")]
    BadKernel(&'static str),
    /// linux-loader refused the kernel.
    #[error("cannot load the kernel (is guest RAM large enough for it?)")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// Mapping a boot file over guest RAM failed.
    #[error("cannot map a boot file into guest memory")]
    MapFile(#[source] crate::memory::MemoryError),
    /// The initrds do not fit between the kernel and the top of low RAM.
    #[error("initrds ({bytes} bytes) do not fit in guest RAM above the kernel: raise memory_mib")]
    InitrdDoesNotFit {
        /// Total initrd bytes.
        bytes: u64,
    },
    /// The command line is too long or malformed.
    #[error("kernel command line: {0} (at most {max} bytes)", max = CMDLINE_MAX - 1)]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing a boot structure to guest memory failed.
    #[error("cannot write the {0} to guest memory")]
    WriteStructure(&'static str),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh {
        /// The PHYS32 entry.
        entry: u64,
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
    /// 64-bit Linux boot protocol: long mode, identity paging, RSI = `boot_params`.
    Linux64 {
        /// startup_64.
        entry: u64,
        /// Address of the zero page.
        boot_params: u64,
    },
}

/// The result of preparing guest memory for boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// Where the BSP starts.
    pub entry: EntryPoint,
    /// The initrd span reported to the kernel.
    pub initrd: Option<(u64, u64)>,
    /// Bytes of kernel and initrd mapped copy-on-write (0 with `copy_boot_files`).
    pub mapped_bytes: u64,
    /// The final command line length.
    pub cmdline_len: usize,
}

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF vmlinux.
    Elf,
    /// bzImage.
    BzImage,
}

/// Detects the kernel format from its magic numbers.
pub fn detect_format(file: &mut File) -> Result<KernelFormat, BootError> {
    use std::io::{Seek, SeekFrom};
    let mut head = [0u8; 0x206];
    let n = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read(&mut head))
        .map_err(|_| BootError::BadKernel("unreadable"))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::BadKernel("neither an ELF vmlinux nor a bzImage"))
    }
}

/// Builds the command line: the base line, then `extra` (device arguments), then init args.
/// Mapped initrds add `retain_initrd`: Linux would otherwise poison the initrd's pages once
/// unpacked, a write that copies every page shared with the page cache (slow, and the memory
/// is no longer shared between VMs).
pub fn build_cmdline(cfg: &VmConfig, extra: &[String]) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    let retain = (cfg.maps_boot_files() && !cfg.initrds.is_empty()).then_some("retain_initrd");
    for part in std::iter::once(cfg.cmdline.as_str())
        .chain(retain)
        .chain(extra.iter().map(String::as_str))
        .chain(cfg.init_args.as_deref())
    {
        if !part.trim().is_empty() {
            c.insert_str(part.trim()).map_err(BootError::Cmdline)?;
        }
    }
    Ok(c)
}

/// Loads everything the kernel needs into `mem` and returns the entry point.
pub fn load(
    mem: &GuestMemoryMmap,
    cfg: &VmConfig,
    extra_cmdline: &[String],
) -> Result<BootPlan, BootError> {
    let mem_bytes = cfg.memory_mib << 20;
    let mut kernel = File::open(&cfg.kernel).map_err(|source| BootError::OpenFile {
        path: cfg.kernel.clone(),
        source,
    })?;
    // With a vhost-user backend, RAM is a shared memfd that the backend maps too: a private
    // file mapping over it would show the backend stale memfd pages (see README).
    let copy = !cfg.maps_boot_files();
    let low_end = e820::low_ram_end(mem_bytes);
    let (pvh_entry, entry64, kernel_end, header, initrd_limit, mut mapped) =
        match detect_format(&mut kernel)? {
            KernelFormat::Elf => {
                let l = if copy || !crate::memory::is_mappable(&kernel) {
                    elf::load_copy(mem, &mut kernel)?
                } else {
                    elf::load_mapped(mem, &mut kernel)?
                };
                (l.pvh_entry, l.entry, l.end, None, low_end, l.mapped_bytes)
            }
            KernelFormat::BzImage => {
                let b = bzimage::load(mem, &mut kernel)?;
                (None, b.entry, b.end, Some(b.header), b.initrd_limit, 0)
            }
        };

    let initrd = initrd::load(
        mem,
        &cfg.initrds,
        kernel_end,
        initrd_limit.min(low_end),
        copy,
    )?;
    if let Some(s) = initrd {
        mapped += s.mapped_bytes;
    }
    let initrd = initrd.map(|s| (s.addr, s.size));

    let cmdline = build_cmdline(cfg, extra_cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|_| BootError::WriteStructure("command line"))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();

    mptable::write(mem, cfg.vcpus)?;
    let gdt = if pvh_entry.is_some() {
        gdt::GDT_32
    } else {
        gdt::GDT_64
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|_| BootError::WriteStructure("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|_| BootError::WriteStructure("IDT"))?;

    let entry = match pvh_entry {
        Some(e) => EntryPoint::Pvh {
            entry: e,
            start_info: pvh::write_start_info(mem, CMDLINE_ADDR, initrd, mem_bytes)?,
        },
        None => {
            bzimage::write_boot_params(
                mem,
                &bzimage::ZeroPage {
                    header,
                    cmdline: (CMDLINE_ADDR, cmdline_len),
                    initrd,
                    mem_bytes,
                },
            )?;
            paging::write_identity_tables(mem)?;
            EntryPoint::Linux64 {
                entry: entry64,
                boot_params: BOOT_PARAMS_ADDR,
            }
        }
    };
    Ok(BootPlan {
        entry,
        initrd,
        mapped_bytes: mapped,
        cmdline_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;

    #[test]
    fn cmdline_order_is_base_devices_init_args() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, b"x").unwrap();
        let cfg = VmConfig::from_toml(&format!(
            "memory_mib = 8\nkernel = \"{}\"\ncmdline = \"console=ttyS0\"\n\
                 init_args = \"crxrun=/bin/x\"\n",
            k.display()
        ))
        .unwrap();
        let c = build_cmdline(&cfg, &["virtio_mmio.device=4K@0xd0000000:5".into()]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 crxrun=/bin/x"
        );
        let long = "x".repeat(CMDLINE_MAX);
        assert!(build_cmdline(&cfg, &[long]).is_err());
    }

    #[test]
    fn mapped_initrds_are_retained_copied_ones_freed() {
        let d = tempfile::tempdir().unwrap();
        let (k, i) = (d.path().join("k"), d.path().join("i"));
        std::fs::write(&k, b"x").unwrap();
        std::fs::write(&i, b"y").unwrap();
        let line = |copy: bool| {
            let toml = format!(
                "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\"]\ncmdline = \"console=ttyS0\"\n\
                 copy_boot_files = {copy}\n",
                k.display(),
                i.display()
            );
            let cfg = VmConfig::from_toml(&toml).unwrap();
            let c = build_cmdline(&cfg, &[]).unwrap();
            c.as_cstring().unwrap().into_string().unwrap()
        };
        assert_eq!(line(false), "console=ttyS0 retain_initrd");
        assert_eq!(line(true), "console=ttyS0");
        // With virtio-fs the boot files are copied (shared memfd RAM): nothing to retain.
        let sock = d.path().join("fs.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let toml = format!(
            "memory_mib = 8\nkernel = \"{}\"\ninitrds = [\"{}\"]\ncmdline = \"console=ttyS0\"\n\
             [[fs]]\ntag = \"t\"\nsocket = \"{}\"\n",
            k.display(),
            i.display(),
            sock.display()
        );
        let cfg = VmConfig::from_toml(&toml).unwrap();
        let c = build_cmdline(&cfg, &[]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().into_string().unwrap(),
            "console=ttyS0"
        );
    }

    #[test]
    fn format_detection() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, b"\x7fELF....").unwrap();
        assert_eq!(
            detect_format(&mut File::open(&p).unwrap()).unwrap(),
            KernelFormat::Elf
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&p, &bz).unwrap();
        assert_eq!(
            detect_format(&mut File::open(&p).unwrap()).unwrap(),
            KernelFormat::BzImage
        );
        std::fs::write(&p, b"nope").unwrap();
        assert!(detect_format(&mut File::open(&p).unwrap()).is_err());
    }
}
