// Where a run stops when something asks it to in the middle of a
// translation block. Stock unicorn checks for an exit request after every
// guest load and store; our patch checks in the slow-path load and store
// helpers instead (the only accesses that run C code, so the only ones
// that can ask), and ends a block under the instruction budget after the
// instructions whose UC_HOOK_INSN hooks may ask (rdmsr, wrmsr, cpuid).
// These runs pin where each kind of stop lands: at the instruction of the
// access that asked, with the block after it unrun and the registers as
// the instructions before it left them; an MSR hook's stop right after
// its instruction; and the same stops whatever the slicing of a run.

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;

use iced_x86::code_asm::*;
use unicorn_engine::unicorn_const::{
    uc_emu_stop, uc_engine, uc_error, uc_hook, uc_hook_add, HookType, Prot, X86Insn,
};
use unicorn_engine::{RegisterX86, Unicorn};

use crate::budget::BUDGET;
use crate::longmode::{self, DATA, KERNEL_CODE};

/// An MMIO page (identity-mapped, as all of the first 4 MiB).
const MMIO: u64 = 0x30_5000;
/// A RAM page, write-protected in some probes.
const PROTECTED: u64 = 0x30_6000;
/// No memory behind this page: accesses to it are invalid.
const UNMAPPED: u64 = 0x30_7000;
/// What the MMIO page reads as.
const MMIO_VALUE: u64 = 0x5a5a;

const REGISTERS: [RegisterX86; 8] = [
    RegisterX86::RAX,
    RegisterX86::RCX,
    RegisterX86::RDX,
    RegisterX86::RBX,
    RegisterX86::RSI,
    RegisterX86::RDI,
    RegisterX86::RIP,
    RegisterX86::RFLAGS,
];

/// One access the MMIO page saw: its offset and, for a write, the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read(u64),
    Write(u64, u64),
}

/// The MMIO page's log, and which access (counting from 1) stops the run;
/// `every` makes it every such access.
#[derive(Debug, Default)]
struct Device {
    log: Vec<Access>,
    stop_at: Option<usize>,
    every: bool,
}

impl Device {
    /// Logs `access`; whether it stops the run.
    fn record(&mut self, access: Access) -> bool {
        self.log.push(access);
        let n = self.log.len();
        match self.stop_at {
            Some(k) if self.every => n % k == 0,
            Some(k) => n == k,
            None => false,
        }
    }
}

type Emit = fn(&mut CodeAssembler, &mut CodeLabel) -> Result<(), IcedError>;

/// A raw long-mode instance running a guest of `emit` at KERNEL_CODE,
/// with the MMIO page mapped and the UNMAPPED page gone.
struct Probe {
    uc: Unicorn<'static, ()>,
    /// The address of the instruction the guest marked.
    marked: u64,
    /// Where the code ends: rip after its final hlt.
    end: u64,
    device: Rc<RefCell<Device>>,
}

impl Probe {
    fn new(emit: Emit, device: Device) -> Probe {
        let mut memory = longmode::memory(&[]);
        let mut a = CodeAssembler::new(64).expect("64-bit");
        let mut mark = a.create_label();
        emit(&mut a, &mut mark).expect("assembles");
        let result = longmode::assemble_into(&mut memory, KERNEL_CODE, a);
        let marked = result.label_ip(&mark).expect("marked");
        let end = KERNEL_CODE + result.inner.code_buffer.len() as u64;
        let mut uc = longmode::instance(&memory);
        uc.mem_unmap(MMIO, 0x1000).expect("unmaps");
        uc.mem_unmap(UNMAPPED, 0x1000).expect("unmaps");
        let device = Rc::new(RefCell::new(device));
        let (r, w) = (device.clone(), device.clone());
        uc.mmio_map(
            MMIO,
            0x1000,
            Some(move |uc: &mut Unicorn<'_, ()>, offset: u64, _size: usize| {
                if r.borrow_mut().record(Access::Read(offset)) {
                    uc.emu_stop().expect("stops");
                }
                MMIO_VALUE
            }),
            Some(
                move |uc: &mut Unicorn<'_, ()>, offset: u64, _size: usize, value: u64| {
                    if w.borrow_mut().record(Access::Write(offset, value)) {
                        uc.emu_stop().expect("stops");
                    }
                },
            ),
        )
        .expect("maps");
        Probe {
            uc,
            marked,
            end,
            device,
        }
    }

    /// Runs on the instruction budget for at most `n` instructions, as the
    /// engine runs a slice; what emu_start returned and how many
    /// instructions the budget says began.
    fn run(&mut self, n: u64) -> (Result<(), uc_error>, u64) {
        let rip = self.reg(RegisterX86::RIP);
        self.uc.reg_write(BUDGET, n).expect("budget");
        let result = self.uc.emu_start(rip, 0, 0, 0);
        let left = self.uc.reg_read(BUDGET).expect("budget");
        assert!(left <= n, "{left} left of {n}");
        (result, n - left)
    }

    /// Runs to the guest's hlt in slices of the lengths `slices` cycles
    /// through, resuming after every stop; the instructions begun.
    fn run_to_hlt(&mut self, slices: &[u64]) -> u64 {
        let mut ran = 0;
        for &slice in slices.iter().cycle() {
            let (result, n) = self.run(slice);
            result.expect("runs");
            ran += n;
            assert!(ran < 1_000_000, "the guest halts");
            if self.halted() {
                return ran;
            }
        }
        unreachable!("cycle never ends")
    }

    /// Whether the guest executed its final hlt (rip is just past it).
    fn halted(&self) -> bool {
        self.reg(RegisterX86::RIP) == self.end
    }

    fn reg(&self, register: RegisterX86) -> u64 {
        self.uc.reg_read(register).expect("register")
    }

    fn registers(&self) -> Vec<u64> {
        REGISTERS.iter().map(|&r| self.reg(r)).collect()
    }

    fn q(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.uc.mem_read(at, &mut b).expect("reads");
        u64::from_le_bytes(b)
    }

    fn log(&self) -> Vec<Access> {
        self.device.borrow().log.clone()
    }
}

fn stop_at(k: usize) -> Device {
    Device {
        stop_at: Some(k),
        ..Device::default()
    }
}

/// Three instructions, a marked MMIO store, then more of the same block.
fn mmio_store(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    a.mov(rbx, 0x11u64)?;
    a.mov(eax, 0x1234)?;
    a.mov(rdi, MMIO)?;
    a.set_label(mark)?;
    a.mov(dword_ptr(rdi + 0x10), eax)?;
    a.inc(rbx)?;
    a.add(rcx, 5)?;
    a.mov(qword_ptr(DATA + 0x100), rbx)?;
    a.hlt()
}

#[test]
fn an_mmio_store_that_stops_leaves_at_the_store_with_the_rest_of_its_block_unrun() {
    let mut p = Probe::new(mmio_store, stop_at(1));
    let (result, ran) = p.run(1000);
    result.expect("stops without error");
    assert_eq!(p.reg(RegisterX86::RIP), p.marked, "at the store");
    assert_eq!(ran, 4, "the three before it and the store itself began");
    assert_eq!(
        p.reg(RegisterX86::RBX),
        0x11,
        "the inc after it did not run"
    );
    assert_eq!(p.reg(RegisterX86::RCX), 0, "nor the add");
    assert_eq!(p.reg(RegisterX86::RAX), 0x1234, "the mov before it ran");
    assert_eq!(p.q(DATA + 0x100), 0, "nor the store after it");
    assert_eq!(p.log(), [Access::Write(0x10, 0x1234)]);

    // The next run starts at the store, which writes again.
    let ran = p.run_to_hlt(&[1000]);
    assert_eq!(ran, 5, "the store, inc, add, mov and hlt");
    assert_eq!(p.reg(RegisterX86::RBX), 0x12);
    assert_eq!(p.reg(RegisterX86::RCX), 5);
    assert_eq!(p.q(DATA + 0x100), 0x12);
    assert_eq!(p.log(), [Access::Write(0x10, 0x1234); 2]);
}

/// An inc, a marked MMIO load into rax, then more of the same block.
fn mmio_load(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    a.mov(rax, 0x77u64)?;
    a.mov(rdi, MMIO)?;
    a.inc(rbx)?;
    a.set_label(mark)?;
    a.add(rax, qword_ptr(rdi + 8))?;
    a.inc(rbx)?;
    a.mov(qword_ptr(DATA), rax)?;
    a.hlt()
}

#[test]
fn an_mmio_load_that_stops_leaves_at_the_load_with_its_register_unwritten() {
    let mut p = Probe::new(mmio_load, stop_at(1));
    let (result, ran) = p.run(1000);
    result.expect("stops without error");
    assert_eq!(p.reg(RegisterX86::RIP), p.marked, "at the load");
    assert_eq!(ran, 4);
    assert_eq!(p.reg(RegisterX86::RAX), 0x77, "the add did not complete");
    assert_eq!(p.reg(RegisterX86::RBX), 1, "the inc before it ran");
    // The quadword reaches the device as two 4-byte reads, both before
    // the stop: it is noticed after the whole access.
    let halves = [Access::Read(8), Access::Read(12)];
    assert_eq!(p.log(), halves);

    let ran = p.run_to_hlt(&[1000]);
    assert_eq!(ran, 4, "the load, inc, mov and hlt");
    let loaded = MMIO_VALUE | MMIO_VALUE << 32;
    assert_eq!(p.reg(RegisterX86::RAX), 0x77 + loaded);
    assert_eq!(p.reg(RegisterX86::RBX), 2);
    assert_eq!(p.q(DATA), 0x77 + loaded);
    assert_eq!(p.log(), [halves, halves].concat());
}

/// A marked store to `UNMAPPED - 4`: `split` 8 bytes across the end of a
/// RAM page into the unmapped one, or else 8 bytes all in the unmapped.
fn invalid_store(split: bool) -> Emit {
    fn emit(a: &mut CodeAssembler, mark: &mut CodeLabel, at: u64) -> Result<(), IcedError> {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(rdi, at)?;
        a.set_label(mark)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.inc(rbx)?;
        a.hlt()
    }
    if split {
        |a, mark| emit(a, mark, UNMAPPED - 4)
    } else {
        |a, mark| emit(a, mark, UNMAPPED + 8)
    }
}

#[test]
fn an_invalid_store_mid_block_stops_the_run_at_the_store() {
    for split in [false, true] {
        let mut p = Probe::new(invalid_store(split), Device::default());
        let (result, ran) = p.run(1000);
        assert_eq!(result, Err(uc_error::WRITE_UNMAPPED), "split {split}");
        assert_eq!(p.reg(RegisterX86::RIP), p.marked, "split {split}");
        assert_eq!(ran, 3, "split {split}");
        assert_eq!(p.reg(RegisterX86::RBX), 0, "split {split}: the inc after");
        if split {
            // The bytes in RAM are stored one by one before those beyond.
            let mut b = [0u8; 4];
            p.uc.mem_read(UNMAPPED - 4, &mut b).expect("reads");
            assert_eq!(u32::from_le_bytes(b), 0x5566_7788, "the half in RAM");
        }
    }
}

/// A marked load from the unmapped page into rax.
fn invalid_load(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    a.mov(rax, 0x99u64)?;
    a.mov(rdi, UNMAPPED)?;
    a.set_label(mark)?;
    a.mov(rax, qword_ptr(rdi))?;
    a.inc(rbx)?;
    a.hlt()
}

#[test]
fn an_invalid_load_mid_block_stops_the_run_at_the_load() {
    let mut p = Probe::new(invalid_load, Device::default());
    let (result, ran) = p.run(1000);
    assert_eq!(result, Err(uc_error::READ_UNMAPPED));
    assert_eq!(p.reg(RegisterX86::RIP), p.marked);
    assert_eq!(ran, 3);
    assert_eq!(p.reg(RegisterX86::RAX), 0x99, "not loaded");
    assert_eq!(p.reg(RegisterX86::RBX), 0);
}

/// Two stores into the PROTECTED page amid other instructions of a block,
/// the first marked; every guest here ends in its one hlt.
fn protected_stores(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    a.mov(rax, 0x55u64)?;
    a.mov(rdi, PROTECTED)?;
    a.set_label(mark)?;
    a.mov(qword_ptr(rdi + 0x20), rax)?;
    a.inc(rbx)?;
    a.mov(qword_ptr(rdi + 0x28), rbx)?;
    a.add(rcx, 3)?;
    a.hlt()
}

/// As the engine's `DirtyTracking::WriteProtect` takes a write to a
/// protected page (hooks.rs, `protected_write`, which also does the store
/// itself): the hook claims it, and the block runs on; a hook that does
/// not claim it is an error, at the store.
#[test]
fn a_write_protection_fault_mid_block_runs_on_when_claimed_and_stops_there_when_not() {
    for claimed in [true, false] {
        let mut p = Probe::new(protected_stores, Device::default());
        p.uc.mem_protect(PROTECTED, 0x1000, Prot::READ | Prot::EXEC)
            .expect("protects");
        let faults = Rc::new(RefCell::new(Vec::new()));
        let f = faults.clone();
        p.uc.add_mem_hook(
            HookType::MEM_WRITE_PROT,
            1,
            0,
            move |_, _, address, _, _| {
                f.borrow_mut().push(address);
                claimed
            },
        )
        .expect("hook");
        let (result, ran) = p.run(1000);
        if claimed {
            result.expect("runs to hlt");
            assert!(p.halted());
            assert_eq!(ran, 7);
            assert_eq!(p.reg(RegisterX86::RBX), 1);
            assert_eq!(p.reg(RegisterX86::RCX), 3);
            assert_eq!(*faults.borrow(), [PROTECTED + 0x20, PROTECTED + 0x28]);
        } else {
            assert_eq!(result, Err(uc_error::WRITE_PROT));
            assert_eq!(p.reg(RegisterX86::RIP), p.marked);
            assert_eq!(ran, 3);
            assert_eq!(p.reg(RegisterX86::RBX), 0, "the inc after it");
            assert_eq!(p.q(PROTECTED + 0x20), 0, "the store was not done");
            assert_eq!(*faults.borrow(), [PROTECTED + 0x20]);
        }
    }
}

/// A loop whose blocks mix an MMIO store and load (4 bytes: one device
/// access each) with RAM accesses.
fn mmio_loop(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.set_label(mark)?;
    a.mov(rdi, MMIO)?;
    a.mov(rsi, DATA)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut top)?;
    a.inc(rcx)?;
    a.mov(dword_ptr(rdi), ecx)?;
    a.add(rbx, rcx)?;
    a.mov(qword_ptr(rsi + rcx * 8), rbx)?;
    a.add(edx, dword_ptr(rdi + 8))?;
    a.xor(rax, rdx)?;
    a.cmp(rcx, 40)?;
    a.jne(top)?;
    a.hlt()
}

/// Where the loop's stops land and what it ends with.
fn mmio_loop_outcome(slices: &[u64]) -> (u64, Vec<u64>, Vec<u8>, Vec<Access>) {
    let device = Device {
        stop_at: Some(3),
        every: true,
        ..Device::default()
    };
    let mut p = Probe::new(mmio_loop, device);
    let ran = p.run_to_hlt(slices);
    let mut data = vec![0u8; 0x200];
    p.uc.mem_read(DATA, &mut data).expect("reads");
    (ran, p.registers(), data, p.log())
}

/// Every third MMIO access stops the run, which resumes at it: cut into
/// slices of any lengths (blocks cut short by the budget, translated
/// afresh or found in the cache), the run makes the same accesses, begins
/// the same instructions and ends in the same state as in one slice.
#[test]
fn mmio_stops_land_alike_however_the_run_is_sliced() {
    let whole = mmio_loop_outcome(&[1_000_000]);
    // 40 stores and 40 loads; each stop repeats its access (the repeat,
    // one past a multiple of three, does not stop).
    let repeats = whole.3.len() - 80;
    assert_eq!(repeats, whole.3.len() / 3, "every third access stopped");
    for slices in [&[1][..], &[2, 3], &[5, 1, 7], &[13], &[64]] {
        assert_eq!(mmio_loop_outcome(slices), whole, "slices {slices:?}");
    }
}

/// wrmsr with a hook that stops the run, then a store and an inc in the
/// same block.
fn stopping_wrmsr(a: &mut CodeAssembler, mark: &mut CodeLabel) -> Result<(), IcedError> {
    a.mov(rbx, 7u64)?;
    a.mov(ecx, 0xc000_0102u32)?; // IA32_KERNEL_GS_BASE: the hook claims it
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.set_label(mark)?;
    a.wrmsr()?;
    a.mov(qword_ptr(DATA + 0x200), rbx)?;
    a.inc(rbx)?;
    a.hlt()
}

/// The WRMSR hook: counts in its user data, stops the run, claims the
/// write.
unsafe extern "C" fn wrmsr_stops(uc: *mut uc_engine, user_data: *mut c_void) -> i32 {
    // SAFETY: `user_data` is the `RefCell<u32>` the test keeps alive for
    // as long as the instance runs; hooks run on the test's thread.
    let count = unsafe { &*(user_data as *const RefCell<u32>) };
    *count.borrow_mut() += 1;
    // SAFETY: `uc` is the live instance calling this hook.
    let _ = unsafe { uc_emu_stop(uc) };
    1
}

/// An MSR hook's stop lands right after its instruction: the block ends
/// there under the budget, so the store after it in the code has not
/// run (without the end it would have waited for some later check).
#[test]
fn an_msr_hooks_stop_lands_right_after_its_instruction() {
    let mut p = Probe::new(stopping_wrmsr, Device::default());
    let count = Box::new(RefCell::new(0u32));
    let mut handle: uc_hook = 0;
    // SAFETY: the callback has the signature of the MSR hooks of our
    // patch (uc_cb_insn_cpuid_t) and reads its user data as the
    // `RefCell<u32>`, which outlives the runs below; begin > end is
    // every address.
    let error = unsafe {
        uc_hook_add(
            p.uc.get_handle(),
            &raw mut handle,
            HookType::INSN.0 as i32,
            wrmsr_stops as *mut c_void,
            std::ptr::from_ref(count.as_ref()) as *mut c_void,
            1u64,
            0u64,
            X86Insn::WRMSR as i32,
        )
    };
    assert_eq!(error, uc_error::OK);
    let (result, ran) = p.run(1000);
    result.expect("stops without error");
    assert_eq!(*count.borrow(), 1);
    assert_eq!(p.reg(RegisterX86::RIP), p.marked + 2, "after the wrmsr");
    assert_eq!(ran, 5, "up to the wrmsr");
    assert_eq!(p.q(DATA + 0x200), 0, "the store after it did not run");

    let ran = p.run_to_hlt(&[1000]);
    assert_eq!(ran, 3, "the store, inc and hlt");
    assert_eq!(*count.borrow(), 1, "the wrmsr is not run again");
    assert_eq!(p.q(DATA + 0x200), 7);
    assert_eq!(p.reg(RegisterX86::RBX), 8);
}
