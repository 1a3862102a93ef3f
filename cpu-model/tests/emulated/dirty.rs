// Dirty tracking by our unicorn patch's dirty log (DirtyTracking::Log):
// each epoch a guest runs one kind of store ("phase") and the pages the
// engine reports must be exactly the pages that phase writes, whatever
// the store: mov, rep stos/movs, push/call, xchg, lock cmpxchg/xadd,
// fxsave, a store across a page boundary, the page walker's accessed
// and dirty bits, a host-side write. A page written only before the last
// fetch must not come back; one written again after it must, through
// TLB entries another vCPU or an earlier epoch left clean, and after a
// restore. Two references: the pages whose bytes changed (a subset of
// what is reported), and write-protection, the old mechanism, on the
// same run (equal, but for the walker's writes, which it cannot see).
//
// The guest takes its phases from a control block in memory that the
// host writes, not from registers: setting a vCPU's registers writes its
// control registers, which flushes its TLB and would hide TLB entries
// left clean by an earlier epoch.

use std::collections::BTreeSet;

use cpu_model::{DirtyTracking, EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use machine::devices::{DeviceBus, MemStore};
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, GUEST_DATA, PD};
use machine::{Engine, Gpa, Instructions, Shape, VcpuId, PAGE_SIZE};

/// 8 MiB: four 2 MiB pages, the third ([`WALKED`]) for the walker's bits.
const MEMORY_BYTES: u64 = 8 << 20;
/// The 2 MiB page whose page-directory entry the walker phases use.
const WALKED: u64 = 0x40_0000;
/// Each vCPU's data, this far apart from [`GUEST_DATA`] on.
const VCPU_DATA_BYTES: u64 = 32 * PAGE_SIZE;
/// A page only the host writes.
const HOST_WRITTEN: u64 = 0x30_0000;
/// vCPU v's control block, at `CONTROL + CONTROL_BYTES * v`: the host's
/// request number, the request seen, the phase, the data base, and the
/// request done, u64 each.
const CONTROL: u64 = 0x31_0000;
const CONTROL_BYTES: u64 = 64;
const GO: u64 = 0;
const SEEN: u64 = 8;
const PHASE: u64 = 16;
const BASE: u64 = 24;
const DONE: u64 = 32;
/// Instructions an epoch runs: every phase done, the rest spent waiting.
const EPOCH_INSTRUCTIONS: u64 = 400_000;

/// One kind of store, run in an epoch of its own; `rbp` holds the vCPU's
/// data base, the pages below are relative to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Mov = 1,
    RepStos,
    RepMovs,
    PushCall,
    Atomics,
    Fxsave,
    AcrossPages,
    /// Clears the accessed and dirty bits of [`WALKED`]'s entry (a store
    /// to the page directory) and drops its translation.
    ClearWalked,
    /// A load from [`WALKED`]: the walker sets the accessed bit.
    LoadWalked,
    /// A store to [`WALKED`]: the walker sets the dirty bit.
    StoreWalked,
}

const STORES: [Phase; 7] = [
    Phase::Mov,
    Phase::RepStos,
    Phase::RepMovs,
    Phase::PushCall,
    Phase::Atomics,
    Phase::Fxsave,
    Phase::AcrossPages,
];

const WALKS: [Phase; 3] = [Phase::ClearWalked, Phase::LoadWalked, Phase::StoreWalked];

fn page_of(gpa: u64) -> u32 {
    u32::try_from(gpa / PAGE_SIZE).expect("small memory")
}

impl Phase {
    /// The pages this phase writes from data base `base`: the
    /// specification the engine's report is held to.
    fn writes(self, base: u64) -> BTreeSet<u32> {
        let first = page_of(base);
        let relative: &[u32] = match self {
            Phase::Mov => &[0],
            Phase::RepStos => &[1, 2, 3],
            Phase::RepMovs => &[4, 5],
            Phase::PushCall => &[6],
            Phase::Atomics => &[8, 9, 10],
            Phase::Fxsave => &[11],
            Phase::AcrossPages => &[12, 13],
            Phase::ClearWalked | Phase::LoadWalked => return [page_of(PD.0)].into(),
            Phase::StoreWalked => return [page_of(PD.0), page_of(WALKED)].into(),
        };
        relative.iter().map(|p| first + p).collect()
    }
}

/// Waits for a request in the vCPU's control block, runs its phase, says
/// it is done, waits again.
fn program() -> GuestImage {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    emit(&mut a).expect("assembles");
    GuestImage {
        code: a.assemble(GUEST_CODE.0).expect("assembles"),
        params: [0; 8],
    }
}

fn emit(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let page = PAGE_SIZE as i32;
    let mut labels = Vec::new();
    for _ in 0..WALKS.len() + STORES.len() {
        labels.push(a.create_label());
    }
    let mut sub = a.create_label();
    let mut wait = a.create_label();
    let mut done = a.create_label();
    // r12: this vCPU's control block (rdi holds its index at boot).
    a.imul_3(r12, rdi, CONTROL_BYTES as i32)?;
    a.add(r12, CONTROL as i32)?;
    a.set_label(&mut wait)?;
    a.mov(rax, qword_ptr(r12 + GO as i32))?;
    a.cmp(rax, qword_ptr(r12 + SEEN as i32))?;
    a.je(wait)?;
    a.mov(qword_ptr(r12 + SEEN as i32), rax)?;
    a.mov(rbx, qword_ptr(r12 + PHASE as i32))?;
    a.mov(rbp, qword_ptr(r12 + BASE as i32))?;
    for (i, label) in labels.iter().enumerate() {
        a.cmp(rbx, i as i32 + 1)?;
        a.je(*label)?;
    }
    a.ud2()?;
    let mut body = |a: &mut CodeAssembler, phase: Phase| -> Result<(), IcedError> {
        let label = &mut labels[phase as usize - 1];
        a.set_label(label)?;
        match phase {
            Phase::Mov => a.mov(qword_ptr(rbp), rax)?,
            Phase::RepStos => {
                a.lea(rdi, qword_ptr(rbp + page))?;
                a.mov(ecx, 3 * page)?;
                a.mov(eax, 0x5a)?;
                a.rep().stosb()?;
            }
            Phase::RepMovs => {
                a.mov(rsi, rbp)?;
                a.lea(rdi, qword_ptr(rbp + (5 * page - 6)))?;
                a.mov(ecx, 16)?;
                a.rep().movsb()?;
            }
            Phase::PushCall => {
                a.mov(r14, rsp)?;
                a.lea(rsp, qword_ptr(rbp + 7 * page))?;
                a.call(sub)?;
                a.mov(rsp, r14)?;
            }
            Phase::Atomics => {
                a.mov(eax, 1)?;
                a.xchg(qword_ptr(rbp + 8 * page), rax)?;
                a.xor(eax, eax)?;
                a.mov(ecx, 7)?;
                a.lock().cmpxchg(qword_ptr(rbp + 9 * page), rcx)?;
                a.lock().xadd(qword_ptr(rbp + 10 * page), rcx)?;
            }
            Phase::Fxsave => a.fxsave(ptr(rbp + 11 * page))?,
            Phase::AcrossPages => a.mov(qword_ptr(rbp + (13 * page - 4)), rax)?,
            Phase::ClearWalked => {
                let entry = PD.0 + 8 * (WALKED >> 21);
                a.mov(rax, entry)?;
                a.and(qword_ptr(rax), !0x60)?;
                a.mov(rax, WALKED)?;
                a.invlpg(ptr(rax))?;
            }
            Phase::LoadWalked => {
                a.mov(rax, WALKED)?;
                a.mov(rcx, qword_ptr(rax))?;
            }
            Phase::StoreWalked => {
                a.mov(rax, WALKED)?;
                a.mov(qword_ptr(rax + 0x100), rcx)?;
            }
        }
        a.jmp(done)
    };
    for phase in STORES.into_iter().chain(WALKS) {
        body(a, phase)?;
    }
    a.set_label(&mut done)?;
    a.mov(rax, qword_ptr(r12 + SEEN as i32))?;
    a.mov(qword_ptr(r12 + DONE as i32), rax)?;
    a.jmp(wait)?;
    a.set_label(&mut sub)?;
    a.push(rax)?;
    a.pop(rax)?;
    a.ret()
}

struct Rig {
    engine: EmuEngine,
    bus: DeviceBus,
    /// Guest memory at the last fetch.
    memory: Vec<u8>,
}

impl Rig {
    fn new(vcpus: u16, tracking: DirtyTracking, quantum: Quantum) -> Rig {
        let shape = Shape::new(vcpus, MEMORY_BYTES).expect("valid shape");
        let config = EmuConfig { seed: 3, quantum };
        let mut engine = EmuEngine::new(shape, &program(), config).expect("boots");
        engine.set_dirty_tracking(tracking).expect("tracking");
        let mut rig = Rig {
            engine,
            bus: DeviceBus::new(vcpus, Box::new(MemStore::new(1))),
            memory: vec![0; MEMORY_BYTES as usize],
        };
        // The boot image is not a write of the guest's: the baseline.
        rig.engine.take_dirty_pages().expect("takes");
        let mut boot = vec![0; MEMORY_BYTES as usize];
        rig.engine.read_memory(Gpa(0), &mut boot).expect("reads");
        rig.memory = boot;
        rig
    }

    /// The u64 at `gpa`.
    fn read(&self, gpa: u64) -> u64 {
        let mut bytes = [0u8; 8];
        self.engine
            .read_memory(Gpa(gpa), &mut bytes)
            .expect("reads");
        u64::from_le_bytes(bytes)
    }

    fn write(&mut self, gpa: u64, value: u64) {
        let bytes = value.to_le_bytes();
        self.engine.write_memory(Gpa(gpa), &bytes).expect("writes");
    }

    /// Asks vCPU `v` to run `phase` on data from `base` (host writes to
    /// its control block).
    fn start(&mut self, v: u16, phase: Phase, base: u64) {
        let block = CONTROL + CONTROL_BYTES * u64::from(v);
        self.write(block + PHASE, phase as u64);
        self.write(block + BASE, base);
        let go = self.read(block + GO) + 1;
        self.write(block + GO, go);
    }

    /// Runs an epoch; every vCPU must have done its request.
    fn run(&mut self, vcpus: u16) {
        self.engine
            .run(&mut self.bus, Instructions(EPOCH_INSTRUCTIONS))
            .expect("runs");
        for v in 0..vcpus {
            let block = CONTROL + CONTROL_BYTES * u64::from(v);
            assert_eq!(
                self.read(block + DONE),
                self.read(block + GO),
                "vCPU {v} done"
            );
        }
    }

    /// The pages reported dirty since the last fetch, checked against the
    /// pages whose bytes changed meanwhile (which it must include).
    fn fetch(&mut self) -> BTreeSet<u32> {
        let pages: BTreeSet<u32> = self
            .engine
            .take_dirty_pages()
            .expect("takes")
            .into_iter()
            .map(|p| p.0)
            .collect();
        let mut now = vec![0; MEMORY_BYTES as usize];
        self.engine.read_memory(Gpa(0), &mut now).expect("reads");
        let changed = now
            .chunks(PAGE_SIZE as usize)
            .zip(self.memory.chunks(PAGE_SIZE as usize))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u32);
        for page in changed {
            assert!(
                pages.contains(&page),
                "page {page:#x} changed, not reported"
            );
        }
        self.memory = now;
        pages
    }

    /// One epoch: each vCPU `v` runs `work[v]`'s phase on its data
    /// base; returns the pages reported and the pages the phases and the
    /// requests write (the control blocks' page).
    fn epoch(&mut self, work: &[(Phase, u64)]) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let mut expected = BTreeSet::from([page_of(CONTROL)]);
        for (v, &(phase, base)) in work.iter().enumerate() {
            self.start(v as u16, phase, base);
            expected.extend(phase.writes(base));
        }
        self.run(work.len() as u16);
        (self.fetch(), expected)
    }
}

fn base(v: u64) -> u64 {
    GUEST_DATA.0 + v * VCPU_DATA_BYTES
}

#[test]
fn the_log_reports_exactly_the_pages_each_kind_of_store_writes() {
    let mut rig = Rig::new(1, DirtyTracking::Log, Quantum::default());
    // Twice: the second round writes pages the first left dirty in the
    // TLB, so it shows the fetch re-arms them; the walker's bits are
    // cleared again each round.
    for round in 0..2 {
        for phase in STORES.into_iter().chain(WALKS) {
            let (got, expected) = rig.epoch(&[(phase, base(0))]);
            assert_eq!(got, expected, "round {round}, {phase:?}");
        }
    }
    // A host-side write (a device's, a restore's) is reported; nothing
    // written before the last fetch is.
    rig.engine
        .write_memory(Gpa(HOST_WRITTEN), &[1, 2, 3])
        .expect("writes");
    assert_eq!(rig.fetch(), [page_of(HOST_WRITTEN)].into());
    assert_eq!(rig.fetch(), BTreeSet::new());
}

#[test]
fn the_log_sees_pages_another_vcpu_wrote_before_and_matches_write_protection() {
    // Quanta of a few instructions: the two vCPUs' phases interleave.
    let quantum = Quantum { min: 1, max: 7 };
    let mut logged = Rig::new(2, DirtyTracking::Log, quantum);
    let mut protected = Rig::new(2, DirtyTracking::WriteProtect, quantum);
    for swap in [0, 1, 0] {
        for phase in STORES {
            // vCPU v writes the data of vCPU (v + swap) % 2: every page is
            // written by both instances across the rounds.
            let work = [(phase, base(swap)), (phase, base(1 - swap))];
            let (got, expected) = logged.epoch(&work);
            assert_eq!(got, expected, "swap {swap}, {phase:?}");
            let (reference, _) = protected.epoch(&work);
            assert_eq!(got, reference, "swap {swap}, {phase:?}: write-protection");
        }
    }
}

#[test]
fn the_log_is_exact_across_a_restore() {
    let mut rig = Rig::new(1, DirtyTracking::Log, Quantum::default());
    let (got, expected) = rig.epoch(&[(Phase::Mov, base(0))]);
    assert_eq!(got, expected);
    // The checkpoint: memory and registers as of this fetch.
    let memory = rig.memory.clone();
    let state = rig.engine.vcpu_state(VcpuId(0)).expect("state");
    let engine_state = rig.engine.save_engine_state();
    // Written again (its TLB entry now clean), not fetched: then the
    // restore, as Machine::restore does it (pages, registers, a fetch
    // whose pages are the restored ones, not a delta).
    rig.start(0, Phase::RepStos, base(0));
    rig.run(1);
    rig.engine.write_memory(Gpa(0), &memory).expect("restores");
    rig.engine
        .set_vcpu_state(VcpuId(0), &state)
        .expect("restores");
    rig.engine
        .restore_engine_state(&engine_state)
        .expect("restores");
    rig.fetch();
    for phase in [Phase::Mov, Phase::RepStos] {
        let (got, expected) = rig.epoch(&[(phase, base(0))]);
        assert_eq!(got, expected, "after the restore, {phase:?}");
    }
}
