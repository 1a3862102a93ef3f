// Delivery through the guest's IDT with our unicorn patch
// (cpu-model/unicorn/delivery.patch, EXCEPTIONS.md): first on a raw
// instance on the long-mode ground of exceptions.rs (with an IDT, a TSS
// and handlers in the guest), then through the engine (raised external
// interrupts, dirty tracking of the frame, checkpoints mid-handler).

use iced_x86::code_asm::*;
use std::cell::Cell;
use std::rc::Rc;
use unicorn_engine::unicorn_const::uc_error;
use unicorn_engine::{RegisterX86, Unicorn};

use crate::longmode::{
    self, enter_user, mmr, msr, put, ABSENT, DATA, GDT, KERNEL_CODE, PT, USER_CODE,
};

const IDT: u64 = 0x7000;
const TSS: u64 = 0x8000;
const IST1_TOP: u64 = 0x8_8000;
/// Not present, beside ABSENT.
pub(crate) const ABSENT2: u64 = 0x30_4000;
/// A user page, not present.
const USER_ABSENT: u64 = 0x20_8000;
/// The 64-bit TSS descriptor (two GDT entries, selector 0x38).
const TSS_DESCRIPTOR: u64 =
    0x0000_8900_0000_0067 | ((TSS & 0xffff) << 16) | (((TSS >> 16) & 0xff) << 32);

/// Our patch's pseudo-registers (its include/unicorn/x86.h).
const DELIVER: i32 = 1000;
const IRQ: i32 = 1001;
const TRIPLE: i32 = 1003;

pub(crate) struct Labels {
    pf: CodeLabel,
    de: CodeLabel,
    ud: CodeLabel,
    gp: CodeLabel,
    irq: CodeLabel,
    entry: CodeLabel,
    mark: CodeLabel,
}

impl Labels {
    fn new(a: &mut CodeAssembler) -> Labels {
        Labels {
            pf: a.create_label(),
            de: a.create_label(),
            ud: a.create_label(),
            gp: a.create_label(),
            irq: a.create_label(),
            entry: a.create_label(),
            mark: a.create_label(),
        }
    }
}

pub(crate) type Main = fn(&mut CodeAssembler, &mut Labels) -> Result<(), IcedError>;

/// Handlers: #PF maps the page at CR2 and records what it was given; #DE
/// skips the 3-byte div and #UD the 2-byte ud2; #GP records and halts; the
/// external interrupt counts; the syscall entry records and sysrets. All
/// record at DATA.
fn handlers(a: &mut CodeAssembler, l: &mut Labels) -> Result<(), IcedError> {
    a.set_label(&mut l.pf)?;
    a.mov(qword_ptr(DATA + 0x50), rsp)?; // rsp at entry
    a.push(rax)?;
    a.push(rbx)?;
    a.mov(rax, cr2)?;
    a.mov(rbx, rax)?;
    a.shr(rbx, 12)?;
    a.shl(rbx, 3)?;
    a.add(rbx, PT as i32)?;
    a.and(rax, -4096)?;
    a.or(rax, 0x67)?;
    a.mov(qword_ptr(rbx), rax)?;
    a.mov(rax, cr2)?;
    a.invlpg(byte_ptr(rax))?;
    a.mov(rbx, qword_ptr(DATA))?; // count
    a.and(rbx, 7)?;
    a.mov(rax, qword_ptr(rsp + 16))?; // error code
    a.mov(qword_ptr(rbx * 8 + (DATA + 0x10) as i32), rax)?;
    a.mov(rax, qword_ptr(rsp + 24))?; // saved rip
    a.mov(qword_ptr(DATA + 0x58), rax)?;
    a.mov(rax, qword_ptr(rsp + 32))?; // saved cs
    a.mov(qword_ptr(DATA + 0x60), rax)?;
    a.mov(ax, cs)?;
    a.mov(word_ptr(DATA + 0x68), ax)?;
    a.inc(qword_ptr(DATA))?;
    a.pop(rbx)?;
    a.pop(rax)?;
    a.add(rsp, 8)?;
    a.iretq()?;

    a.set_label(&mut l.de)?;
    count_and_record_rip(a, DATA + 0x80)?;
    a.add(qword_ptr(rsp), 3)?;
    a.iretq()?;

    a.set_label(&mut l.ud)?;
    count_and_record_rip(a, DATA + 0xd0)?;
    a.add(qword_ptr(rsp), 2)?;
    a.iretq()?;

    a.set_label(&mut l.gp)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(DATA + 0x90), rax)?; // saved rip
    a.hlt()?;

    a.set_label(&mut l.irq)?;
    count_and_record_rip(a, DATA + 0xa0)?;
    a.iretq()?;

    a.set_label(&mut l.entry)?;
    a.mov(qword_ptr(DATA + 0xb0), rcx)?;
    a.mov(qword_ptr(DATA + 0xb8), r11)?;
    a.mov(dx, cs)?;
    a.mov(word_ptr(DATA + 0xc0), dx)?;
    a.mov(eax, 7)?;
    a.sysretq()
}

/// In a handler entered without an error code: counts at `at` and keeps
/// the saved rip at `at + 8`.
fn count_and_record_rip(a: &mut CodeAssembler, at: u64) -> Result<(), IcedError> {
    a.inc(qword_ptr(at))?;
    a.push(rax)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(at + 8), rax)?;
    a.pop(rax)
}

/// The two quadwords of a 64-bit interrupt gate.
pub(crate) fn gate_words(handler: u64, selector: u64, ist: u64, dpl: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (selector << 16)
        | (ist << 32)
        | ((0x8e | (dpl << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    (low, handler >> 32)
}

fn gate(memory: &mut [u8], vector: u64, handler: u64, ist: u64) {
    let (low, high) = gate_words(handler, 0x08, ist, 0);
    put(memory, IDT + 16 * vector, low);
    put(memory, IDT + 16 * vector + 8, high);
}

pub(crate) struct Guest {
    pub(crate) uc: Unicorn<'static, ()>,
    mark: u64,
    entry: u64,
    intr_hooks: Rc<Cell<u32>>,
}

impl Guest {
    /// A guest whose kernel runs `main` and whose user code is `user`.
    pub(crate) fn new(main: Main, user: Main) -> Guest {
        Guest::with_gates(main, user, true)
    }

    /// The same, with every handler's gate filled, or none (`gates`).
    fn with_gates(main: Main, user: Main, gates: bool) -> Guest {
        let mut memory = longmode::memory(&[ABSENT2, USER_ABSENT]);
        put(&mut memory, GDT + 56, TSS_DESCRIPTOR);
        put(&mut memory, TSS + 4, longmode::KERNEL_STACK_TOP);
        put(&mut memory, TSS + 0x24, IST1_TOP);
        put(&mut memory, ABSENT, 0x77);
        put(&mut memory, USER_ABSENT, 0x99);

        let mut a = CodeAssembler::new(64).expect("64");
        let mut l = Labels::new(&mut a);
        main(&mut a, &mut l).expect("asm");
        handlers(&mut a, &mut l).expect("asm");
        let r = longmode::assemble_into(&mut memory, KERNEL_CODE, a);
        let ip = |x: &CodeLabel| r.label_ip(x).expect("label");
        if gates {
            gate(&mut memory, 14, ip(&l.pf), 1);
            gate(&mut memory, 0, ip(&l.de), 0);
            gate(&mut memory, 6, ip(&l.ud), 0);
            gate(&mut memory, 13, ip(&l.gp), 0);
            gate(&mut memory, 0x20, ip(&l.irq), 0);
        }
        let mark = r.label_ip(&l.mark).unwrap_or(0);
        let entry = ip(&l.entry);

        let mut ua = CodeAssembler::new(64).expect("64");
        let mut ul = Labels::new(&mut ua);
        user(&mut ua, &mut ul).expect("asm");
        longmode::assemble_into(&mut memory, USER_CODE, ua);

        let mut uc = longmode::instance(&memory);
        uc.reg_write_long(RegisterX86::GDTR, &mmr(0, GDT, 8 * 9 - 1, 0))
            .expect("gdtr");
        uc.reg_write_long(RegisterX86::IDTR, &mmr(0, IDT, 16 * 256 - 1, 0))
            .expect("idtr");
        uc.reg_write_long(RegisterX86::TR, &mmr(0x38, TSS, 0x67, 0x8900))
            .expect("tr");
        uc.reg_write(DELIVER, 1).expect("deliver");
        let intr_hooks = Rc::new(Cell::new(0));
        let h = intr_hooks.clone();
        uc.add_intr_hook(move |uc, _| {
            h.set(h.get() + 1);
            let _ = uc.emu_stop();
        })
        .expect("hook");
        Guest {
            uc,
            mark,
            entry,
            intr_hooks,
        }
    }

    fn run(&mut self) -> Result<(), uc_error> {
        let rip = self.uc.reg_read(RegisterX86::RIP).expect("rip");
        self.uc.emu_start(rip, 0, 0, 100_000)
    }

    fn q(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.uc.mem_read(at, &mut b).expect("read");
        u64::from_le_bytes(b)
    }

    fn reg(&self, register: RegisterX86) -> u64 {
        self.uc.reg_read(register).expect("register")
    }
}

pub(crate) fn none(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    a.hlt()
}

#[test]
fn two_page_faults_are_handled_on_ist1_and_restart_with_qemus_error_codes() {
    let mut g = Guest::new(
        |a, l| {
            a.mov(rax, ABSENT)?;
            a.mov(rcx, ABSENT2)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.set_label(&mut l.mark)?;
            a.mov(qword_ptr(rcx + 8), rbx)?;
            a.hlt()
        },
        none,
    );
    g.run().expect("runs");
    assert_eq!(g.intr_hooks.get(), 0, "no exception reached a hook");
    assert_eq!(g.q(DATA), 2, "two #PF delivered");
    assert_eq!(g.reg(RegisterX86::RBX), 0x77, "the load restarted");
    assert_eq!(g.q(ABSENT2 + 8), 0x77, "the store restarted");
    assert_eq!(
        (g.q(DATA + 0x10), g.q(DATA + 0x18)),
        (0, 2),
        "error codes: supervisor read, then write, not present"
    );
    assert_eq!(g.q(DATA + 0x50), IST1_TOP - 48, "IST1 stack, frame of 6");
    assert_eq!(g.q(DATA + 0x58), g.mark, "saved rip = the faulting store");
    assert_eq!(g.reg(RegisterX86::CR2), ABSENT2 + 8);
}

#[test]
fn a_divide_error_reaches_its_handler_with_the_div_as_saved_rip() {
    let mut g = Guest::new(
        |a, l| {
            a.mov(rax, 7u64)?;
            a.xor(ecx, ecx)?;
            a.set_label(&mut l.mark)?;
            a.div(rcx)?;
            a.mov(rdx, 0x55u64)?;
            a.hlt()
        },
        none,
    );
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0x80), 1, "one #DE");
    assert_eq!(g.q(DATA + 0x88), g.mark, "saved rip = the div");
    assert_eq!(g.reg(RegisterX86::RDX), 0x55, "resumed after the div");
}

#[test]
fn an_unclaimed_ud2_is_delivered_as_vector_6() {
    let mut g = Guest::new(
        |a, l| {
            a.set_label(&mut l.mark)?;
            a.ud2()?;
            a.mov(rdx, 0x66u64)?;
            a.hlt()
        },
        none,
    );
    g.run().expect("runs: #UD is delivered, not an error");
    assert_eq!(g.q(DATA + 0xd0), 1, "one #UD");
    assert_eq!(g.q(DATA + 0xd8), g.mark, "saved rip = the ud2");
    assert_eq!(g.reg(RegisterX86::RDX), 0x66);
}

#[test]
fn ring_3_faults_go_to_ring_0_and_back_and_a_ring_3_hlt_is_gp() {
    let mut g = Guest::new(
        |a, _| enter_user(a),
        |a, _| {
            a.mov(rax, USER_ABSENT)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.hlt()
        },
    );
    g.run().expect("runs");
    assert_eq!(g.q(DATA), 1);
    assert_eq!(g.q(DATA + 0x10), 4, "error code: user read, not present");
    assert_eq!(g.q(DATA + 0x60), 0x33, "saved cs: ring 3");
    assert_eq!(g.q(DATA + 0x68) & 0xffff, 0x08, "the handler ran in ring 0");
    assert_eq!(g.q(DATA + 0x50), IST1_TOP - 48);
    assert_eq!(g.reg(RegisterX86::RBX), 0x99, "the user load restarted");
    assert_eq!(g.q(DATA + 0x90), USER_CODE + 10 + 3, "#GP at the user hlt");
    assert_eq!(g.reg(RegisterX86::CS), 0x08);
}

#[test]
fn a_whole_segment_write_sets_the_cpl_so_a_vcpu_restored_in_ring_3_is_in_ring_3() {
    const SEG_CS: i32 = 1011;
    const SEG_SS: i32 = 1012;
    /// QEMU's flags of a flat 64-bit ring-3 code and data segment.
    const USER_CODE_FLAGS: u32 = 0x00a0_fb00;
    const USER_DATA_FLAGS: u32 = 0x00c0_f300;
    let mut g = Guest::new(none, |a, _| {
        a.nop()?;
        a.hlt()
    });
    let user_ss = mmr(longmode::USER_SS, 0, 0xffff_ffff, USER_DATA_FLAGS);
    let user_cs = mmr(longmode::USER_CS, 0, 0xffff_ffff, USER_CODE_FLAGS);
    g.uc.reg_write_long(SEG_CS, &user_cs).expect("cs");
    g.uc.reg_write_long(SEG_SS, &user_ss).expect("ss");
    g.uc.reg_write(RegisterX86::RSP, longmode::USER_STACK_TOP)
        .expect("rsp");
    g.uc.reg_write(RegisterX86::RIP, USER_CODE).expect("rip");
    g.run().expect("runs");
    assert_eq!(
        g.q(DATA + 0x90),
        USER_CODE + 1,
        "the hlt ran in ring 3: #GP to the ring-0 handler"
    );
    assert_eq!(g.reg(RegisterX86::CS), 0x08, "the handler's ring 0");
}

#[test]
fn syscall_enters_the_kernel_at_lstar_and_sysret_returns_to_ring_3() {
    let mut g = Guest::new(
        |a, _| enter_user(a),
        |a, l| {
            a.mov(rbx, 0u64)?;
            a.syscall()?;
            a.set_label(&mut l.mark)?;
            a.mov(rbx, rax)?;
            a.hlt()
        },
    );
    g.uc.reg_write_long(RegisterX86::MSR, &msr(0xc000_0080, 0x501))
        .expect("efer.sce");
    g.uc.reg_write_long(
        RegisterX86::MSR,
        &msr(0xc000_0081, (0x23 << 48) | (0x08 << 32)),
    )
    .expect("star");
    g.uc.reg_write_long(RegisterX86::MSR, &msr(0xc000_0082, g.entry))
        .expect("lstar");
    g.uc.reg_write_long(RegisterX86::MSR, &msr(0xc000_0084, 0x100))
        .expect("fmask");
    let user_mark = USER_CODE + 10 + 2; // mov rbx, imm64; syscall
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0xb0), user_mark, "rcx = the return rip");
    assert_eq!(g.q(DATA + 0xb8), 0x2, "r11 = the user's rflags");
    assert_eq!(g.q(DATA + 0xc0) & 0xffff, 0x08, "the entry ran in ring 0");
    assert_eq!(g.reg(RegisterX86::RBX), 7, "sysret returned the result");
    assert_eq!(
        g.q(DATA + 0x90),
        user_mark + 3,
        "back in ring 3: the user hlt is #GP"
    );
}

#[test]
fn an_external_interrupt_waits_for_if_and_the_sti_shadow_and_is_taken_once() {
    let mut g = Guest::new(
        |a, l| {
            a.nop()?;
            a.hlt()?;
            a.sti()?;
            a.set_label(&mut l.mark)?;
            a.nop()?;
            a.hlt()?;
            a.hlt()
        },
        none,
    );
    g.uc.reg_write(IRQ, 0x20).expect("irq");
    assert_eq!(g.uc.reg_read(IRQ), Ok(0x20), "pending");
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0xa0), 0, "masked while IF=0");
    assert_eq!(g.uc.reg_read(IRQ), Ok(0x20), "still pending");
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0xa0), 1, "taken once IF=1");
    assert_eq!(
        g.q(DATA + 0xa8),
        g.mark + 1,
        "after the instruction in the sti shadow"
    );
    assert_eq!(g.uc.reg_read(IRQ), Ok(u64::MAX), "no longer pending");
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0xa0), 1, "taken once only");
}

#[test]
fn a_withdrawn_interrupt_is_not_taken() {
    let mut g = Guest::new(
        |a, _| {
            a.sti()?;
            a.nop()?;
            a.hlt()
        },
        none,
    );
    g.uc.reg_write(IRQ, 0x20).expect("irq");
    g.uc.reg_write(IRQ, 0x100).expect("withdraw");
    assert_eq!(g.uc.reg_read(IRQ), Ok(u64::MAX));
    g.run().expect("runs");
    assert_eq!(g.q(DATA + 0xa0), 0);
}

#[test]
fn a_fault_with_no_gate_is_a_triple_fault_error_not_a_silent_stop() {
    let mut g = Guest::with_gates(
        |a, _| {
            a.mov(rax, ABSENT)?;
            a.mov(rbx, qword_ptr(rax))?;
            a.hlt()
        },
        none,
        false,
    );
    assert_eq!(g.uc.reg_read(TRIPLE), Ok(u64::MAX));
    assert_eq!(g.run(), Err(uc_error::EXCEPTION));
    assert_ne!(g.uc.reg_read(TRIPLE), Ok(u64::MAX), "the vector is named");
    assert_eq!(g.intr_hooks.get(), 0);
}

// Through the engine: a guest of the machine's layout that loads an IDT
// of its own (which opts its vCPU in to delivery), spins with interrupts
// on, and takes vector 0x20 in a handler that makes no stores to the
// stack, so only the delivery's frame writes it.

mod engine {
    use super::gate_words;
    use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
    use iced_x86::code_asm::*;
    use iced_x86::BlockEncoderOptions;
    use machine::devices::MemStore;
    use machine::guests::GuestImage;
    use machine::layout::{CODE_SELECTOR, DATA_SELECTOR, GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN};
    use machine::{
        Checkpoint, Engine, EngineError, Gpa, Instructions, Kind, Machine, RunExit, RunState,
        Shape, VcpuId, CHECKPOINT_BYTES_MAX,
    };

    const VECTOR: u8 = 0x20;
    const IDT: u64 = GUEST_DATA.0 + 0x1000;
    const IDT_DESCRIPTOR: u64 = GUEST_DATA.0 + 0x2000;
    const COUNT: u64 = GUEST_DATA.0 + 0x3000;
    /// Iterations of the handler's delay loop, so a run can stop in it.
    const HANDLER_SPIN: i32 = 500;

    struct Image {
        image: GuestImage,
        spin: std::ops::Range<u64>,
        handler: std::ops::Range<u64>,
    }

    /// What the guest does between interrupts.
    #[derive(Clone, Copy)]
    enum Idle {
        /// Counts in rbx, making no stores.
        Spin,
        /// Sleeps in `hlt`.
        Halt,
        /// Counts down in ecx for many slices, then executes `ud2`, which
        /// has no gate.
        Fault,
    }

    fn image() -> Image {
        image_idling(Idle::Spin)
    }

    fn image_idling(idle: Idle) -> Image {
        let mut a = CodeAssembler::new(64).expect("64-bit");
        let (mut spin, mut handler, mut end, mut delay) = (
            a.create_label(),
            a.create_label(),
            a.create_label(),
            a.create_label(),
        );
        a.lidt(ptr(IDT_DESCRIPTOR)).expect("asm");
        a.sti().expect("asm");
        a.set_label(&mut spin).expect("asm");
        match idle {
            Idle::Spin => a.inc(rbx).expect("asm"),
            Idle::Halt => a.hlt().expect("asm"),
            Idle::Fault => {
                let mut down = a.create_label();
                a.mov(ecx, 100_000).expect("asm");
                a.set_label(&mut down).expect("asm");
                a.dec(ecx).expect("asm");
                a.jnz(down).expect("asm");
                a.ud2().expect("asm");
            }
        }
        a.jmp(spin).expect("asm");
        a.set_label(&mut handler).expect("asm");
        a.mov(ecx, HANDLER_SPIN).expect("asm");
        a.set_label(&mut delay).expect("asm");
        a.dec(ecx).expect("asm");
        a.jnz(delay).expect("asm");
        a.inc(r12).expect("asm");
        a.mov(qword_ptr(COUNT), r12).expect("asm");
        a.iretq().expect("asm");
        a.set_label(&mut end).expect("asm");
        a.nop().expect("asm");
        let result = a
            .assemble_options(
                GUEST_CODE.0,
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("assembles");
        let ip = |l: &CodeLabel| result.label_ip(l).expect("label");
        Image {
            spin: ip(&spin)..ip(&handler),
            handler: ip(&handler)..ip(&end),
            image: GuestImage {
                code: result.inner.code_buffer.clone(),
                params: [0; 8],
            },
        }
    }

    /// A one-vCPU machine at the boot of `image`.
    fn machine_of(image: &Image) -> Machine<EmuEngine> {
        let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
        let config = EmuConfig {
            seed: 5,
            quantum: Quantum::default(),
        };
        emulated_machine(shape, &image.image, config, Box::new(MemStore::new(1))).expect("boots")
    }

    /// A one-vCPU machine running `image`, its IDT written and loaded, and
    /// spinning with interrupts on.
    fn booted(image: &Image) -> Machine<EmuEngine> {
        let mut machine = machine_of(image);
        let (low, high) = gate_words(image.handler.start, u64::from(CODE_SELECTOR), 0, 0);
        let engine = machine.engine_mut();
        let at = Gpa(IDT + 16 * u64::from(VECTOR));
        engine.write_memory(at, &low.to_le_bytes()).expect("gate");
        engine
            .write_memory(Gpa(at.0 + 8), &high.to_le_bytes())
            .expect("gate");
        let mut descriptor = (16u16 * 256 - 1).to_le_bytes().to_vec();
        descriptor.extend_from_slice(&IDT.to_le_bytes());
        engine
            .write_memory(Gpa(IDT_DESCRIPTOR), &descriptor)
            .expect("idtr");
        machine.run(Instructions(1_000)).expect("runs");
        machine
    }

    fn count(machine: &Machine<EmuEngine>) -> u64 {
        q(machine, COUNT)
    }

    use crate::read_u64 as q;

    #[test]
    fn a_raised_interrupt_is_taken_once_and_its_frame_is_seen_by_dirty_tracking() {
        let image = image();
        let mut machine = booted(&image);
        let vcpu = VcpuId(0);
        assert_eq!(machine.engine().pending_interrupt(vcpu), Ok(None));
        machine.engine_mut().take_dirty_pages().expect("dirty");
        machine
            .engine_mut()
            .raise_interrupt(vcpu, VECTOR)
            .expect("raises");
        assert_eq!(machine.engine().pending_interrupt(vcpu), Ok(Some(VECTOR)));
        machine.run(Instructions(10_000)).expect("runs");
        assert_eq!(machine.engine().pending_interrupt(vcpu), Ok(None));
        assert_eq!(count(&machine), 1, "the handler ran once");

        let stack_top = machine.shape().stack_top(0).0;
        let frame = stack_top - 40;
        let saved_rip = q(&machine, frame);
        assert!(image.spin.contains(&saved_rip), "saved rip {saved_rip:#x}");
        assert_eq!(q(&machine, frame + 8), u64::from(CODE_SELECTOR), "cs");
        assert_eq!(q(&machine, frame + 16) & 0x200, 0x200, "rflags with IF");
        assert_eq!(q(&machine, frame + 24), stack_top, "rsp");
        assert_eq!(q(&machine, frame + 32), u64::from(DATA_SELECTOR), "ss");

        let dirty = machine.engine_mut().take_dirty_pages().expect("dirty");
        let page = |gpa: u64| machine::PageIndex((gpa / machine::PAGE_SIZE) as u32);
        assert!(
            dirty.contains(&page(frame)),
            "the frame's stack page is dirty: {dirty:?}"
        );
        assert!(dirty.contains(&page(COUNT)), "{dirty:?}");

        machine.run(Instructions(10_000)).expect("runs");
        assert_eq!(count(&machine), 1, "taken once only");
        let state = machine.engine().vcpu_state(vcpu).expect("state");
        let system = state
            .system
            .expect("a delivering vCPU carries its system registers");
        assert_eq!(system.idt.base, IDT);
        assert_eq!(system.idt.limit, 16 * 256 - 1);
        assert_eq!(state.selectors[0], CODE_SELECTOR);
        assert_eq!(state.selectors[5], DATA_SELECTOR);
    }

    fn through_bytes(checkpoint: &Checkpoint) -> Checkpoint {
        Checkpoint::decode(&checkpoint.encode(), CHECKPOINT_BYTES_MAX).expect("decodes")
    }

    /// Raises the interrupt and runs `into` instructions.
    fn raised(image: &Image, into: u64) -> Machine<EmuEngine> {
        let mut machine = booted(image);
        machine
            .engine_mut()
            .raise_interrupt(VcpuId(0), VECTOR)
            .expect("raises");
        if into > 0 {
            machine.run(Instructions(into)).expect("runs");
        }
        machine
    }

    #[test]
    fn a_checkpoint_mid_handler_or_with_the_interrupt_pending_resumes_identically() {
        let image = image();
        let mut uninterrupted = raised(&image, 0);
        uninterrupted.run(Instructions(60)).expect("runs");
        let rip = uninterrupted.vcpu_states().expect("states")[0].rip;
        assert!(image.handler.contains(&rip), "mid-handler: rip {rip:#x}");
        uninterrupted.run(Instructions(5_000)).expect("runs");
        let reference = uninterrupted.state_hash().expect("hash");
        assert_eq!(count(&uninterrupted), 1);

        for into in [0, 60] {
            let mut original = raised(&image, into);
            let checkpoint = through_bytes(&original.checkpoint(Kind::Full).expect("checkpoint"));
            let system = checkpoint.vcpu_states[0].system.clone().expect("system");
            let pending = if into == 0 { Some(VECTOR) } else { None };
            assert_eq!(system.pending_interrupt, pending, "into {into}");
            let mut fresh = booted(&image);
            fresh.restore(&checkpoint).expect("restores");
            for machine in [&mut original, &mut fresh] {
                if into < 60 {
                    machine.run(Instructions(60 - into)).expect("runs");
                }
                machine.run(Instructions(5_000)).expect("runs");
            }
            assert_eq!(count(&fresh), 1, "into {into}: the handler ran once");
            assert_eq!(
                original.state_hash().expect("hash"),
                reference,
                "into {into}"
            );
            assert_eq!(fresh.state_hash().expect("hash"), reference, "into {into}");
        }
    }

    #[test]
    fn a_halted_vcpu_wakes_for_a_raised_interrupt_and_sleeps_again_after_it() {
        let image = image_idling(Idle::Halt);
        let mut machine = booted(&image);
        assert_eq!(
            machine.run(Instructions(10_000)).expect("runs"),
            RunExit::Idle,
            "asleep in hlt"
        );
        machine
            .engine_mut()
            .raise_interrupt(VcpuId(0), VECTOR)
            .expect("raises");
        assert_eq!(
            machine.vcpu_states().expect("states")[0].run_state,
            RunState::Running,
            "woken"
        );
        assert_eq!(
            machine.run(Instructions(10_000)).expect("runs"),
            RunExit::Idle,
            "asleep again"
        );
        assert_eq!(count(&machine), 1, "the handler ran once");
    }

    #[test]
    fn an_exception_without_a_gate_in_a_guest_with_an_idt_is_a_triple_fault_error() {
        let mut machine = booted(&image_idling(Idle::Fault));
        let error = machine.run(Instructions(1_000_000)).expect_err("faults");
        let machine::MachineError::Engine(EngineError::GuestFault { kind, .. }) = error else {
            panic!("not a guest fault: {error}");
        };
        // #UD finds an empty entry (type 0, not a gate: #GP), #GP finds
        // one too (#GP on #GP: #DF), and so does #DF: its #GP is the
        // triple fault.
        assert_eq!(kind, machine::FaultKind::TripleFault { vector: 13 });
    }

    #[test]
    fn a_guest_without_an_idt_cannot_be_raised_an_interrupt() {
        let mut machine = machine_of(&image());
        assert_eq!(
            machine.engine_mut().raise_interrupt(VcpuId(0), VECTOR),
            Err(EngineError::NoInterruptDelivery(0))
        );
        let state = machine.engine().vcpu_state(VcpuId(0)).expect("state");
        assert!(state.system.is_none(), "no IDT: no system registers");
    }

    /// A guest with an IDT (so a delivering vCPU, which carries system
    /// registers) that computes in x87 and SSE registers only: two x87
    /// pushes, then a loop that adds into st0, xmm3 and xmm4 under a
    /// rounding mode of its own in MXCSR.
    fn fpu_image() -> GuestImage {
        let mut a = CodeAssembler::new(64).expect("64-bit");
        let mut spin = a.create_label();
        a.lidt(ptr(IDT_DESCRIPTOR)).expect("asm");
        a.mov(rax, cr4).expect("asm");
        a.or(rax, 0x600).expect("asm"); // OSFXSR | OSXMMEXCPT
        a.mov(cr4, rax).expect("asm");
        a.mov(dword_ptr(COUNT + 64), 0x7f80).expect("asm"); // round down
        a.ldmxcsr(dword_ptr(COUNT + 64)).expect("asm");
        a.fld1().expect("asm");
        a.fldpi().expect("asm");
        a.mov(rbx, 3u64).expect("asm");
        a.movq(xmm5, rbx).expect("asm");
        a.set_label(&mut spin).expect("asm");
        a.fadd_2(st0, st1).expect("asm");
        a.inc(rbx).expect("asm");
        a.cvtsi2sd(xmm2, rbx).expect("asm");
        a.addsd(xmm3, xmm2).expect("asm");
        a.paddq(xmm4, xmm5).expect("asm");
        a.jmp(spin).expect("asm");
        let code = a.assemble(GUEST_CODE.0).expect("assembles");
        GuestImage {
            code,
            params: [0; 8],
        }
    }

    fn fpu_machine() -> Machine<EmuEngine> {
        let image = Image {
            image: fpu_image(),
            spin: 0..0,
            handler: 0..0,
        };
        let mut machine = machine_of(&image);
        let mut descriptor = (16u16 * 256 - 1).to_le_bytes().to_vec();
        descriptor.extend_from_slice(&IDT.to_le_bytes());
        machine
            .engine_mut()
            .write_memory(Gpa(IDT_DESCRIPTOR), &descriptor)
            .expect("idtr");
        machine
    }

    #[test]
    fn a_checkpoint_carries_the_x87_and_sse_state_and_resumes_identically() {
        let mut uninterrupted = fpu_machine();
        uninterrupted.run(Instructions(30_000)).expect("runs");
        let reference = uninterrupted.state_hash().expect("hash");
        let fpu = uninterrupted.vcpu_states().expect("states")[0]
            .system
            .clone()
            .expect("delivering")
            .fpu;
        // From the power-on state, two pushes: the top of stack is R6, R6
        // and R7 hold nonzero values (tag 0, valid), the rest are empty.
        assert_eq!((fpu.fsw >> 11) & 7, 6, "top {:#x}", fpu.fsw);
        assert_eq!(fpu.ftw, 0x0fff, "tags {:#x}", fpu.ftw);
        assert_eq!(fpu.fcw, 0x37f);
        assert_eq!(fpu.mxcsr, 0x7f80);
        assert_ne!(fpu.xmm[3], 0, "xmm3 accumulates");
        assert_eq!(fpu.xmm[5], 3);
        assert_eq!(fpu.xmm[4] % 3, 0, "xmm4 adds 3 at a time");

        let mut original = fpu_machine();
        original.run(Instructions(10_000)).expect("runs");
        let checkpoint = through_bytes(&original.checkpoint(Kind::Full).expect("checkpoint"));
        let saved = checkpoint.vcpu_states[0].system.clone().expect("system");
        assert_ne!(saved.fpu, fpu, "mid-run, the state is not yet the end's");
        // A fresh machine that computed for a while already: the restore
        // must replace its x87/SSE state, not keep it.
        let mut fresh = fpu_machine();
        fresh.run(Instructions(3_333)).expect("runs");
        fresh.restore(&checkpoint).expect("restores");
        assert_eq!(
            fresh.vcpu_states().expect("states")[0]
                .system
                .clone()
                .map(|s| s.fpu),
            Some(saved.fpu)
        );
        for (name, machine) in [("original", &mut original), ("fresh", &mut fresh)] {
            machine.run(Instructions(20_000)).expect(name);
            assert_eq!(machine.state_hash().expect("hash"), reference, "{name}");
        }
    }
}
