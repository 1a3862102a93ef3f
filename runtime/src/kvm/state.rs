//! A vCPU's state on KVM: the part the machine's [`VcpuState`] carries
//! (general registers, rip, rflags, control registers, EFER, fs/gs base,
//! selectors, GDT) and the rest ([`CpuExtras`]: the full special
//! registers with segment caches, IDT, TR, LDT, cr2, cr8 and APIC base;
//! mp state; the xsave area with x87/SSE/AVX state; XCRs; debug
//! registers; a fixed list of MSRs; pending exceptions, interrupts and
//! NMIs), which the KVM engine keeps in its private checkpoint state.
//! Both are read and written in Firecracker's order: mp state, regs,
//! sregs, xsave, xcrs, debug registers, MSRs, vCPU events.

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use machine::codec::{DecodeError, Reader, Writer};
use machine::layout::{CODE_SELECTOR, DATA_SELECTOR};
use machine::{RunState, VcpuState};
use zerocopy::{FromBytes, IntoBytes};

use super::sys;

/// The MSRs a checkpoint carries, where KVM has them: SYSENTER, SYSCALL
/// (STAR, LSTAR, CSTAR, SFMASK), KERNEL_GS_BASE, TSC_AUX, PAT and
/// MISC_ENABLE. Not the TSC: it ticks while the guest is paused, so
/// saving it would make a paused machine's state differ from one read to
/// the next; a restored guest's TSC is the new host's (the guests read
/// time from the clock device, not rdtsc).
pub(crate) const MSRS_CARRIED: [u32; 11] = [
    0x174,
    0x175,
    0x176,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0102,
    0xc000_0103,
    0x277,
    0x1a0,
];
/// Most MSRs a decoded state may hold.
const MSRS_MAX: usize = 64;

/// Everything KVM holds about a vCPU beyond [`VcpuState`].
#[derive(Clone)]
pub(crate) struct CpuExtras {
    pub mp_state: kvm_mp_state,
    pub sregs: kvm_sregs,
    /// The legacy 4 KiB xsave area (x87, SSE, AVX and the xsave header).
    pub xsave: [u32; 1024],
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
}

impl std::fmt::Debug for CpuExtras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuExtras")
            .field("msrs", &self.msrs)
            .finish_non_exhaustive()
    }
}

/// Error from a vCPU state ioctl, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct StateError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn ioctl<T>(what: &'static str, result: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    result.map_err(|source| StateError { what, source })
}

/// The MSRs of `wanted` that this vCPU has (KVM stops at the first it
/// does not know, so each is asked alone).
pub(crate) fn supported_msrs(fd: &VcpuFd, wanted: &[u32]) -> Vec<u32> {
    wanted
        .iter()
        .copied()
        .filter(|&index| read_msrs(fd, &[index]).is_ok())
        .collect()
}

fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, StateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = ioctl("msrs", Msrs::from_entries(&entries).map_err(|_| einval()))?;
    let read = ioctl("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
    if read != indices.len() {
        return Err(StateError {
            what: "KVM_GET_MSRS (short)",
            source: einval(),
        });
    }
    Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect())
}

fn einval() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::EINVAL)
}

impl CpuExtras {
    /// Reads the extras of a stopped vCPU, in Firecracker's order.
    pub(crate) fn read(fd: &VcpuFd, msr_indices: &[u32]) -> Result<CpuExtras, StateError> {
        let mp_state = ioctl("KVM_GET_MP_STATE", fd.get_mp_state())?;
        let sregs = ioctl("KVM_GET_SREGS", fd.get_sregs())?;
        let xsave = ioctl("KVM_GET_XSAVE", fd.get_xsave())?.region;
        let xcrs = ioctl("KVM_GET_XCRS", fd.get_xcrs())?;
        let debugregs = ioctl("KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
        let msrs = read_msrs(fd, msr_indices)?;
        let events = ioctl("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
        Ok(CpuExtras {
            mp_state,
            sregs,
            xsave,
            xcrs,
            debugregs,
            msrs,
            events,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.blob(self.mp_state.as_bytes());
        w.blob(self.sregs.as_bytes());
        w.blob(self.xsave.as_bytes());
        w.blob(self.xcrs.as_bytes());
        w.blob(self.debugregs.as_bytes());
        w.u32(u32::try_from(self.msrs.len()).expect("few MSRs"));
        for (index, value) in &self.msrs {
            w.u32(*index);
            w.u64(*value);
        }
        w.blob(self.events.as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<CpuExtras, DecodeError> {
        let mp_state = pod::<kvm_mp_state>(r, "mp state")?;
        let sregs = pod::<kvm_sregs>(r, "sregs")?;
        let xsave = pod::<[u32; 1024]>(r, "xsave")?;
        let xcrs = pod::<kvm_xcrs>(r, "xcrs")?;
        let debugregs = pod::<kvm_debugregs>(r, "debug registers")?;
        let mut msrs = Vec::new();
        for _ in 0..r.count(MSRS_MAX)? {
            msrs.push((r.u32()?, r.u64()?));
        }
        let events = pod::<kvm_vcpu_events>(r, "vcpu events")?;
        Ok(CpuExtras {
            mp_state,
            sregs,
            xsave,
            xcrs,
            debugregs,
            msrs,
            events,
        })
    }
}

fn pod<T: FromBytes>(r: &mut Reader<'_>, what: &str) -> Result<T, DecodeError> {
    T::read_from_bytes(r.blob()?).map_err(|_| DecodeError::Invalid(format!("{what} size")))
}

/// The machine's view of a vCPU from KVM's registers.
pub(crate) fn to_vcpu_state(regs: &kvm_regs, sregs: &kvm_sregs, run_state: RunState) -> VcpuState {
    VcpuState {
        gprs: [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        rip: regs.rip,
        rflags: regs.rflags,
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        fs_base: sregs.fs.base,
        gs_base: sregs.gs.base,
        selectors: [
            sregs.cs.selector,
            sregs.ds.selector,
            sregs.es.selector,
            sregs.fs.selector,
            sregs.gs.selector,
            sregs.ss.selector,
        ],
        gdt_base: sregs.gdt.base,
        gdt_limit: sregs.gdt.limit,
        run_state,
        // The KVM engine does not capture them yet (issue 12's later steps).
        system: None,
    }
}

/// KVM's general registers from the machine's view.
pub(crate) fn to_kvm_regs(state: &VcpuState) -> kvm_regs {
    let g = state.gprs;
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: state.rip,
        rflags: state.rflags,
    }
}

/// The segment cache the machine's GDT gives `selector`: the flat 64-bit
/// code segment, the flat data segment, or an unusable null segment.
fn flat_segment(selector: u16, base: u64) -> kvm_segment {
    let present = |type_: u8, l: u8, db: u8| kvm_segment {
        base,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    match selector & !7 {
        s if s == CODE_SELECTOR => present(0xb, 1, 0),
        s if s == DATA_SELECTOR => present(0x3, 0, 1),
        _ => kvm_segment {
            base,
            selector,
            unusable: 1,
            ..Default::default()
        },
    }
}

/// `base` with the machine's view written over it. Segment caches that
/// `base` has for the same selector are kept; others are the GDT's.
pub(crate) fn overlay_sregs(base: &kvm_sregs, state: &VcpuState) -> kvm_sregs {
    let mut sregs = *base;
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
    sregs.gdt.base = state.gdt_base;
    sregs.gdt.limit = state.gdt_limit;
    let [cs, ds, es, fs, gs, ss] = state.selectors;
    for (segment, selector) in [
        (&mut sregs.cs, cs),
        (&mut sregs.ds, ds),
        (&mut sregs.es, es),
        (&mut sregs.fs, fs),
        (&mut sregs.gs, gs),
        (&mut sregs.ss, ss),
    ] {
        if segment.selector != selector || segment.present == 0 {
            *segment = flat_segment(selector, 0);
        }
    }
    sregs.fs.base = state.fs_base;
    sregs.gs.base = state.gs_base;
    sregs
}

/// Writes a vCPU's whole state in Firecracker's order: mp state, regs,
/// sregs, then (with `extras`) xsave, xcrs, debug registers, MSRs and
/// events. Without extras the sregs not in `state` stay as the vCPU has
/// them.
pub(crate) fn write(
    fd: &VcpuFd,
    state: &VcpuState,
    extras: Option<&CpuExtras>,
) -> Result<(), StateError> {
    if let Some(extras) = extras {
        ioctl("KVM_SET_MP_STATE", fd.set_mp_state(extras.mp_state))?;
    }
    ioctl("KVM_SET_REGS", fd.set_regs(&to_kvm_regs(state)))?;
    let base = match extras {
        Some(extras) => extras.sregs,
        None => ioctl("KVM_GET_SREGS", fd.get_sregs())?,
    };
    ioctl("KVM_SET_SREGS", fd.set_sregs(&overlay_sregs(&base, state)))?;
    let Some(extras) = extras else {
        return Ok(());
    };
    let xsave = kvm_xsave {
        region: extras.xsave,
        ..Default::default()
    };
    ioctl("KVM_SET_XSAVE", sys::set_xsave(fd, &xsave))?;
    ioctl("KVM_SET_XCRS", fd.set_xcrs(&extras.xcrs))?;
    ioctl("KVM_SET_DEBUGREGS", fd.set_debug_regs(&extras.debugregs))?;
    let entries: Vec<kvm_msr_entry> = extras
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = ioctl("msrs", Msrs::from_entries(&entries).map_err(|_| einval()))?;
    let written = ioctl("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
    if written != entries.len() {
        return Err(StateError {
            what: "KVM_SET_MSRS (short)",
            source: einval(),
        });
    }
    ioctl("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&extras.events))?;
    Ok(())
}
