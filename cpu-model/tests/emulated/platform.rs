// The PC platform on the emulated engine: a guest of the machine's layout
// maps the APIC page (the host writes its page table entry), programs the
// local APIC timer through MMIO and takes its interrupt through its IDT;
// the handler EOIs through MMIO. Time is guest time: the interrupt comes
// at the deadline the guest armed, on every run alike.

use cpu_model::{EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use machine::devices::{DeviceBus, MemStore};
use machine::guests::GuestImage;
use machine::layout::{CODE_SELECTOR, GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN, PDPT};
use machine::pc::ioapic::IOAPIC_BASE;
use machine::pc::lapic::{Startup, APIC_BASE_DEFAULT};
use machine::pc::vectors::Vector;
use machine::pc::Pc;
use machine::{
    Checkpoint, Engine, Gpa, GuestNs, Instructions, Kind, Machine, RunExit, Shape, VcpuId,
    CHECKPOINT_BYTES_MAX,
};

use crate::delivery::gate_words;

const VECTOR: u8 = 0x40;
const IDT: u64 = GUEST_DATA.0 + 0x1000;
const IDT_DESCRIPTOR: u64 = GUEST_DATA.0 + 0x2000;
const COUNT: u64 = GUEST_DATA.0 + 0x3000;
/// The TSC when the handler last ran.
const FIRED_AT: u64 = GUEST_DATA.0 + 0x3008;
/// A page directory for the fourth GiB, where the APIC pages are.
const HIGH_PD: u64 = GUEST_DATA.0 + 0x5000;
/// The longest quantum of `Quantum::default()`.
const QUANTUM_MAX: u64 = 5_000;
/// The timer's count, in guest nanoseconds (divide by 1).
const TIMER_NS: u32 = 50_000;

/// What the guest does between interrupts.
#[derive(Clone, Copy)]
enum Idle {
    Spin,
    Halt,
}

/// LVT timer modes, bits 18:17.
const ONE_SHOT: u32 = 0;
const PERIODIC: u32 = 1 << 17;

struct Image {
    image: GuestImage,
    handler: u64,
}

/// Routes COM1's pin 4 to `VECTOR` + 1 through the I/O APIC, enables the
/// UART's transmitter-empty interrupt, sends "ok" and spins; the handler
/// reads IIR (which clears it), counts and EOIs.
fn com1_image() -> Image {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let (mut spin, mut handler) = (a.create_label(), a.create_label());
    a.lidt(ptr(IDT_DESCRIPTOR)).expect("asm");
    a.mov(r13, APIC_BASE_DEFAULT).expect("asm");
    a.mov(r14, IOAPIC_BASE).expect("asm");
    a.mov(dword_ptr(r13 + 0xf0), 0x1ff).expect("asm");
    for (index, value) in [(0x19, 0), (0x18, u32::from(VECTOR) + 1)] {
        a.mov(dword_ptr(r14), index).expect("asm"); // IOREGSEL
        a.mov(dword_ptr(r14 + 0x10), value).expect("asm"); // IOWIN
    }
    a.sti().expect("asm");
    a.mov(dx, 0x3f9).expect("asm");
    a.mov(al, 0x02).expect("asm");
    a.out(dx, al).expect("asm");
    a.mov(dx, 0x3f8).expect("asm");
    for byte in *b"ok" {
        a.mov(al, u32::from(byte)).expect("asm");
        a.out(dx, al).expect("asm");
    }
    a.set_label(&mut spin).expect("asm");
    a.inc(rbx).expect("asm");
    a.jmp(spin).expect("asm");
    a.set_label(&mut handler).expect("asm");
    a.push(rax).expect("asm");
    a.push(rdx).expect("asm");
    a.mov(dx, 0x3fa).expect("asm");
    a.in_(al, dx).expect("asm");
    a.mov(byte_ptr(FIRED_AT), al).expect("asm");
    a.inc(r12).expect("asm");
    a.mov(qword_ptr(COUNT), r12).expect("asm");
    a.mov(dword_ptr(r13 + 0xb0), 0).expect("asm");
    a.pop(rdx).expect("asm");
    a.pop(rax).expect("asm");
    a.iretq().expect("asm");
    assembled(a, handler)
}

fn assembled(mut a: CodeAssembler, handler: CodeLabel) -> Image {
    let result = a
        .assemble_options(
            GUEST_CODE.0,
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .expect("assembles");
    Image {
        handler: result.label_ip(&handler).expect("label"),
        image: GuestImage {
            code: result.inner.code_buffer.clone(),
            params: [0; 8],
        },
    }
}

/// What the TSC-deadline guest saw: CPUID.1 ECX and EBX, IA32_APIC_BASE.
const CPUID_ECX: u64 = GUEST_DATA.0 + 0x3010;
const CPUID_EBX: u64 = GUEST_DATA.0 + 0x3018;
const APIC_BASE_SEEN: u64 = GUEST_DATA.0 + 0x3020;
/// How far ahead of its TSC the guest sets the deadline.
const DEADLINE_AHEAD: u32 = 30_000;

/// Records CPUID leaf 1 and IA32_APIC_BASE, puts the APIC timer in
/// TSC-deadline mode and writes IA32_TSC_DEADLINE = TSC + 30 us; spins.
fn tsc_deadline_image() -> Image {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let (mut spin, mut handler) = (a.create_label(), a.create_label());
    a.lidt(ptr(IDT_DESCRIPTOR)).expect("asm");
    a.mov(eax, 1).expect("asm");
    a.xor(ecx, ecx).expect("asm");
    a.cpuid().expect("asm");
    a.mov(qword_ptr(CPUID_ECX), rcx).expect("asm");
    a.mov(qword_ptr(CPUID_EBX), rbx).expect("asm");
    a.mov(ecx, 0x1b).expect("asm");
    a.rdmsr().expect("asm");
    a.shl(rdx, 32).expect("asm");
    a.or(rax, rdx).expect("asm");
    a.mov(qword_ptr(APIC_BASE_SEEN), rax).expect("asm");
    a.mov(r13, APIC_BASE_DEFAULT).expect("asm");
    a.mov(dword_ptr(r13 + 0xf0), 0x1ff).expect("asm");
    a.mov(dword_ptr(r13 + 0x320), (2 << 17) | u32::from(VECTOR))
        .expect("asm");
    a.rdtsc().expect("asm");
    a.add(eax, DEADLINE_AHEAD).expect("asm");
    a.adc(edx, 0).expect("asm");
    a.mov(ecx, 0x6e0).expect("asm");
    a.wrmsr().expect("asm");
    a.sti().expect("asm");
    a.set_label(&mut spin).expect("asm");
    a.inc(rbx).expect("asm");
    a.jmp(spin).expect("asm");
    a.set_label(&mut handler).expect("asm");
    a.inc(r12).expect("asm");
    a.mov(qword_ptr(COUNT), r12).expect("asm");
    a.mov(dword_ptr(r13 + 0xb0), 0).expect("asm");
    a.iretq().expect("asm");
    assembled(a, handler)
}

fn image(mode: u32, idle: Idle) -> Image {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let (mut spin, mut handler) = (a.create_label(), a.create_label());
    a.lidt(ptr(IDT_DESCRIPTOR)).expect("asm");
    a.mov(r13, APIC_BASE_DEFAULT).expect("asm");
    a.mov(dword_ptr(r13 + 0xf0), 0x1ff).expect("asm"); // SVR: enabled
    a.mov(dword_ptr(r13 + 0x3e0), 0xb).expect("asm"); // divide by 1
    a.mov(dword_ptr(r13 + 0x320), mode | u32::from(VECTOR))
        .expect("asm");
    a.mov(dword_ptr(r13 + 0x380), TIMER_NS).expect("asm"); // arms
    a.sti().expect("asm");
    a.set_label(&mut spin).expect("asm");
    match idle {
        Idle::Spin => a.inc(rbx).expect("asm"),
        Idle::Halt => a.hlt().expect("asm"),
    }
    a.jmp(spin).expect("asm");
    a.set_label(&mut handler).expect("asm");
    a.push(rax).expect("asm");
    a.push(rdx).expect("asm");
    a.rdtsc().expect("asm");
    a.shl(rdx, 32).expect("asm");
    a.or(rax, rdx).expect("asm");
    a.mov(qword_ptr(FIRED_AT), rax).expect("asm");
    a.inc(r12).expect("asm");
    a.mov(qword_ptr(COUNT), r12).expect("asm");
    a.mov(dword_ptr(r13 + 0xb0), 0).expect("asm"); // EOI
    a.pop(rdx).expect("asm");
    a.pop(rax).expect("asm");
    a.iretq().expect("asm");
    assembled(a, handler)
}

/// A one-vCPU machine with the PC platform at the boot of `image`, its
/// IDT and the page table entry of the APIC page written.
fn machine_of(image: &Image) -> Machine<EmuEngine> {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed: 9,
        quantum: Quantum::default(),
    };
    let engine = EmuEngine::new(shape, &image.image, config).expect("boots");
    let bus = DeviceBus::new(1, Box::new(MemStore::new(1))).with_pc(Pc::new(1, Startup::Running));
    let mut machine = Machine::new(shape, engine, bus);
    let engine = machine.engine_mut();
    let (low, high) = gate_words(image.handler, u64::from(CODE_SELECTOR), 0, 0);
    let at = IDT + 16 * u64::from(VECTOR);
    let mut writes = vec![
        (at, low),
        (at + 8, high),
        (at + 16, low), // VECTOR + 1: the same handler
        (at + 24, high),
        // The fourth GiB through HIGH_PD; the APIC page one 2 MiB page
        // (present, writable, uncached, large).
        (PDPT.0 + 8 * 3, HIGH_PD | 0x3),
        (
            HIGH_PD + 8 * ((APIC_BASE_DEFAULT >> 21) & 0x1ff),
            (APIC_BASE_DEFAULT & !0x1f_ffff) | 0x93,
        ),
        (
            HIGH_PD + 8 * ((IOAPIC_BASE >> 21) & 0x1ff),
            (IOAPIC_BASE & !0x1f_ffff) | 0x93,
        ),
    ];
    writes.push((IDT_DESCRIPTOR, u64::from(16u16 * 256 - 1) | (IDT << 16)));
    writes.push((IDT_DESCRIPTOR + 8, IDT >> 48));
    for (gpa, value) in writes {
        engine
            .write_memory(Gpa(gpa), &value.to_le_bytes())
            .expect("in memory");
    }
    machine
}

use crate::read_u64 as q;

fn pc(machine: &mut Machine<EmuEngine>) -> &Pc {
    machine.bus().pc().expect("a platform")
}

#[test]
fn a_one_shot_apic_timer_interrupts_the_guest_once_at_its_deadline() {
    let mut machine = machine_of(&image(ONE_SHOT, Idle::Spin));
    machine.run(Instructions(2_000)).expect("runs");
    let deadline = pc(&mut machine)
        .next_deadline()
        .expect("the guest armed it");
    assert!(
        (u64::from(TIMER_NS)..u64::from(TIMER_NS) + 2_000).contains(&deadline.0),
        "armed at boot: {deadline:?}"
    );
    machine
        .run(Instructions(deadline.0 - 2_000 - 1))
        .expect("runs");
    assert_eq!(q(&machine, COUNT), 0, "not before its deadline");
    machine.run(Instructions(1_000)).expect("runs");
    assert_eq!(q(&machine, COUNT), 1, "taken at its deadline");
    // rdtsc reads the start of the quantum the slice is part of (the
    // slice itself began at the deadline).
    let fired_at = q(&machine, FIRED_AT);
    assert!(
        (deadline.0 - QUANTUM_MAX..=deadline.0).contains(&fired_at),
        "the handler ran in the quantum of TSC {fired_at}, the deadline {}",
        deadline.0
    );
    let lapic = pc(&mut machine).lapic(VcpuId(0)).clone();
    assert!(lapic.isr().is_empty(), "the handler's EOI reached the APIC");
    assert!(lapic.irr().is_empty());
    assert_eq!(pc(&mut machine).next_deadline(), None, "spent");
    machine.run(Instructions(200_000)).expect("runs");
    assert_eq!(q(&machine, COUNT), 1, "a one-shot fires once");
}

#[test]
fn a_periodic_apic_timer_wakes_a_halted_guest_every_period_and_replays() {
    let run = |checkpoint_at: Option<u64>| {
        let mut machine = machine_of(&image(PERIODIC, Idle::Halt));
        let mut ran = 0;
        if let Some(at) = checkpoint_at {
            machine.run(Instructions(at)).expect("runs");
            ran = at;
            let full = machine.checkpoint(Kind::Full).expect("checkpoint");
            let full = Checkpoint::decode(&full.encode(), CHECKPOINT_BYTES_MAX).expect("decodes");
            assert!(!full.platform.is_empty(), "the timer travels");
            machine = machine_of(&image(PERIODIC, Idle::Halt));
            machine.restore(&full).expect("restores");
        }
        let exit = machine.run(Instructions(520_000 - ran)).expect("runs");
        (machine, exit)
    };
    let (mut straight, exit) = run(None);
    assert_eq!(exit, RunExit::Idle, "asleep between periods");
    assert_eq!(q(&straight, COUNT), 10, "one interrupt per 50 us period");
    let fired_at = q(&straight, FIRED_AT);
    assert!(
        (500_000 - QUANTUM_MAX..=500_000).contains(&fired_at),
        "the tenth at {fired_at}"
    );
    assert_eq!(
        pc(&mut straight).next_deadline(),
        Some(GuestNs(550_000)),
        "on its grid"
    );
    assert!(pc(&mut straight).lapic(VcpuId(0)).isr().is_empty());
    let reference = straight.state_hash().expect("hash");
    // Mid-period (between the fourth and the fifth), restored in a fresh
    // machine: the same run.
    let (mut restored, _) = run(Some(225_000));
    assert_eq!(q(&restored, COUNT), 10);
    assert_eq!(restored.state_hash().expect("hash"), reference);
}

#[test]
fn a_halted_guest_with_a_one_shot_timer_sleeps_again_after_its_interrupt() {
    let mut machine = machine_of(&image(ONE_SHOT, Idle::Halt));
    let exit = machine.run(Instructions(1_000_000)).expect("runs");
    assert_eq!(exit, RunExit::Idle, "asleep, nothing armed");
    assert_eq!(q(&machine, COUNT), 1);
    assert!(pc(&mut machine)
        .lapic(VcpuId(0))
        .irr()
        .highest()
        .is_none_or(|v| v != Vector(VECTOR)));
}

#[test]
fn com1_output_reaches_the_console_and_its_interrupt_comes_through_the_ioapic() {
    let mut machine = machine_of(&com1_image());
    machine.run(Instructions(20_000)).expect("runs");
    assert_eq!(machine.bus().console.take(), b"ok");
    assert_eq!(q(&machine, COUNT), 1, "one transmitter-empty interrupt");
    assert_eq!(
        q(&machine, FIRED_AT) & 0xff,
        0xc2,
        "the handler read IIR: FIFOs on, transmitter empty"
    );
    let entry = pc(&mut machine).ioapic().entry(4).expect("pin 4");
    assert_eq!(
        entry,
        u64::from(VECTOR) + 1,
        "programmed by the guest, edge"
    );
    let lapic = pc(&mut machine).lapic(VcpuId(0)).clone();
    assert!(lapic.isr().is_empty(), "EOI'd");
    assert!(lapic.irr().is_empty());
}

#[test]
fn a_guest_sees_tsc_deadline_in_cpuid_and_its_msr_write_fires_the_timer() {
    let mut machine = machine_of(&tsc_deadline_image());
    machine.run(Instructions(2_000)).expect("runs");
    assert_ne!(
        q(&machine, CPUID_ECX) & (1 << 24),
        0,
        "TSC-deadline offered"
    );
    assert_eq!(q(&machine, CPUID_ECX) & (1 << 21), 0, "x2APIC not offered");
    assert_eq!(q(&machine, CPUID_EBX) >> 24 & 0xff, 0, "initial APIC ID 0");
    assert_eq!(q(&machine, APIC_BASE_SEEN), 0xfee0_0900, "enabled, BSP");
    let deadline = pc(&mut machine).next_deadline().expect("the MSR armed it");
    assert_eq!(
        pc(&mut machine).lapic(VcpuId(0)).tsc_deadline(),
        deadline.0,
        "the TSC counts guest nanoseconds"
    );
    assert!(deadline.0 >= u64::from(DEADLINE_AHEAD));
    machine
        .run(Instructions(deadline.0 - 2_000 - 1))
        .expect("runs");
    assert_eq!(q(&machine, COUNT), 0, "not before the deadline");
    machine.run(Instructions(1_000)).expect("runs");
    assert_eq!(q(&machine, COUNT), 1, "taken at the deadline");
    assert_eq!(pc(&mut machine).lapic(VcpuId(0)).tsc_deadline(), 0, "spent");
    assert_eq!(pc(&mut machine).next_deadline(), None);
}
