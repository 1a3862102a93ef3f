// Debian's unmodified kernel on the emulated engine: the bzImage laid out
// by machine::linux (64-bit boot protocol), the PC platform on the bus
// (local APIC, I/O APIC, COM1, RTC), the console collected from COM1.
// The kernel is not in the repo: guest-linux/fetch-kernel.sh fetches it
// (or set LOCKSTEP_LINUX_KERNEL to a bzImage); nor is the initramfs:
// guest-linux/build-initramfs.sh builds it (or set
// LOCKSTEP_LINUX_INITRAMFS to a cpio archive). These tests are #[ignore]d:
// run them with
//   cargo test --release -p cpu-model --test emulated linux -- --ignored --nocapture
// LOCKSTEP_LINUX_INSTRUCTIONS sets how far the measuring run goes;
// LOCKSTEP_LINUX_CMDLINE replaces the command line (e.g. DEFAULT_CMDLINE
// with `initcall_debug loglevel=8`, to see where the boot's time goes);
// LOCKSTEP_LINUX_CONSOLE=file saves its whole console; LOCKSTEP_LINUX_ECHO=1 prints the console as it comes, stamped with guest
// and wall time; LOCKSTEP_LINUX_APIC=1 the local APIC's timer each chunk.
// LOCKSTEP_LINUX_DIRTY=every (or protect) runs the boots with
// DirtyTracking::EveryPage (WriteProtect) instead of the dirty log.

use std::time::Instant;

use cpu_model::{DirtyTracking, EmuConfig, EmuEngine, Quantum};
use machine::devices::{DeviceBus, MemStore};
use machine::linux::{load, DEFAULT_CMDLINE};
use machine::pc::lapic::Startup;
use machine::pc::Pc;
use machine::{Engine, Instructions, Machine, MachineError, Shape};

const KERNEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest-linux/kernel/vmlinuz-6.1.0-47-amd64"
);
const INITRAMFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest-linux/initramfs/initramfs.cpio"
);
/// The kernel decompresses itself to 16 MiB and needs 64 MiB there.
const MEMORY_BYTES: u64 = 256 << 20;
/// Instructions per run between looks at the console.
const CHUNK: u64 = 20_000_000;
/// How far the first-line test goes before it gives up.
const FIRST_LINE_INSTRUCTIONS_MAX: u64 = 6_000_000_000;
const FIRST_LINE: &str = "Linux version 6.1";
/// The first line the initramfs's /init prints.
const USERSPACE_LINE: &str = "lockstep-guest: userspace up";
/// How far the userspace test goes before it gives up.
const USERSPACE_INSTRUCTIONS_MAX: u64 = 12_000_000_000;
/// The last line of a boot without a root file system.
const END_OF_BOOT: &str = "end Kernel panic";

/// The number in environment variable `name`, or `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The bytes at `$variable` or `default`, or None after saying loudly
/// which script makes them.
fn guest_file(variable: &str, default: &str, what: &str, script: &str) -> Option<Vec<u8>> {
    let path = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("==================================================================");
            eprintln!("SKIPPED: no {what} at {path} ({error}).");
            eprintln!("Make it with guest-linux/{script} (or set {variable}).");
            eprintln!("==================================================================");
            None
        }
    }
}

/// The virtio disk's blocks: 1 MiB, blank: the ledger's journal (a
/// journal ends at its first all-zero record).
const DISK_BLOCKS: u64 = 2048;
/// The virtio NIC's MAC (locally administered).
const MAC: [u8; 6] = [0x02, 0x4c, 0x4b, 0x53, 0x54, 0x01];

fn disk() -> MemStore {
    MemStore::new(DISK_BLOCKS)
}

/// The kernel's bytes, or None after saying loudly how to fetch it.
fn kernel() -> Option<Vec<u8>> {
    guest_file(
        "LOCKSTEP_LINUX_KERNEL",
        KERNEL,
        "Linux kernel",
        "fetch-kernel.sh",
    )
}

/// The initramfs's bytes, or None after saying loudly how to build it.
fn initramfs() -> Option<Vec<u8>> {
    guest_file(
        "LOCKSTEP_LINUX_INITRAMFS",
        INITRAMFS,
        "initramfs",
        "build-initramfs.sh",
    )
}

/// How the boots track dirty pages: the dirty log unless
/// LOCKSTEP_LINUX_DIRTY says otherwise (to measure against the others).
fn dirty_tracking() -> DirtyTracking {
    match std::env::var("LOCKSTEP_LINUX_DIRTY").as_deref() {
        Ok("every") => DirtyTracking::EveryPage,
        Ok("protect") => DirtyTracking::WriteProtect,
        _ => DirtyTracking::Log,
    }
}

fn linux_machine(kernel: &[u8], initramfs: Option<&[u8]>, seed: u64) -> Machine<EmuEngine> {
    let shape = Shape::new(1, MEMORY_BYTES).expect("valid");
    let cmdline =
        std::env::var("LOCKSTEP_LINUX_CMDLINE").unwrap_or_else(|_| DEFAULT_CMDLINE.to_string());
    let image = load(&shape, kernel, &cmdline, initramfs).expect("the kernel loads");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    let mut engine =
        EmuEngine::boot(shape, &image.memory, image.vcpu_states, config).expect("boots");
    engine
        .set_dirty_tracking(dirty_tracking())
        .expect("switches");
    let bus = DeviceBus::new(1, Box::new(disk()))
        .with_pc(Pc::new(1, Startup::Running))
        .with_virtio(MAC);
    Machine::new(shape, engine, bus)
}

/// A run of the kernel: its console, how far it got, and how it ended.
struct Boot {
    machine: Machine<EmuEngine>,
    console: Vec<u8>,
    /// Guest instructions (guest ns) and wall seconds when `FIRST_LINE`
    /// was first complete on the console.
    first_line: Option<(u64, f64)>,
    /// The engine's error, if the run ended in one.
    error: Option<MachineError>,
}

impl Boot {
    fn now(&self) -> u64 {
        self.machine.engine().now().0
    }
}

/// Runs the kernel (with `initramfs`, if any) until `until(console)` or
/// `instructions_max`.
fn run(
    (kernel, initramfs): (&[u8], Option<&[u8]>),
    seed: u64,
    instructions_max: u64,
    until: impl Fn(&[u8]) -> bool,
) -> Boot {
    let started = Instant::now();
    let mut boot = Boot {
        machine: linux_machine(kernel, initramfs, seed),
        console: Vec::new(),
        first_line: None,
        error: None,
    };
    while boot.now() < instructions_max && !until(&boot.console) {
        let budget = CHUNK.min(instructions_max - boot.now());
        if let Err(error) = boot.machine.run(Instructions(budget)) {
            boot.error = Some(error);
        }
        if std::env::var_os("LOCKSTEP_LINUX_APIC").is_some() {
            // The local APIC's timer each chunk: whether the kernel's tick
            // is armed and moving.
            let now = boot.now();
            if let Some(pc) = boot.machine.bus().pc() {
                let lapic = pc.lapic(machine::VcpuId(0));
                eprintln!(
                    "apic at {now}: enabled {} tsc_deadline {} next {:?} isr {:?} irr {:?}",
                    lapic.enabled(),
                    lapic.tsc_deadline(),
                    pc.next_deadline(),
                    lapic.isr(),
                    lapic.irr()
                );
            }
        }
        let new = boot.machine.bus().console.take();
        if std::env::var_os("LOCKSTEP_LINUX_ECHO").is_some() && !new.is_empty() {
            // Each chunk's console bytes, stamped: how far the boot got when.
            eprintln!(
                "[{:>12} ns, {:>6.1} s] {}",
                boot.now(),
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&new).trim_end()
            );
        }
        boot.console.extend(new);
        if boot.first_line.is_none() && line(&boot.console, FIRST_LINE).is_some() {
            boot.first_line = Some((boot.now(), started.elapsed().as_secs_f64()));
        }
        if boot.error.is_some() {
            break;
        }
    }
    boot
}

/// The console's line that starts with `start`, once complete.
fn line(console: &[u8], start: &str) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let at = text.find(start)?;
    let end = text[at..].find('\n')?;
    Some(text[at..at + end].trim_end().to_string())
}

fn report(boot: &mut Boot, wall_s: f64) {
    let state = boot.machine.engine().vcpu_state(machine::VcpuId(0));
    let text = String::from_utf8_lossy(&boot.console).to_string();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("---- console, last lines of {} ----", lines.len());
    for line in lines.iter().skip(lines.len().saturating_sub(25)) {
        eprintln!("| {line}");
    }
    eprintln!("---- end of console ----");
    eprintln!(
        "guest instructions (ns): {}; wall: {wall_s:.1} s; engine: {:?}",
        boot.now(),
        boot.machine.engine().stats()
    );
    if let Some((at, wall)) = boot.first_line {
        eprintln!("first line at {at} instructions, {wall:.1} s wall");
    }
    if let Ok(state) = state {
        eprintln!(
            "vCPU 0: rip {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            state.rip, state.rflags, state.cr0, state.cr3, state.cr4, state.efer
        );
        eprintln!("gprs {:x?}", state.gprs);
        if let Some(system) = &state.system {
            eprintln!(
                "cr2 {:#x} idt {:x?} cs {:x?}",
                system.cr2, system.idt, system.segments[0]
            );
        }
    }
    if let Some(virtio) = boot.machine.bus().virtio() {
        eprintln!(
            "virtio: {:?}; block status {:#x}, net status {:#x}",
            virtio.counts(),
            virtio.block.transport().status(),
            virtio.net.transport().status()
        );
    }
    if let Some(error) = &boot.error {
        eprintln!("run ended in an error: {error}");
    }
}

#[test]
#[ignore = "needs guest-linux/fetch-kernel.sh's kernel; minutes of emulation"]
fn debians_kernel_prints_its_first_console_line_over_com1_deterministically() {
    let Some(kernel) = kernel() else { return };
    let started = Instant::now();
    let mut one = run((&kernel, None), 5, FIRST_LINE_INSTRUCTIONS_MAX, |c| {
        line(c, FIRST_LINE).is_some()
    });
    report(&mut one, started.elapsed().as_secs_f64());
    let first = line(&one.console, FIRST_LINE).expect("the kernel's first console line");
    assert!(first.starts_with(FIRST_LINE), "{first}");
    assert!(one.error.is_none(), "{:?}", one.error);
    assert_same_run(&mut one, (&kernel, None));
}

/// A second run with the same seed to the same instruction: the same
/// console, the same state.
fn assert_same_run(one: &mut Boot, image: (&[u8], Option<&[u8]>)) {
    let at = one.now();
    let mut two = run(image, 5, at, |_| false);
    assert_eq!(two.now(), at);
    assert_eq!(one.console, two.console);
    let (hash_one, hash_two) = (
        one.machine.state_hash().expect("hash"),
        two.machine.state_hash().expect("hash"),
    );
    assert_eq!(hash_one, hash_two);
}

/// How far the boot gets: runs to the panic that ends a boot without a
/// root file system, LOCKSTEP_LINUX_INSTRUCTIONS (default 20 G) or an
/// error, and reports the figures and the last console lines.
#[test]
#[ignore = "needs guest-linux/fetch-kernel.sh's kernel; a measurement, not a check"]
fn how_far_debians_kernel_boots() {
    let Some(kernel) = kernel() else { return };
    let instructions_max = env_u64("LOCKSTEP_LINUX_INSTRUCTIONS", 20_000_000_000);
    let started = Instant::now();
    // With LOCKSTEP_LINUX_INITRAMFS set, the boot with that initramfs.
    let initramfs = std::env::var_os("LOCKSTEP_LINUX_INITRAMFS").and_then(|_| initramfs());
    let mut boot = run(
        (&kernel, initramfs.as_deref()),
        5,
        instructions_max,
        |console| {
            // Without a root file system the boot ends in this panic (and the
            // kernel then spins in it).
            String::from_utf8_lossy(console).contains(END_OF_BOOT)
        },
    );
    report(&mut boot, started.elapsed().as_secs_f64());
    if let Some(path) = std::env::var_os("LOCKSTEP_LINUX_CONSOLE") {
        std::fs::write(&path, &boot.console).expect("writes the console");
    }
}

/// Where the mid-boot checkpoint is taken: past the decompressor (its
/// first console line is at 4.54 G), the kernel initialising its drivers
/// with its tick armed.
const MID_BOOT: u64 = 5_000_000_000;
/// How far both machines run after it.
const AFTER_CHECKPOINT: u64 = 1_000_000_000;

/// Runs `machine` `instructions` further, in chunks, and returns the
/// console it printed meanwhile.
fn run_on(machine: &mut Machine<EmuEngine>, instructions: u64) -> Vec<u8> {
    let end = machine.engine().now().0 + instructions;
    let mut console = Vec::new();
    while machine.engine().now().0 < end {
        let budget = CHUNK.min(end - machine.engine().now().0);
        machine.run(Instructions(budget)).expect("runs");
        console.extend(machine.bus().console.take());
    }
    console
}

#[test]
#[ignore = "needs guest-linux/fetch-kernel.sh's kernel; minutes of emulation"]
fn a_checkpoint_taken_mid_boot_restores_in_a_fresh_machine_to_the_same_state() {
    let Some(kernel) = kernel() else { return };
    let at = env_u64("LOCKSTEP_LINUX_CHECKPOINT_AT", MID_BOOT);
    let started = Instant::now();
    let mut original = run((&kernel, None), 5, at, |_| false);
    assert!(original.error.is_none(), "{:?}", original.error);
    assert_eq!(original.now(), at);
    assert!(
        line(&original.console, FIRST_LINE).is_some(),
        "mid-boot: the kernel proper is running"
    );
    let checkpoint = original
        .machine
        .checkpoint(machine::Kind::Full)
        .expect("checkpoint");
    let bytes = checkpoint.encode();
    let checkpoint =
        machine::Checkpoint::decode(&bytes, machine::CHECKPOINT_BYTES_MAX).expect("decodes");
    let system = checkpoint.vcpu_states[0]
        .system
        .clone()
        .expect("the kernel's vCPU carries its system registers");
    eprintln!(
        "checkpoint at {at} instructions ({:.1} s): {} bytes, rip {:#x}, mxcsr {:#x}, fcw {:#x}",
        started.elapsed().as_secs_f64(),
        bytes.len(),
        checkpoint.vcpu_states[0].rip,
        system.fpu.mxcsr,
        system.fpu.fcw
    );

    let mut fresh = linux_machine(&kernel, None, 5);
    fresh.restore(&checkpoint).expect("restores");
    assert_eq!(fresh.engine().now().0, at);
    let console_fresh = run_on(&mut fresh, AFTER_CHECKPOINT);
    let console_original = run_on(&mut original.machine, AFTER_CHECKPOINT);
    eprintln!(
        "after the checkpoint: {} console bytes each, {:.1} s in all",
        console_original.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        String::from_utf8_lossy(&console_fresh),
        String::from_utf8_lossy(&console_original)
    );
    assert!(
        !console_original.is_empty(),
        "the kernel printed after the checkpoint"
    );
    assert_eq!(
        fresh.state_hash().expect("hash"),
        original.machine.state_hash().expect("hash")
    );
}

/// Boots `image` (seed 5) until init's first line, an error or
/// [`USERSPACE_INSTRUCTIONS_MAX`].
fn run_to_userspace(image: (&[u8], Option<&[u8]>)) -> Boot {
    run(image, 5, USERSPACE_INSTRUCTIONS_MAX, |c| {
        line(c, USERSPACE_LINE).is_some()
    })
}

/// The initramfs's /init prints its first line: the kernel unpacked the
/// archive, ran busybox as init, mounted devtmpfs, proc and sysfs and
/// tried the virtio modules; and a second run with the same seed gives
/// the same console and state at the same instruction.
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn debians_kernel_runs_the_initramfs_init_to_its_first_line_deterministically() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let started = Instant::now();
    let image = (&kernel[..], Some(&initramfs[..]));
    let mut one = run_to_userspace(image);
    report(&mut one, started.elapsed().as_secs_f64());
    eprintln!(
        "userspace line at {} instructions, {:.1} s wall",
        one.now(),
        started.elapsed().as_secs_f64()
    );
    assert!(one.error.is_none(), "{:?}", one.error);
    let up = line(&one.console, USERSPACE_LINE).expect("init's first line");
    assert_eq!(up, USERSPACE_LINE);
    let text = String::from_utf8_lossy(&one.console);
    assert!(
        text.contains("Run /init as init process"),
        "the kernel ran /init"
    );
    assert_same_run(&mut one, image);
}

/// One checkpoint epoch: 5 ms of guest time.
const EPOCH_NS: u64 = 5_000_000;
/// Epochs the idle-userspace measurement takes.
const IDLE_EPOCHS: usize = 40;
/// Guest time after init's first line before the measurement starts.
const SETTLE_NS: u64 = 200_000_000;

/// The pages dirty per 5 ms epoch of a Linux userspace that waits (init
/// started the ledger service, which waits for datagrams): a figure, not
/// a check; and in each epoch every page whose bytes changed must be
/// among those reported (the dirty log against the memory itself).
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn idle_linux_userspace_dirty_pages_per_epoch() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let started = Instant::now();
    let image = (&kernel[..], Some(&initramfs[..]));
    let mut boot = run_to_userspace(image);
    assert!(boot.error.is_none(), "{:?}", boot.error);
    assert!(line(&boot.console, USERSPACE_LINE).is_some(), "userspace");
    let (up_ns, up_s) = (boot.now(), started.elapsed().as_secs_f64());
    let machine = &mut boot.machine;
    run_on(machine, SETTLE_NS);
    machine.engine_mut().take_dirty_pages().expect("takes");
    let memory_bytes = usize::try_from(MEMORY_BYTES).expect("fits");
    let mut before = vec![0u8; memory_bytes];
    machine
        .engine()
        .read_memory(machine::Gpa(0), &mut before)
        .expect("reads");
    let mut counts = Vec::new();
    for _ in 0..IDLE_EPOCHS {
        run_on(machine, EPOCH_NS);
        let dirty: std::collections::BTreeSet<u32> = machine
            .engine_mut()
            .take_dirty_pages()
            .expect("takes")
            .into_iter()
            .map(|p| p.0)
            .collect();
        let mut after = vec![0u8; memory_bytes];
        machine
            .engine()
            .read_memory(machine::Gpa(0), &mut after)
            .expect("reads");
        let page = machine::PAGE_SIZE as usize;
        for (i, (a, b)) in after.chunks(page).zip(before.chunks(page)).enumerate() {
            let index = u32::try_from(i).expect("fits");
            assert!(
                a == b || dirty.contains(&index),
                "page {i:#x} changed, not reported"
            );
        }
        before = after;
        counts.push(dirty.len());
    }
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    eprintln!(
        "userspace up at {up_ns} instructions, {up_s:.1} s wall; {:?}: dirty pages per {} ms \
         epoch over {IDLE_EPOCHS} epochs: min {} median {} max {} (of {} pages); per epoch \
         {counts:?}",
        dirty_tracking(),
        EPOCH_NS / 1_000_000,
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        MEMORY_BYTES / machine::PAGE_SIZE
    );
}
