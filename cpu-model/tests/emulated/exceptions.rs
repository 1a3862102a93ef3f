// What unicorn 2.1 reports when a long-mode guest faults, established on a
// raw instance (4-level page tables of 4 KiB pages, a GDT with ring-3
// segments), because the engine can deliver exceptions through the guest's
// IDT only as faithfully as unicorn reports them. The conclusions are in
// cpu-model/EXCEPTIONS.md; each test asserts one fact it names.

use std::cell::RefCell;
use std::rc::Rc;

use iced_x86::code_asm::*;
use unicorn_engine::unicorn_const::uc_error;
use unicorn_engine::{RegisterX86, Unicorn};

use crate::longmode::{
    self, enter_user, msr, ABSENT, DATA, KERNEL_CODE, KERNEL_CS, KERNEL_SS, READ_ONLY, USER_CODE,
    USER_CS, USER_STACK_TOP,
};

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;

/// What the interrupt hook saw: the vector, and rip and CR2 read inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trap {
    vector: u32,
    rip: u64,
    cr2: u64,
}

type Code = fn(&mut CodeAssembler, &mut CodeLabel) -> Result<(), IcedError>;

struct Guest {
    uc: Unicorn<'static, ()>,
    traps: Rc<RefCell<Vec<Trap>>>,
    /// rip of each invalid-instruction hook call.
    invalid: Rc<RefCell<Vec<u64>>>,
    /// The instruction each code marked with its label.
    kernel_mark: Option<u64>,
    user_mark: Option<u64>,
}

/// Assembles `emit` at `ip` into `memory`; returns the marked instruction.
fn assemble(memory: &mut [u8], ip: u64, emit: Code) -> Option<u64> {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let mut mark = a.create_label();
    emit(&mut a, &mut mark).expect("assembles");
    longmode::assemble_into(memory, ip, a).label_ip(&mark).ok()
}

impl Guest {
    /// Kernel code at KERNEL_CODE in ring 0 (where the run starts), user
    /// code at USER_CODE (reached by `enter_user`).
    fn new(kernel: Code, user: Code) -> Guest {
        let mut memory = longmode::memory(&[]);
        let kernel_mark = assemble(&mut memory, KERNEL_CODE, kernel);
        let user_mark = assemble(&mut memory, USER_CODE, user);
        let mut uc = longmode::instance(&memory);

        let traps = Rc::new(RefCell::new(Vec::new()));
        let t = traps.clone();
        uc.add_intr_hook(move |uc, vector| {
            let rip = uc.reg_read(RegisterX86::RIP).expect("rip");
            let address = uc.reg_read(RegisterX86::CR2).expect("cr2");
            t.borrow_mut().push(trap(vector, rip, address));
            uc.emu_stop().expect("stops");
        })
        .expect("hook");
        let invalid = Rc::new(RefCell::new(Vec::new()));
        let i = invalid.clone();
        uc.add_insn_invalid_hook(move |uc| {
            i.borrow_mut()
                .push(uc.reg_read(RegisterX86::RIP).expect("rip"));
            false
        })
        .expect("hook");
        Guest {
            uc,
            traps,
            invalid,
            kernel_mark,
            user_mark,
        }
    }

    fn run(&mut self) -> Result<(), uc_error> {
        let rip = self.uc.reg_read(RegisterX86::RIP).expect("rip");
        self.uc.emu_start(rip, 0, 0, 10_000)
    }

    fn reg(&self, register: RegisterX86) -> u64 {
        self.uc.reg_read(register).expect("readable")
    }

    fn set(&mut self, register: RegisterX86, value: u64) {
        self.uc.reg_write(register, value).expect("writable");
    }

    fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.uc.mem_read_as_vec(gpa, len).expect("in memory")
    }

    fn traps(&self) -> Vec<Trap> {
        self.traps.borrow().clone()
    }

    fn kernel_mark(&self) -> u64 {
        self.kernel_mark
            .expect("the kernel code marks an instruction")
    }

    fn user_mark(&self) -> u64 {
        self.user_mark.expect("the user code marks an instruction")
    }
}

fn no_user(a: &mut CodeAssembler, _: &mut CodeLabel) -> Result<(), IcedError> {
    a.hlt()
}

/// A guest running `kernel` in ring 0, after its first run (which a trap
/// or a `hlt` ends).
fn after_kernel(kernel: Code) -> Guest {
    let mut guest = Guest::new(kernel, no_user);
    guest.run().expect("a hook or hlt ends the run");
    guest
}

/// A guest running `user` in ring 3, after its first run.
fn after_user(user: Code) -> Guest {
    let mut guest = Guest::new(|a, _| enter_user(a), user);
    guest.run().expect("a hook or hlt ends the run");
    guest
}

fn trap(vector: u32, rip: u64, address: u64) -> Trap {
    Trap {
        vector,
        rip,
        cr2: address,
    }
}

#[test]
fn a_read_of_an_absent_page_is_vector_14_at_the_faulting_rip_with_cr2() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, ABSENT + 0x10)?;
        a.mov(rbx, 0x1111u64)?;
        a.set_label(mark)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.hlt()
    });
    let at = guest.kernel_mark();
    assert_eq!(guest.traps(), [trap(14, at, ABSENT + 0x10)]);
    assert_eq!(guest.reg(RegisterX86::RIP), at, "rip stays at the load");
    assert_eq!(guest.reg(RegisterX86::RBX), 0x1111, "no partial load");
}

#[test]
fn a_write_to_an_absent_page_is_vector_14_at_the_faulting_rip_with_cr2() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, ABSENT + 0x20)?;
        a.set_label(mark)?;
        a.mov(qword_ptr(rax), rbx)?;
        a.hlt()
    });
    assert_eq!(
        guest.traps(),
        [trap(14, guest.kernel_mark(), ABSENT + 0x20)]
    );
}

#[test]
fn a_supervisor_write_to_a_read_only_page_faults_with_cr0_wp() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, READ_ONLY + 0x30)?;
        a.mov(rbx, 0x2222u64)?;
        a.set_label(mark)?;
        a.mov(qword_ptr(rax), rbx)?;
        a.hlt()
    });
    assert_eq!(
        guest.traps(),
        [trap(14, guest.kernel_mark(), READ_ONLY + 0x30)]
    );
    assert_eq!(guest.read(READ_ONLY + 0x30, 8), [0; 8], "nothing stored");
}

#[test]
fn a_user_read_of_a_supervisor_page_faults_in_ring_3() {
    let guest = after_user(|a, mark| {
        a.mov(rax, DATA)?;
        a.set_label(mark)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(14, guest.user_mark(), DATA)]);
    assert_eq!(guest.reg(RegisterX86::CS), u64::from(USER_CS));
    assert_eq!(guest.reg(RegisterX86::RSP), USER_STACK_TOP);
}

#[test]
fn a_push_to_an_absent_page_leaves_rsp_unchanged() {
    let guest = after_kernel(|a, mark| {
        a.mov(rsp, ABSENT + 0x800)?;
        a.set_label(mark)?;
        a.push(rax)?;
        a.hlt()
    });
    assert_eq!(
        guest.traps(),
        [trap(14, guest.kernel_mark(), ABSENT + 0x7f8)]
    );
    assert_eq!(guest.reg(RegisterX86::RSP), ABSENT + 0x800);
}

#[test]
fn a_push_straddling_into_an_absent_page_writes_neither_page() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, u64::MAX)?;
        a.mov(rsp, ABSENT + 4)?;
        a.set_label(mark)?;
        a.push(rax)?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(14, guest.kernel_mark(), ABSENT)]);
    assert_eq!(guest.reg(RegisterX86::RSP), ABSENT + 4);
    assert_eq!(guest.read(ABSENT - 4, 4), [0; 4], "the present half");
}

#[test]
fn rep_movsb_into_an_absent_page_stops_with_precise_rcx_rsi_rdi() {
    let guest = after_kernel(|a, mark| {
        a.mov(rdi, DATA + 0x100)?;
        a.mov(rcx, 64u64)?;
        a.mov(al, 0x5a)?;
        a.rep().stosb()?;
        a.mov(rsi, DATA + 0x100)?;
        a.mov(rdi, ABSENT - 16)?;
        a.mov(rcx, 64u64)?;
        a.set_label(mark)?;
        a.rep().movsb()?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(14, guest.kernel_mark(), ABSENT)]);
    assert_eq!(guest.reg(RegisterX86::RCX), 48, "16 bytes were moved");
    assert_eq!(guest.reg(RegisterX86::RSI), DATA + 0x110);
    assert_eq!(guest.reg(RegisterX86::RDI), ABSENT);
    assert_eq!(guest.read(ABSENT - 16, 16), [0x5a; 16]);
}

#[test]
fn a_divide_error_is_vector_0_at_the_div_with_rax_rdx_unchanged() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, 7u64)?;
        a.mov(rdx, 9u64)?;
        a.xor(ecx, ecx)?;
        a.set_label(mark)?;
        a.div(rcx)?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(0, guest.kernel_mark(), 0)]);
    assert_eq!(guest.reg(RegisterX86::RAX), 7);
    assert_eq!(guest.reg(RegisterX86::RDX), 9);
}

#[test]
fn int3_and_int_n_arrive_with_rip_after_the_instruction() {
    let mut guest = Guest::new(
        |a, mark| {
            a.set_label(mark)?;
            a.int3()?;
            a.int(0x80)?;
            a.hlt()
        },
        no_user,
    );
    let at = guest.kernel_mark();
    guest.run().expect("the hook stops the run");
    assert_eq!(guest.reg(RegisterX86::RIP), at + 1);
    guest.run().expect("the hook stops the run");
    assert_eq!(guest.traps(), [trap(3, at + 1, 0), trap(0x80, at + 3, 0)]);
}

#[test]
fn ud2_reaches_the_invalid_instruction_hook_not_the_interrupt_hook() {
    let mut guest = Guest::new(
        |a, mark| {
            a.nop()?;
            a.set_label(mark)?;
            a.ud2()?;
            a.hlt()
        },
        no_user,
    );
    assert_eq!(guest.run(), Err(uc_error::INSN_INVALID));
    assert_eq!(guest.traps(), []);
    assert_eq!(*guest.invalid.borrow(), [guest.kernel_mark()]);
}

#[test]
fn a_non_canonical_load_is_vector_13_at_the_load_and_leaves_cr2() {
    let guest = after_kernel(|a, mark| {
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        a.set_label(mark)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(13, guest.kernel_mark(), 0)]);
}

#[test]
fn hlt_in_ring_3_is_vector_13_at_the_hlt() {
    let guest = after_user(|a, mark| {
        a.nop()?;
        a.set_label(mark)?;
        a.hlt()
    });
    assert_eq!(guest.traps(), [trap(13, guest.user_mark(), 0)]);
}

/// unicorn never runs QEMU's delivery (`do_interrupt_all`), the only place
/// that clears `old_exception`, so the nested-exception check of
/// `raise_interrupt2` sees every earlier exception as still in flight.
#[test]
fn the_second_page_fault_of_an_instance_arrives_as_a_double_fault() {
    let mut guest = after_kernel(|a, mark| {
        a.mov(rax, ABSENT)?;
        a.mov(rbx, qword_ptr(rax))?;
        a.set_label(mark)?;
        a.mov(rbx, qword_ptr(rax + 8))?;
        a.hlt()
    });
    let second = guest.kernel_mark();
    // A handler would map the page; skipping the load is enough here: the
    // two faults are separate, the first one long finished.
    guest.set(RegisterX86::RIP, second);
    guest.run().expect("the hook stops the run");
    let first = guest.traps()[0];
    assert_eq!(first, trap(14, first.rip, ABSENT));
    assert_eq!(guest.traps()[1], trap(8, second, ABSENT + 8));
}

#[test]
fn the_third_exception_of_an_instance_stops_it_without_a_report() {
    let mut guest = Guest::new(
        |a, mark| {
            a.mov(rax, ABSENT)?;
            a.mov(rdx, ABSENT + 8)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.mov(rbx, qword_ptr(rdx))?;
            a.set_label(mark)?;
            a.xor(ecx, ecx)?;
            a.div(rcx)?;
            a.hlt()
        },
        no_user,
    );
    for _ in 0..2 {
        guest.run().expect("the hook stops the run");
        let rip = guest.reg(RegisterX86::RIP);
        guest.set(RegisterX86::RIP, rip + 3); // past the 3-byte load
    }
    let vectors: Vec<u32> = guest.traps().iter().map(|t| t.vector).collect();
    assert_eq!(vectors, [14, 8]);
    assert_eq!(guest.reg(RegisterX86::RIP), guest.kernel_mark());
    let result = guest.run();
    let vectors: Vec<u32> = guest.traps().iter().map(|t| t.vector).collect();
    assert_eq!(vectors, [14, 8], "the #DE is never reported");
    assert_eq!(
        *guest.invalid.borrow(),
        Vec::<u64>::new(),
        "nor reported as invalid"
    );
    assert_eq!(result, Ok(()), "and the run ends as if nothing happened");
    let div = guest.kernel_mark() + 2;
    assert_eq!(guest.reg(RegisterX86::RIP), div, "stopped at the div");
}

/// In 64-bit mode `uc_reg_write` of CS or SS stores the selector only: the
/// descriptor cache and the CPL stay, so an engine cannot move a vCPU from
/// ring 3 to its handler in ring 0.
#[test]
fn writing_cs_and_ss_does_not_change_the_cpl() {
    let mut kernel = Guest::new(
        |a, _| {
            a.nop()?;
            a.hlt()
        },
        no_user,
    );
    kernel.run().expect("runs");
    assert_eq!(kernel.traps(), [], "hlt in ring 0 does not fault");

    let mut guest = after_user(|a, mark| {
        a.int3()?;
        a.set_label(mark)?;
        a.hlt()
    });
    guest.set(RegisterX86::CS, u64::from(KERNEL_CS));
    guest.set(RegisterX86::SS, u64::from(KERNEL_SS));
    assert_eq!(guest.reg(RegisterX86::CS), u64::from(KERNEL_CS));
    guest.run().expect("the hook stops the run");
    let hlt = guest.user_mark();
    assert_eq!(guest.traps()[1], trap(13, hlt, 0), "still ring 3");
}

/// unicorn replaces `syscall` by its instruction hooks: without one it
/// steps over it, with no switch to ring 0 and no jump to LSTAR.
#[test]
fn syscall_steps_over_without_entering_the_kernel() {
    let mut guest = Guest::new(
        |a, _| enter_user(a),
        |a, mark| {
            a.mov(rcx, 0x1234u64)?;
            a.syscall()?;
            a.set_label(mark)?;
            a.int3()?;
            a.hlt()
        },
    );
    guest
        .uc
        .reg_write_long(RegisterX86::MSR, &msr(MSR_EFER, 0xd01))
        .expect("efer");
    guest
        .uc
        .reg_write_long(RegisterX86::MSR, &msr(MSR_STAR, 0x0023_0008 << 32))
        .expect("star");
    guest
        .uc
        .reg_write_long(RegisterX86::MSR, &msr(MSR_LSTAR, KERNEL_CODE + 0x800))
        .expect("lstar");
    guest.run().expect("the hook stops the run");
    assert_eq!(guest.traps(), [trap(3, guest.user_mark() + 1, 0)]);
    assert_eq!(
        guest.reg(RegisterX86::RCX),
        0x1234,
        "rcx is not the return rip"
    );
    assert_eq!(guest.reg(RegisterX86::CS), u64::from(USER_CS));
}
