// Application processors that wait for their start-up IPI, on the
// emulated engine: the bootstrap processor (64-bit, the machine's boot
// state) sends INIT and start-up IPIs through its local APIC's ICR, in
// Linux's order (INIT assert, INIT de-assert, two SIPIs); the application
// processor starts in real mode at the SIPI's page and runs a trampoline
// in the style of Linux's arch/x86/realmode/rm/trampoline_64.S (lgdt,
// CR0.PE, a far jump to 32-bit code, CR4.PAE, CR3, EFER.LME by wrmsr,
// CR0.PG, a far jump to 64-bit code) on the unicorn instance created in
// 64-bit mode. The bootstrap processor then INITs the running AP (it
// stops) and starts it again.

use cpu_model::{EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use machine::boot::initial_vcpu_state;
use machine::devices::{DeviceBus, MemStore};
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN, PDPT, PML4};
use machine::pc::lapic::{Startup, APIC_BASE_DEFAULT};
use machine::pc::{startup, Pc};
use machine::{
    Checkpoint, Engine, EngineError, Instructions, Kind, Machine, MachineError, Shape, VcpuId,
    CHECKPOINT_BYTES_MAX,
};

use crate::read_u64 as q;

/// The start-up page: SIPI vector 0x08.
const VECTOR: u8 = 0x08;
const TRAMPOLINE: u64 = (VECTOR as u64) << 12;
const PROT32: u64 = TRAMPOLINE + 0x100;
const LONG64: u64 = TRAMPOLINE + 0x200;
const TRAMPOLINE_GDT: u64 = TRAMPOLINE + 0x300;
/// The GDT's pseudo-descriptor, read by a real-mode lgdt at DS:0x340.
const GDT_DESCRIPTOR_OFFSET: u64 = 0x340;
/// Where real-mode code stores CS, at DS:0x380 (DS = CS).
const REAL_CS_OFFSET: u64 = 0x380;
/// null, 32-bit code (0x08), flat data (0x10), 64-bit code (0x18).
const TRAMPOLINE_GDT_ENTRIES: [u64; 4] = [
    0,
    0x00CF_9A00_0000_FFFF,
    0x00CF_9200_0000_FFFF,
    0x00AF_9A00_0000_FFFF,
];

/// What the AP records: its arrivals in 64-bit mode, its spin count, its
/// CPUID initial APIC ID, CR0 in long mode.
const STARTS: u64 = GUEST_DATA.0 + 0x100;
const AP_SPIN: u64 = GUEST_DATA.0 + 0x108;
const AP_APIC_ID: u64 = GUEST_DATA.0 + 0x110;
const AP_CR0: u64 = GUEST_DATA.0 + 0x118;
/// What the BSP records: the AP's spin count right after its INIT and a
/// while later, and that it is done.
const SPIN_AT_INIT: u64 = GUEST_DATA.0 + 0x120;
const SPIN_LATER: u64 = GUEST_DATA.0 + 0x128;
const BSP_DONE: u64 = GUEST_DATA.0 + 0x130;
/// A page directory for the fourth GiB, where the APIC page is.
const HIGH_PD: u64 = GUEST_DATA.0 + 0x5000;

/// ICR low words (Linux's smpboot.c): INIT level-assert and de-assert,
/// a start-up IPI with the trampoline's vector, an NMI.
const ICR_INIT_ASSERT: u32 = 0xc500;
const ICR_INIT_DEASSERT: u32 = 0x8500;
const ICR_STARTUP: u32 = 0x4600 | VECTOR as u32;
const ICR_NMI: u32 = 0x4400;
/// BSP loop iterations before its first IPI: the AP waits meanwhile.
const DELAY_LOOPS: u32 = 2_000;
/// Iterations the BSP waits after the INIT of the running AP.
const STOPPED_LOOPS: u32 = 20_000;
/// How far the tests run: the whole exchange, with room.
const RUN_INSTRUCTIONS: u64 = 3_000_000;

type Asm = Result<(), IcedError>;

fn real_mode(a: &mut CodeAssembler) -> Asm {
    a.cli()?;
    a.mov(ax, cs)?;
    a.mov(ds, ax)?;
    a.mov(word_ptr(REAL_CS_OFFSET), ax)?;
    a.lgdt(ptr(GDT_DESCRIPTOR_OFFSET))?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?; // PE
    a.mov(cr0, eax)?;
    a.jmp_far(0x08, PROT32 as u32)
}

fn protected_mode(a: &mut CodeAssembler) -> Asm {
    a.mov(ax, 0x10)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(eax, cr4)?;
    a.or(eax, 0x20)?; // PAE
    a.mov(cr4, eax)?;
    a.mov(eax, PML4.0 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xc000_0080u32)?; // EFER
    a.rdmsr()?;
    a.or(eax, 0x100)?; // LME
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0001u32)?; // PG, PE
    a.mov(cr0, eax)?;
    a.jmp_far(0x18, LONG64 as u32)
}

fn long_mode(a: &mut CodeAssembler) -> Asm {
    let mut spin = a.create_label();
    a.mov(eax, 1)?;
    a.cpuid()?;
    a.shr(ebx, 24)?;
    a.mov(qword_ptr(AP_APIC_ID), rbx)?;
    a.mov(rax, cr0)?;
    a.mov(qword_ptr(AP_CR0), rax)?;
    a.lock().inc(qword_ptr(STARTS))?;
    a.set_label(&mut spin)?;
    a.inc(qword_ptr(AP_SPIN))?;
    a.jmp(spin)
}

fn icr(a: &mut CodeAssembler, destination: u8, low: u32) -> Asm {
    a.mov(dword_ptr(r13 + 0x310), u32::from(destination) << 24)?;
    a.mov(dword_ptr(r13 + 0x300), low)
}

fn delay(a: &mut CodeAssembler, loops: u32) -> Asm {
    let mut again = a.create_label();
    a.mov(ecx, loops)?;
    a.set_label(&mut again)?;
    a.dec(ecx)?;
    a.jnz(again)
}

fn wait_for_starts(a: &mut CodeAssembler, starts: u32) -> Asm {
    let mut again = a.create_label();
    a.set_label(&mut again)?;
    a.cmp(qword_ptr(STARTS), starts as i32)?;
    a.jb(again)
}

/// Starts the AP as Linux does (INIT, INIT de-assert, two SIPIs), after
/// a delay, and waits until it has arrived in long mode; r13 is the APIC.
fn start_the_ap(a: &mut CodeAssembler) -> Asm {
    a.mov(r13, APIC_BASE_DEFAULT)?;
    delay(a, DELAY_LOOPS)?;
    for low in [ICR_INIT_ASSERT, ICR_INIT_DEASSERT, ICR_STARTUP, ICR_STARTUP] {
        icr(a, 1, low)?;
    }
    wait_for_starts(a, 1)?;
    Ok(())
}

/// The BSP: starts the AP, waits for it, INITs it, checks it stopped,
/// starts it again.
fn bootstrap(a: &mut CodeAssembler) -> Asm {
    let mut spin = a.create_label();
    start_the_ap(a)?;
    icr(a, 1, ICR_INIT_ASSERT)?;
    a.mov(rax, qword_ptr(AP_SPIN))?;
    a.mov(qword_ptr(SPIN_AT_INIT), rax)?;
    delay(a, STOPPED_LOOPS)?;
    a.mov(rax, qword_ptr(AP_SPIN))?;
    a.mov(qword_ptr(SPIN_LATER), rax)?;
    icr(a, 1, ICR_STARTUP)?;
    wait_for_starts(a, 2)?;
    a.mov(qword_ptr(BSP_DONE), 1)?;
    a.set_label(&mut spin)?;
    a.inc(rbx)?;
    a.jmp(spin)
}

/// A BSP that sends one IPI to APIC ID `destination` after the delay.
fn sender(destination: u8, low: u32) -> impl Fn(&mut CodeAssembler) -> Asm {
    move |a| {
        let mut spin = a.create_label();
        a.mov(r13, APIC_BASE_DEFAULT)?;
        delay(a, DELAY_LOOPS)?;
        icr(a, destination, low)?;
        a.set_label(&mut spin)?;
        a.jmp(spin)
    }
}

fn assemble(bitness: u32, at: u64, emit: impl Fn(&mut CodeAssembler) -> Asm) -> Vec<u8> {
    let mut a = CodeAssembler::new(bitness).expect("a bitness");
    emit(&mut a).expect("assembles");
    a.assemble(at).expect("assembles")
}

fn put(memory: &mut [u8], at: u64, bytes: &[u8]) {
    let at = usize::try_from(at).expect("in memory");
    memory[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A 2-vCPU machine with the PC platform whose AP waits for its start-up
/// IPI in INIT's state, the BSP running `bsp`, the trampoline at the
/// start-up page and the APIC page mapped.
fn machine(seed: u64, bsp: impl Fn(&mut CodeAssembler) -> Asm) -> Machine<EmuEngine> {
    machine_with(seed, bsp, long_mode)
}

/// [`machine`] with `ap` as the AP's 64-bit code at LONG64.
fn machine_with(
    seed: u64,
    bsp: impl Fn(&mut CodeAssembler) -> Asm,
    ap: impl Fn(&mut CodeAssembler) -> Asm,
) -> Machine<EmuEngine> {
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let image = GuestImage {
        code: assemble(64, GUEST_CODE.0, bsp),
        params: [0; 8],
    };
    let mut memory = image.boot_memory(&shape);
    put(&mut memory, TRAMPOLINE, &assemble(16, 0, real_mode));
    put(&mut memory, PROT32, &assemble(32, PROT32, protected_mode));
    put(&mut memory, LONG64, &assemble(64, LONG64, ap));
    for (i, entry) in TRAMPOLINE_GDT_ENTRIES.iter().enumerate() {
        put(
            &mut memory,
            TRAMPOLINE_GDT + 8 * i as u64,
            &entry.to_le_bytes(),
        );
    }
    let limit = (TRAMPOLINE_GDT_ENTRIES.len() * 8 - 1) as u16;
    put(
        &mut memory,
        TRAMPOLINE + GDT_DESCRIPTOR_OFFSET,
        &limit.to_le_bytes(),
    );
    let base = (TRAMPOLINE_GDT as u32).to_le_bytes();
    put(&mut memory, TRAMPOLINE + GDT_DESCRIPTOR_OFFSET + 2, &base);
    // The fourth GiB through HIGH_PD, the APIC page one uncached 2 MiB page.
    put(&mut memory, PDPT.0 + 8 * 3, &(HIGH_PD | 0x3).to_le_bytes());
    let apic_entry = (APIC_BASE_DEFAULT & !0x1f_ffff) | 0x93;
    let at = HIGH_PD + 8 * ((APIC_BASE_DEFAULT >> 21) & 0x1ff);
    put(&mut memory, at, &apic_entry.to_le_bytes());

    let states = vec![initial_vcpu_state(&shape, 0), startup::after_init()];
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    let engine = EmuEngine::boot(shape, &memory, states, config).expect("boots");
    let bus =
        DeviceBus::new(2, Box::new(MemStore::new(1))).with_pc(Pc::new(2, Startup::WaitingForSipi));
    Machine::new(shape, engine, bus)
}

fn waits(machine: &mut Machine<EmuEngine>) -> bool {
    let pc = machine.bus().pc().expect("a platform");
    pc.waits_for_startup(VcpuId(1))
}

#[test]
fn an_application_processor_waits_for_its_startup_ipi_and_runs_real_mode_to_long_mode() {
    let mut machine = machine(3, bootstrap);
    machine.run(Instructions(1_000)).expect("runs");
    assert!(waits(&mut machine), "no IPI yet");
    let ap = machine.engine().vcpu_state(VcpuId(1)).expect("state");
    assert_eq!(ap, startup::after_init(), "not run: INIT's registers");
    assert_eq!(q(&machine, STARTS), 0);

    machine.run(Instructions(RUN_INSTRUCTIONS)).expect("runs");
    assert_eq!(q(&machine, BSP_DONE), 1, "the BSP saw both starts");
    assert_eq!(q(&machine, STARTS), 2, "one start per SIPI after INIT");
    let real_cs = q(&machine, TRAMPOLINE + REAL_CS_OFFSET) & 0xffff;
    assert_eq!(
        real_cs,
        u64::from(VECTOR) << 8,
        "CS = vector << 8, DS:0x380 there"
    );
    assert_eq!(q(&machine, AP_APIC_ID), 1, "the AP's APIC ID, unchanged");
    assert_eq!(
        q(&machine, AP_CR0),
        0xe000_0011,
        "INIT's CD and NW, with PE and PG"
    );
    let (at_init, later) = (q(&machine, SPIN_AT_INIT), q(&machine, SPIN_LATER));
    assert!(at_init > 0, "it ran before its INIT");
    assert_eq!(at_init, later, "an INIT stops a running AP");
    assert!(q(&machine, AP_SPIN) > later, "its second SIPI restarts it");
    let ap = machine.engine().vcpu_state(VcpuId(1)).expect("state");
    assert_eq!(ap.efer & 0x500, 0x500, "LME and LMA: in long mode");
    let stats = machine.bus().pc().expect("a platform").stats();
    assert_eq!(stats.messages_ignored, 1, "the second SIPI of the pair");
}

/// The run to RUN_INSTRUCTIONS' state hash, and the AP's spin count.
fn finish(machine: &mut Machine<EmuEngine>) -> (u64, u64) {
    let left = RUN_INSTRUCTIONS - machine.engine().now().0;
    machine.run(Instructions(left)).expect("runs");
    (machine.state_hash().expect("hash"), q(machine, AP_SPIN))
}

/// `machine`'s full checkpoint, through its bytes, restored into a
/// fresh machine of the same seed.
fn restored(machine: &mut Machine<EmuEngine>, seed: u64) -> Machine<EmuEngine> {
    let checkpoint = machine.checkpoint(Kind::Full).expect("checkpoint");
    let decoded = Checkpoint::decode(&checkpoint.encode(), CHECKPOINT_BYTES_MAX).expect("decodes");
    let mut fresh = self::machine(seed, bootstrap);
    fresh.restore(&decoded).expect("restores");
    fresh
}

#[test]
fn checkpoints_while_the_ap_waits_and_right_after_its_startup_restore_to_the_same_run() {
    let straight = finish(&mut machine(5, bootstrap));

    let mut waiting = machine(5, bootstrap);
    waiting.run(Instructions(1_000)).expect("runs");
    assert!(waits(&mut waiting));
    assert_eq!(finish(&mut restored(&mut waiting, 5)), straight);

    // Step until the SIPI is applied: the AP has its start-up registers
    // and has not run yet (no vCPU ran after the ICR write).
    let mut started = machine(5, bootstrap);
    while waits(&mut started) {
        started.run(Instructions(1)).expect("runs");
    }
    let ap = started.engine().vcpu_state(VcpuId(1)).expect("state");
    assert_eq!(ap, startup::after_startup(VECTOR), "started, not yet run");
    assert_eq!(finish(&mut restored(&mut started, 5)), straight);
    assert_eq!(
        finish(&mut started),
        straight,
        "and the original runs on alike"
    );
}

#[test]
fn a_seed_is_one_interleaving_of_the_startup_and_another_seed_another() {
    let one = finish(&mut machine(11, bootstrap));
    assert_eq!(finish(&mut machine(11, bootstrap)), one);
    let other = finish(&mut machine(12, bootstrap));
    assert_ne!(other.1, one.1, "the AP spun a different number of times");
    assert_ne!(other.0, one.0);
}

fn unsupported(low: u32, destination: u8) -> String {
    let mut machine = machine(3, sender(destination, low));
    match machine.run(Instructions(RUN_INSTRUCTIONS)) {
        Err(MachineError::Engine(EngineError::GuestFault { vcpu, kind, .. })) => {
            assert_eq!(vcpu, VcpuId(u16::from(destination)));
            format!("{kind:?}")
        }
        other => panic!("an unsupported IPI is an error, not {other:?}"),
    }
}

#[test]
fn an_init_of_the_bootstrap_processor_and_an_nmi_are_clear_errors() {
    let init = unsupported(ICR_INIT_ASSERT, 0);
    assert!(init.contains("INIT of the bootstrap processor"), "{init}");
    let nmi = unsupported(ICR_NMI, 0);
    assert!(nmi.contains("non-maskable"), "{nmi}");
}

/// A kernel's code is not swept for `hlt` (`EmuEngine::boot`): a slice
/// that stops short at one halts the vCPU, so a BSP halted with
/// interrupts off and an AP that waits leave the machine idle instead of
/// running the halt loop every quantum.
#[test]
fn a_hlt_in_unswept_code_halts_the_vcpu_and_the_machine_idles() {
    let mut machine = machine(3, |a| {
        let mut again = a.create_label();
        a.cli()?;
        a.set_label(&mut again)?;
        a.hlt()?;
        a.jmp(again)
    });
    let exit = machine.run(Instructions(RUN_INSTRUCTIONS)).expect("runs");
    assert_eq!(exit, machine::RunExit::Idle);
    let ran = machine.engine().stats().instructions.0;
    assert!(ran <= 2, "cli and hlt, once: {ran}");
    let bsp = machine.engine().vcpu_state(VcpuId(0)).expect("state");
    assert_eq!(bsp.run_state, machine::RunState::Halted);
}

/// The function the AP calls and the BSP rewrites: `mov eax, imm32; ret`.
const FUNCTION: u64 = TRAMPOLINE + 0x800;
/// What the AP's last call of it returned.
const AP_RESULT: u64 = GUEST_DATA.0 + 0x140;
/// The top of the AP's stack (INIT left rsp 0).
const AP_STACK: u64 = GUEST_DATA.0 + 0x3000;
/// A fixed IPI, vector 0x40 (the AP runs with interrupts off: it stays
/// pending, as a `text_poke_sync` IPI would until taken).
const ICR_FIXED: u32 = 0x4040;

/// The AP in long mode: calls FUNCTION for good, keeping what it returns.
fn calling(a: &mut CodeAssembler) -> Asm {
    let mut spin = a.create_label();
    a.mov(rsp, AP_STACK)?;
    a.lock().inc(qword_ptr(STARTS))?;
    a.set_label(&mut spin)?;
    a.mov(rax, FUNCTION)?;
    a.call(rax)?;
    a.mov(qword_ptr(AP_RESULT), rax)?;
    a.inc(qword_ptr(AP_SPIN))?;
    a.jmp(spin)
}

/// The BSP: starts the AP, lets it call FUNCTION a while (translated in
/// its instance), rewrites the function to return 2 and sends the AP an
/// IPI, as Linux's text_poke does after patching its text.
fn patcher(a: &mut CodeAssembler) -> Asm {
    let mut spin = a.create_label();
    let mut called = a.create_label();
    start_the_ap(a)?;
    a.set_label(&mut called)?;
    a.cmp(qword_ptr(AP_SPIN), 1000)?;
    a.jb(called)?;
    a.mov(dword_ptr(FUNCTION + 1), 2)?;
    icr(a, 1, ICR_FIXED)?;
    a.mov(qword_ptr(BSP_DONE), 1)?;
    a.set_label(&mut spin)?;
    a.jmp(spin)
}

/// x86 fetches what was stored: code one vCPU rewrote and announced with
/// an IPI runs rewritten on the other, though that vCPU's unicorn
/// instance had it translated (with the dirty log, which tells the
/// engine which pages the writer stored to).
#[test]
fn code_rewritten_by_one_vcpu_runs_rewritten_on_the_other() {
    for seed in [3, 4] {
        let function = assemble(64, FUNCTION, |a| {
            a.mov(eax, 1)?;
            a.ret()
        });
        let mut machine = machine_with(seed, patcher, calling);
        machine
            .engine_mut()
            .set_dirty_tracking(cpu_model::DirtyTracking::Log)
            .expect("switches");
        machine
            .engine_mut()
            .write_memory(machine::Gpa(FUNCTION), &function)
            .expect("writes");
        machine.run(Instructions(RUN_INSTRUCTIONS)).expect("runs");
        assert_eq!(q(&machine, BSP_DONE), 1, "the BSP patched the function");
        let spins = q(&machine, AP_SPIN);
        machine.run(Instructions(100_000)).expect("runs");
        assert!(q(&machine, AP_SPIN) > spins, "the AP goes on calling");
        assert_eq!(q(&machine, AP_RESULT), 2, "the rewritten function ran");
    }
}
