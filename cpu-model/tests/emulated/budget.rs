// The instruction budget of our unicorn patch (its BUDGET pseudo-register,
// counted inline per translation block) against unicorn's own count (a
// code hook on every instruction, what the engine used before): for every
// budget N of a sweep, a fresh guest run for N instructions both ways must
// end in the same registers and memory. A budget off by one anywhere (mid
// block, at a block's end, inside a rep, across a page fault and its
// restart, under a hook's stop, under either dirty tracking, cut into
// slices) ends somewhere else.

use cpu_model::raw::RawUnicorn;
use cpu_model::{DirtyTracking, EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use machine::devices::{DeviceBus, MemStore};
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN};
use machine::{Engine, Instructions, Shape, VcpuId};
use std::cell::Cell;
use std::rc::Rc;
use unicorn_engine::unicorn_const::HookType;
use unicorn_engine::RegisterX86;

use crate::delivery::{none, Guest, Labels, Main, ABSENT2};
use crate::longmode::{ABSENT, DATA, PT};

/// Our patch's BUDGET pseudo-register (its include/unicorn/x86.h).
pub(crate) const BUDGET: i32 = 1007;

const REGISTERS: [RegisterX86; 19] = [
    RegisterX86::RAX,
    RegisterX86::RCX,
    RegisterX86::RDX,
    RegisterX86::RBX,
    RegisterX86::RSP,
    RegisterX86::RBP,
    RegisterX86::RSI,
    RegisterX86::RDI,
    RegisterX86::R8,
    RegisterX86::R9,
    RegisterX86::R10,
    RegisterX86::R11,
    RegisterX86::R12,
    RegisterX86::R13,
    RegisterX86::R14,
    RegisterX86::R15,
    RegisterX86::RIP,
    RegisterX86::RFLAGS,
    RegisterX86::CR2,
];

/// What a raw guest run leaves: registers, its data pages (DATA through
/// ABSENT2) and its page table (the #PF handler maps pages there).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    registers: Vec<u64>,
    memory: Vec<u8>,
}

fn outcome(g: &Guest) -> Outcome {
    let registers = REGISTERS
        .iter()
        .map(|&r| g.uc.reg_read(r).expect("register"))
        .collect();
    let mut memory = vec![0u8; (ABSENT2 + 0x1000 - DATA) as usize + 0x1000];
    let (data, table) = memory.split_at_mut((ABSENT2 + 0x1000 - DATA) as usize);
    g.uc.mem_read(DATA, data).expect("data");
    g.uc.mem_read(PT, table).expect("page table");
    Outcome { registers, memory }
}

/// Runs a fresh `main` for `n` instructions by unicorn's counting hook;
/// returns what it left and how many instructions a code hook of our own
/// saw begin (unicorn runs its counting hook first and skips ours at the
/// instruction where it stops the run).
fn hook_counted(main: Main, n: u64, stop: Option<u64>) -> (Outcome, u64) {
    let mut g = guest(main, stop);
    let seen = Rc::new(Cell::new(0u64));
    let s = seen.clone();
    g.uc.add_code_hook(1, 0, move |_, _, _| s.set(s.get() + 1))
        .expect("hook");
    let rip = g.uc.reg_read(RegisterX86::RIP).expect("rip");
    let count = usize::try_from(n).expect("small");
    g.uc.emu_start(rip, 0, 0, count).expect("runs");
    (outcome(&g), seen.get())
}

/// Runs a fresh `main` for `n` instructions on the budget, in slices of
/// the lengths `slices` cycles through; returns what it left and how many
/// instructions the budget says ran.
fn budgeted(main: Main, n: u64, slices: &[u64], stop: Option<u64>) -> (Outcome, u64) {
    let mut g = guest(main, stop);
    let mut ran = 0;
    for &slice in slices.iter().cycle() {
        let slice = slice.min(n - ran);
        if slice == 0 {
            break;
        }
        let rip = g.uc.reg_read(RegisterX86::RIP).expect("rip");
        g.uc.reg_write(BUDGET, slice).expect("budget");
        g.uc.emu_start(rip, 0, 0, 0).expect("runs");
        let left = g.uc.reg_read(BUDGET).expect("budget");
        assert!(left <= slice, "{left} left of {slice}");
        ran += slice - left;
        if left > 0 {
            break; // hlt, or the hook's stop
        }
    }
    (outcome(&g), ran)
}

/// The guest of `main`, with a write hook on DATA + 0x800 that stops the
/// run at its `stop`-th write, if given.
fn guest(main: Main, stop: Option<u64>) -> Guest {
    let mut g = Guest::new(main, none);
    if let Some(stop) = stop {
        let mut writes = 0;
        g.uc.add_mem_hook(
            HookType::MEM_WRITE,
            DATA + 0x800,
            DATA + 0x807,
            move |uc, _, _, _, _| {
                writes += 1;
                if writes == stop {
                    let _ = uc.emu_stop();
                }
                true
            },
        )
        .expect("hook");
    }
    g
}

/// For every budget up to `most`: the budget ends where the hook count
/// ends, and it ran exactly the budget until the guest stops by itself,
/// from where on it ran the same count whatever the budget.
fn sweep(main: Main, most: u64, stop: Option<u64>) {
    let mut stopped_at = None;
    for n in 1..=most {
        let (got, ran) = budgeted(main, n, &[n], stop);
        let (want, counted) = hook_counted(main, n, stop);
        assert_eq!(got, want, "budget {n}");
        assert_eq!(ran, counted, "budget {n}: the hook's count");
        match stopped_at {
            None if ran < n => stopped_at = Some(ran),
            None => assert_eq!(ran, n, "budget {n}"),
            Some(at) => assert_eq!(ran, at, "budget {n}: stops where it stopped"),
        }
    }
    let stopped_at = stopped_at.expect("the guest stops within the sweep");
    for slices in [&[1][..], &[2, 3], &[5, 1, 7], &[64]] {
        let (got, ran) = budgeted(main, stopped_at, slices, stop);
        assert_eq!(ran, stopped_at, "slices {slices:?}");
        assert_eq!(
            got,
            hook_counted(main, stopped_at, stop).0,
            "slices {slices:?}"
        );
    }
}

/// A loop of blocks of five instructions: budgets end mid-block and at
/// block ends.
fn counting_loop(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.xor(r8d, r8d)?;
    a.set_label(&mut top)?;
    a.inc(rax)?;
    a.add(rbx, rax)?;
    a.inc(r8)?;
    a.cmp(r8, 30)?;
    a.jne(top)?;
    a.hlt()
}

#[test]
fn a_loop_stops_exactly_at_every_budget() {
    sweep(counting_loop, 160, None);
}

/// rep movsb, with 0 iterations, and into a page that is not present (a
/// #PF mid-rep, restarted by the handler with the count left).
fn reps(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    a.mov(rsi, DATA)?;
    a.mov(rdi, DATA + 0x100)?;
    a.mov(rcx, 13u64)?;
    a.rep().movsb()?;
    a.xor(ecx, ecx)?;
    a.rep().movsb()?;
    a.mov(rsi, DATA)?;
    a.mov(rdi, ABSENT - 6)?;
    a.mov(rcx, 11u64)?;
    a.rep().movsb()?;
    a.inc(rax)?;
    a.hlt()
}

#[test]
fn budgets_inside_a_rep_movsb_and_across_its_page_fault() {
    sweep(reps, 120, None);
}

/// Two page faults (a load and a store), each restarted after its handler.
fn faults(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    a.mov(rax, ABSENT)?;
    a.mov(rcx, ABSENT2)?;
    a.mov(rbx, qword_ptr(rax))?;
    a.mov(qword_ptr(rcx + 8), rbx)?;
    a.inc(rdx)?;
    a.hlt()
}

#[test]
fn budgets_across_page_faults_and_their_restarts() {
    sweep(faults, 80, None);
}

/// Stores to the hooked quadword, among other instructions of a block.
fn hooked_stores(a: &mut CodeAssembler, _: &mut Labels) -> Result<(), IcedError> {
    let mut top = a.create_label();
    a.mov(rdi, DATA + 0x800)?;
    a.set_label(&mut top)?;
    a.inc(rax)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.inc(rbx)?;
    a.cmp(rbx, 10)?;
    a.jne(top)?;
    a.hlt()
}

#[test]
fn a_hooks_stop_mid_block_ends_the_budgeted_run_where_it_ends_the_counted_one() {
    sweep(hooked_stores, 40, Some(3));
}

/// Stores to two data pages (write-protected at boot: dirty-tracking
/// faults until the pages turn hot and are opened at a slice end) and a
/// rep movsb of 0 to 15 bytes into the second, forever.
fn dirtier() -> GuestImage {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    let mut top = a.create_label();
    let emit = |a: &mut CodeAssembler, top: &mut CodeLabel| -> Result<(), IcedError> {
        a.mov(rbx, GUEST_DATA.0)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.set_label(top)?;
        a.inc(rax)?;
        a.and(rax, 0x1ff)?;
        a.mov(qword_ptr(rbx + rax * 8), rdx)?;
        a.mov(rsi, rbx)?;
        a.lea(rdi, qword_ptr(rbx + 0x1000))?;
        a.add(rdi, rax)?;
        a.mov(rcx, rax)?;
        a.and(rcx, 15)?;
        a.rep().movsb()?;
        a.add(rdx, rax)?;
        a.jmp(*top)
    };
    emit(&mut a, &mut top).expect("assembles");
    GuestImage {
        code: a.assemble(GUEST_CODE.0).expect("assembles"),
        params: [0; 8],
    }
}

fn shape() -> Shape {
    Shape::new(1, MEMORY_BYTES_MIN).expect("valid")
}

/// Registers and the two data pages.
fn engine_outcome(engine: &EmuEngine) -> ([u64; 16], u64, u64, Vec<u8>) {
    let state = engine.vcpu_state(VcpuId(0)).expect("state");
    let mut pages = vec![0u8; 0x2000];
    engine.read_memory(GUEST_DATA, &mut pages).expect("reads");
    (state.gprs, state.rip, state.rflags, pages)
}

fn reference(image: &GuestImage, n: u64) -> ([u64; 16], u64, u64, Vec<u8>) {
    let mut raw = RawUnicorn::new(shape(), image).expect("boots");
    raw.run_hook_counted(n).expect("runs");
    let state = raw.vcpu_state(0).expect("state");
    let mut pages = vec![0u8; 0x2000];
    raw.read_memory(0, GUEST_DATA, &mut pages).expect("reads");
    (state.gprs, state.rip, state.rflags, pages)
}

/// An engine of `quantum` and `tracking` run for `n` instructions in
/// `Engine::run` calls of the lengths `runs` cycles through.
fn engine_run(quantum: Quantum, tracking: DirtyTracking, n: u64, runs: &[u64]) -> EmuEngine {
    let config = EmuConfig { seed: 7, quantum };
    let mut engine = EmuEngine::new(shape(), &dirtier(), config).expect("boots");
    engine.set_dirty_tracking(tracking).expect("tracking");
    let mut bus = DeviceBus::new(1, Box::new(MemStore::new(1)));
    let mut left = n;
    for &run in runs.iter().cycle() {
        let run = run.min(left);
        if run == 0 {
            break;
        }
        engine.run(&mut bus, Instructions(run)).expect("runs");
        left -= run;
    }
    assert_eq!(engine.stats().instructions, Instructions(n), "counted");
    engine
}

#[test]
fn the_engine_runs_exactly_its_budget_under_both_dirty_trackings() {
    let image = dirtier();
    let whole = Quantum {
        min: 100_000,
        max: 100_000,
    };
    for n in (1..=200).chain([997, 4096, 10_007]) {
        let want = reference(&image, n);
        for tracking in [
            DirtyTracking::WriteProtect,
            DirtyTracking::EveryPage,
            DirtyTracking::Log,
        ] {
            let engine = engine_run(whole, tracking, n, &[n]);
            assert_eq!(engine_outcome(&engine), want, "{n} under {tracking:?}");
        }
    }
}

#[test]
fn a_run_cut_into_many_slices_equals_one_run_of_the_same_total() {
    let n = 20_011;
    let want = reference(&dirtier(), n);
    let tiny = Quantum { min: 1, max: 9 };
    for tracking in [
        DirtyTracking::WriteProtect,
        DirtyTracking::EveryPage,
        DirtyTracking::Log,
    ] {
        for runs in [&[n][..], &[1, 2, 3, 500], &[4096]] {
            let engine = engine_run(tiny, tracking, n, runs);
            assert_eq!(engine_outcome(&engine), want, "{tracking:?}, runs {runs:?}");
        }
    }
}
