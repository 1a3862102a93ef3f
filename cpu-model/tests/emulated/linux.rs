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
// and wall time; LOCKSTEP_LINUX_APIC=1 the local APIC's timer each chunk;
// LOCKSTEP_LINUX_VCPUS=n boots the tests' machine with n vCPUs (default 1;
// the 2-vCPU test always has 2); LOCKSTEP_LINUX_DIRTY=every (or protect)
// runs the boots with DirtyTracking::EveryPage (WriteProtect) instead of
// the dirty log.

use std::time::Instant;

use cpu_model::linux::ImageFile;
use cpu_model::{DirtyTracking, EmuConfig, EmuEngine, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger_load::{check_disk_journal, LedgerConfig, LedgerLoad};
use machine::linux::{linux_bus, load, DEFAULT_CMDLINE, SERVING_LINE};
use machine::{Engine, Instructions, Machine, MachineError, Shape};

/// The kernel decompresses itself to 16 MiB and needs 64 MiB there.
const MEMORY_BYTES: u64 = cpu_model::linux::LINUX_MEMORY_BYTES;
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
/// The line of a kernel that started its application processors.
const SMP_LINE: &str = "smp: Brought up";
/// The lines whose first appearance a run records.
const MARKS: [&str; 3] = [FIRST_LINE, SMP_LINE, USERSPACE_LINE];

/// The number in environment variable `name`, or `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The bytes of `file` (its variable's path or the repository's), or
/// None after saying loudly which script makes them.
fn image_file(file: ImageFile) -> Option<Vec<u8>> {
    match file.read(&file.path(None)) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("==================================================================");
            eprintln!("SKIPPED: {error}.");
            eprintln!("==================================================================");
            None
        }
    }
}

/// The virtio disk's blocks: 1 MiB, blank: the ledger's journal (a
/// journal ends at its first all-zero record).
const DISK_BLOCKS: u64 = 2048;

fn disk() -> MemStore {
    MemStore::new(DISK_BLOCKS)
}

/// The kernel's bytes, or None after saying loudly how to fetch it.
fn kernel() -> Option<Vec<u8>> {
    image_file(ImageFile::Kernel)
}

/// The initramfs's bytes, or None after saying loudly how to build it.
fn initramfs() -> Option<Vec<u8>> {
    image_file(ImageFile::Initramfs)
}

/// The vCPUs of the boot tests' machine: LOCKSTEP_LINUX_VCPUS, default 1.
fn vcpus() -> u16 {
    u16::try_from(env_u64("LOCKSTEP_LINUX_VCPUS", 1)).expect("a vCPU count")
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
    linux_machine_of(vcpus(), kernel, initramfs, seed)
}

/// A machine of `vcpus` vCPUs booting the kernel: the application
/// processors wait for the start-up IPIs the kernel sends them.
fn linux_machine_of(
    vcpus: u16,
    kernel: &[u8],
    initramfs: Option<&[u8]>,
    seed: u64,
) -> Machine<EmuEngine> {
    let shape = Shape::new(vcpus, MEMORY_BYTES).expect("valid");
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
    Machine::new(shape, engine, linux_bus(vcpus, Box::new(disk())))
}

/// A run of the kernel: its console, how far it got, and how it ended.
struct Boot {
    machine: Machine<EmuEngine>,
    console: Vec<u8>,
    /// Guest instructions (guest ns) and wall seconds when `FIRST_LINE`
    /// was first complete on the console.
    first_line: Option<(u64, f64)>,
    /// Guest time (the end of the chunk) and wall seconds at which each
    /// of `MARKS` was first complete on the console.
    marks: Vec<(&'static str, u64, f64)>,
    /// The engine's error, if the run ended in one.
    error: Option<MachineError>,
}

impl Boot {
    fn now(&self) -> u64 {
        self.machine.engine().now().0
    }
}

/// Runs the kernel (with `initramfs`, if any) until `until(console)` or
/// `instructions_max`, on the tests' vCPUs.
fn run(
    image: (&[u8], Option<&[u8]>),
    seed: u64,
    instructions_max: u64,
    until: impl Fn(&[u8]) -> bool,
) -> Boot {
    run_of(vcpus(), image, seed, instructions_max, until)
}

/// [`run`] on a machine of `vcpus` vCPUs.
fn run_of(
    vcpus: u16,
    (kernel, initramfs): (&[u8], Option<&[u8]>),
    seed: u64,
    instructions_max: u64,
    until: impl Fn(&[u8]) -> bool,
) -> Boot {
    let started = Instant::now();
    let mut boot = Boot {
        machine: linux_machine_of(vcpus, kernel, initramfs, seed),
        console: Vec::new(),
        first_line: None,
        marks: Vec::new(),
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
        for mark in MARKS {
            if !boot.marks.iter().any(|m| m.0 == mark) && line(&boot.console, mark).is_some() {
                let at = (mark, boot.now(), started.elapsed().as_secs_f64());
                boot.marks.push(at);
            }
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
    for (mark, at, wall) in &boot.marks {
        eprintln!("{mark:?} by {at} guest ns, {wall:.1} s wall");
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
    assert_same_run(&mut one, (&kernel, None), vcpus(), 5);
}

/// A second run with the same seed to the same instruction: the same
/// console, the same state.
fn assert_same_run(one: &mut Boot, image: (&[u8], Option<&[u8]>), vcpus: u16, seed: u64) {
    let at = one.now();
    let mut two = run_of(vcpus, image, seed, at, |_| false);
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
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn a_checkpoint_taken_mid_boot_restores_in_a_fresh_machine_to_the_same_state() {
    // With the initramfs: after the checkpoint the kernel goes on to run
    // init, which prints (without one it waits for a root device, and
    // says nothing in the instructions the test runs).
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let at = env_u64("LOCKSTEP_LINUX_CHECKPOINT_AT", MID_BOOT);
    let started = Instant::now();
    let mut original = run((&kernel, Some(&initramfs)), 5, at, |_| false);
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

    let mut fresh = linux_machine(&kernel, Some(&initramfs), 5);
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
    assert_same_run(&mut one, image, vcpus(), 5);
}

/// Two vCPUs: the kernel starts its application processor with INIT and
/// start-up IPIs (its real-mode trampoline to long mode on the emulated
/// engine), says so, and runs the initramfs's /init; the same seed gives
/// the same console and state at the same instruction; another seed
/// interleaves the vCPUs differently and still reaches userspace.
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn debians_kernel_brings_up_two_cpus_and_runs_init_deterministically_under_any_seed() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let image = (&kernel[..], Some(&initramfs[..]));
    let boot = |seed: u64| {
        let started = Instant::now();
        let mut boot = run_of(2, image, seed, USERSPACE_INSTRUCTIONS_MAX, |c| {
            line(c, USERSPACE_LINE).is_some()
        });
        eprintln!("==== seed {seed}, 2 vCPUs ====");
        report(&mut boot, started.elapsed().as_secs_f64());
        assert!(boot.error.is_none(), "{:?}", boot.error);
        let smp = line(&boot.console, SMP_LINE).expect("the kernel brought its CPUs up");
        assert_eq!(smp, "smp: Brought up 1 node, 2 CPUs");
        assert_eq!(
            line(&boot.console, USERSPACE_LINE).as_deref(),
            Some(USERSPACE_LINE)
        );
        boot
    };
    let mut seven = boot(7);
    let mut eight = boot(8);
    let (hash_seven, hash_eight) = (
        seven.machine.state_hash().expect("hash"),
        eight.machine.state_hash().expect("hash"),
    );
    let (stats_seven, stats_eight) = (
        seven.machine.engine().stats(),
        eight.machine.engine().stats(),
    );
    eprintln!(
        "seed 7: {stats_seven:?}, marks {:?}, hash {hash_seven:?}",
        seven.marks
    );
    eprintln!(
        "seed 8: {stats_eight:?}, marks {:?}, hash {hash_eight:?}",
        eight.marks
    );
    assert_ne!(
        (stats_seven, hash_seven),
        (stats_eight, hash_eight),
        "another seed, another interleaving"
    );
    assert_same_run(&mut seven, image, 2, 7);
}

/// How long the idle guest takes per guest second once in userspace (the
/// ledger service waits for datagrams; every vCPU in its idle loop):
/// boots to init's first line, then runs LOCKSTEP_LINUX_IDLE_NS (default
/// 1 s) of guest time and reports the wall time, the instructions
/// executed and the vCPU switches of that stretch.
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; a measurement, not a check"]
fn what_an_idle_linux_guest_costs_per_guest_second() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let image = (&kernel[..], Some(&initramfs[..]));
    let mut boot = run(image, 7, USERSPACE_INSTRUCTIONS_MAX, |c| {
        line(c, USERSPACE_LINE).is_some()
    });
    assert!(boot.error.is_none(), "{:?}", boot.error);
    // The service's own first line, then quiet.
    run_on(&mut boot.machine, 200_000_000);
    let idle_ns = env_u64("LOCKSTEP_LINUX_IDLE_NS", 1_000_000_000);
    let before = boot.machine.engine().stats();
    let started = Instant::now();
    let console = run_on(&mut boot.machine, idle_ns);
    let wall_s = started.elapsed().as_secs_f64();
    let after = boot.machine.engine().stats();
    eprintln!(
        "{} vCPUs idle for {idle_ns} guest ns: {wall_s:.2} s wall, {} instructions, {} vCPU switches, {} console bytes",
        vcpus(),
        after.instructions.0 - before.instructions.0,
        after.vcpu_switches - before.vcpu_switches,
        console.len()
    );
}

/// Requests the serving test sends: each id answered once, some sent
/// twice on purpose (the load's repeats), and any unanswered for
/// [`RETRY_NS`] sent again.
const REQUESTS: u64 = 300;
/// Guest time per load step (1 ms): how long a reply may wait in the
/// NIC's queue before the load takes it.
const SERVE_SLICE: u64 = 1_000_000;
/// A request unanswered for this long goes again (50 ms of guest time).
const RETRY_NS: u64 = 50_000_000;
/// How far the serving goes past the userspace line before it gives up.
const SERVE_INSTRUCTIONS_MAX: u64 = 20_000_000_000;

/// A load served by the Linux guest from init's first line on.
struct Served {
    boot: Boot,
    load: LedgerLoad,
    /// Guest time (ns) and wall seconds from init's first line to the
    /// last reply.
    guest_ns: u64,
    executed: u64,
    wall_s: f64,
}

/// Boots to init's first line with `seed`, then serves `requests` through
/// the machine's client link, one [`SERVE_SLICE`] per step.
fn boot_and_serve(image: (&[u8], Option<&[u8]>), seed: u64, requests: u64) -> Served {
    let mut boot = run(image, seed, USERSPACE_INSTRUCTIONS_MAX, |c| {
        line(c, USERSPACE_LINE).is_some()
    });
    assert!(boot.error.is_none(), "{:?}", boot.error);
    assert!(
        line(&boot.console, USERSPACE_LINE).is_some(),
        "init's first line"
    );
    let config = LedgerConfig::with_requests(requests);
    let mut load = LedgerLoad::new(config, seed).with_retries(RETRY_NS);
    let (from_ns, from_executed) = (boot.now(), boot.machine.engine().stats().instructions.0);
    let started = Instant::now();
    while !load.done() && boot.now() - from_ns < SERVE_INSTRUCTIONS_MAX {
        load.step(&mut boot.machine, Instructions(SERVE_SLICE))
            .expect("the guest runs");
        boot.console.extend(boot.machine.bus().console.take());
    }
    Served {
        guest_ns: boot.now() - from_ns,
        executed: boot.machine.engine().stats().instructions.0 - from_executed,
        wall_s: started.elapsed().as_secs_f64(),
        boot,
        load,
    }
}

/// The Linux guest serves the ledger over UDP on its virtio NIC: init
/// brings eth0 up at its static address, the ledger binds its port on
/// the blank virtio disk, the host's side of the link answers the
/// guest's ARP and carries the load's requests in and its replies out.
/// Every request is answered, the replies agree with the journal on the
/// disk and the money adds up; a second run with the same seed gives the
/// same console, replies and state.
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn the_linux_guest_serves_the_ledger_over_udp_deterministically() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let image = (&kernel[..], Some(&initramfs[..]));
    let started = Instant::now();
    let mut one = boot_and_serve(image, 5, REQUESTS);
    report(&mut one.boot, started.elapsed().as_secs_f64());
    let counts = one.boot.machine.bus().link_counts().clone();
    eprintln!(
        "served {} of {REQUESTS} requests ({} sent again) in {} ns of guest time, \
         {} instructions executed, {:.1} s wall: per request {} ns, {} instructions, {:.1} ms wall",
        one.load.served(),
        one.load.resent(),
        one.guest_ns,
        one.executed,
        one.wall_s,
        one.guest_ns / REQUESTS,
        one.executed / REQUESTS,
        one.wall_s * 1e3 / REQUESTS as f64
    );
    eprintln!("client link: {counts:?}");
    assert!(one.load.done(), "every request answered");
    let text = String::from_utf8_lossy(&one.boot.console).to_string();
    assert!(
        text.contains("lockstep-guest: eth0 up at 10.7.0.2/24"),
        "init brought eth0 up"
    );
    assert!(
        line(&one.boot.console, SERVING_LINE).is_some(),
        "the ledger serves"
    );
    assert!(
        counts.arp_answered >= 1,
        "the guest resolved the host by ARP"
    );
    let ledger = check_disk_journal(&mut one.boot.machine, &one.load)
        .expect("the disk reads")
        .unwrap_or_else(|violations| panic!("{violations:#?}"));
    eprintln!("ledger: {ledger:?}");
    assert_eq!(ledger.journal_records, REQUESTS, "each id journaled once");
    assert!(ledger.applied > 0 && ledger.refused > 0, "{ledger:?}");

    let mut two = boot_and_serve(image, 5, REQUESTS);
    assert_eq!(
        String::from_utf8_lossy(&two.boot.console),
        String::from_utf8_lossy(&one.boot.console)
    );
    assert_eq!(two.load.replies(), one.load.replies());
    assert_eq!(two.boot.now(), one.boot.now());
    assert_eq!(
        two.boot.machine.state_hash().expect("hash"),
        one.boot.machine.state_hash().expect("hash")
    );
    eprintln!(
        "second run: the same console, replies and state; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// A checkpoint through its bytes, as a peer or a cache holds it.
fn through_bytes(machine: &mut Machine<EmuEngine>) -> machine::Checkpoint {
    let bytes = machine
        .checkpoint(machine::Kind::Full)
        .expect("checkpoint")
        .encode();
    machine::Checkpoint::decode(&bytes, machine::CHECKPOINT_BYTES_MAX).expect("decodes")
}

/// Steps `load` on `machine` until `until(load)`, collecting the console.
fn serve_until(
    machine: &mut Machine<EmuEngine>,
    load: &mut LedgerLoad,
    until: impl Fn(&LedgerLoad) -> bool,
) -> Vec<u8> {
    let mut console = Vec::new();
    let end = machine.engine().now().0 + SERVE_INSTRUCTIONS_MAX;
    while !until(load) {
        assert!(machine.engine().now().0 < end, "served {}", load.served());
        load.step(machine, Instructions(SERVE_SLICE))
            .expect("the guest runs");
        console.extend(machine.bus().console.take());
    }
    console
}

/// The boot-once cache and a checkpoint taken while serving: the machine
/// booted to the ledger's serving line is checkpointed, and a fresh
/// machine restored from it serves the load to the same end as the
/// machine that booted (the same replies, console and state hash); a
/// checkpoint taken on the restored machine halfway through the load,
/// restored into another fresh machine with the load as it stood, ends
/// there too.
#[test]
#[ignore = "needs fetch-kernel.sh's kernel and build-initramfs.sh's initramfs; minutes of emulation"]
fn a_checkpoint_of_the_serving_ledger_restores_in_a_fresh_machine_to_the_same_end() {
    let (Some(kernel), Some(initramfs)) = (kernel(), initramfs()) else {
        return;
    };
    let started = Instant::now();
    let image = (&kernel[..], Some(&initramfs[..]));
    let mut booted = run(image, 5, USERSPACE_INSTRUCTIONS_MAX, |c| {
        line(c, SERVING_LINE).is_some()
    });
    assert!(booted.error.is_none(), "{:?}", booted.error);
    let serving_at = booted.now();
    let cached = through_bytes(&mut booted.machine);
    eprintln!(
        "booted to the serving line at {serving_at} instructions, {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let config = LedgerConfig::with_requests(REQUESTS);
    let fresh_load = || LedgerLoad::new(config, 5).with_retries(RETRY_NS);
    let mut uninterrupted = fresh_load();
    let console_booted = serve_until(&mut booted.machine, &mut uninterrupted, LedgerLoad::done);

    let mut restored = linux_machine(&kernel, Some(&initramfs), 5);
    restored.restore(&cached).expect("restores");
    assert_eq!(restored.engine().now().0, serving_at);
    let mut load = fresh_load();
    let mut console_restored =
        serve_until(&mut restored, &mut load, |l| l.served() >= REQUESTS / 2);
    let serving = through_bytes(&mut restored);
    let load_at_checkpoint = load.clone();
    let checkpoint_at = restored.engine().now().0;
    console_restored.extend(serve_until(&mut restored, &mut load, LedgerLoad::done));
    eprintln!(
        "served from the cache, checkpointed at {checkpoint_at} ({} served), {:.1} s",
        load_at_checkpoint.served(),
        started.elapsed().as_secs_f64()
    );

    let mut resumed = linux_machine(&kernel, Some(&initramfs), 5);
    resumed.restore(&serving).expect("restores");
    let mut resumed_load = load_at_checkpoint;
    let console_resumed = serve_until(&mut resumed, &mut resumed_load, LedgerLoad::done);

    assert!(uninterrupted.done() && load.done() && resumed_load.done());
    assert_eq!(load.replies(), uninterrupted.replies());
    assert_eq!(resumed_load.replies(), uninterrupted.replies());
    assert_eq!(console_restored, console_booted);
    let after_checkpoint = &console_restored[console_restored.len() - console_resumed.len()..];
    assert_eq!(console_resumed, after_checkpoint);
    let hash = booted.machine.state_hash().expect("hash");
    assert_eq!(restored.state_hash().expect("hash"), hash);
    assert_eq!(resumed.state_hash().expect("hash"), hash);
    let ledger = check_disk_journal(&mut resumed, &resumed_load)
        .expect("the disk reads")
        .unwrap_or_else(|violations| panic!("{violations:#?}"));
    assert_eq!(ledger.journal_records, REQUESTS);
    eprintln!(
        "the same replies, console and state hash {hash:016x} three ways; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
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
