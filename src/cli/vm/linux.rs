//! `lockstep vm run --guest linux`: Debian's unmodified kernel with the
//! busybox initramfs and the C ledger service (guest-linux/) on the
//! emulated engine's PC platform. It boots to the ledger's serving line,
//! serves the load through the machine's client link (UDP on the virtio
//! NIC, [`machine::linux::net`]) and judges the replies by the journal on
//! the virtio disk.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use cpu_model::{DirtyTracking, EmuConfig, EmuEngine, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger::TABLE_ENTRIES;
use machine::guests::ledger_load::{check_disk_journal, LedgerConfig, LedgerLoad};
use machine::linux::{linux_bus, load, DEFAULT_CMDLINE, INITRAMFS_PATH, KERNEL_PATH, SERVING_LINE};
use machine::{Engine, Instructions, Machine, Shape};

/// Guest instructions per boot step, between looks at the console.
const BOOT_CHUNK: u64 = 20_000_000;
/// How far the boot goes before it is declared stuck (the ledger serves
/// by about 5.3 G).
const BOOT_INSTRUCTIONS_MAX: u64 = 20_000_000_000;
/// Guest time per load step (1 ms): the longest a reply waits in the
/// NIC's queue for the load to take it.
const SERVE_SLICE: Instructions = Instructions(1_000_000);
/// A request unanswered for this long (guest time) goes again: one sent
/// while the guest resolved the host's address, or lost otherwise.
const RETRY_NS: u64 = 50_000_000;
/// How long the serving may take in guest time before it is declared
/// stuck (1000 s).
const SERVE_NS_MAX: u64 = 1_000_000_000_000;
/// The virtio disk: 2 MiB, blank, room for every record the ledger can
/// journal (one per request id below [`TABLE_ENTRIES`], 16 a block).
const DISK_BLOCKS: u64 = 4096;
/// The guest memory the kernel needs (it decompresses to 16 MiB and
/// needs 64 MiB there), unless told otherwise.
pub(super) const MEMORY_MIB_DEFAULT: u64 = 256;
/// Console lines the report shows.
const CONSOLE_TAIL_LINES: usize = 12;

const _: () = assert!(DISK_BLOCKS * 16 >= TABLE_ENTRIES - 1);

/// What `--guest linux` is told.
#[derive(Debug)]
pub(super) struct LinuxRun {
    pub vcpus: u16,
    pub seed: u64,
    pub requests: u64,
    pub memory_mib: u64,
    pub kernel: Option<PathBuf>,
    pub initramfs: Option<PathBuf>,
}

/// A guest file: the flag's path, else the environment variable's (the
/// boot tests' own), else the repository's `default`; missing, an error
/// that names the script making it.
/// The file a flag, its variable, the repository's default and the
/// script that makes it name.
struct GuestFile<'a> {
    what: &'a str,
    flag: &'a str,
    variable: &'a str,
    default: &'a str,
    script: &'a str,
}

fn guest_file(given: Option<&Path>, file: &GuestFile<'_>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let GuestFile {
        what,
        flag,
        variable,
        default,
        script,
    } = file;
    let path = given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(variable).map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default));
    match std::fs::read(&path) {
        Ok(bytes) => Ok((path, bytes)),
        Err(error) => bail!(
            "no {what} at {} ({error}): run guest-linux/{script}, or name one with {flag} \
             or {variable}",
            path.display()
        ),
    }
}

/// The Linux machine on the emulated engine, booted from `kernel` and
/// `initramfs` with `seed`.
fn boot(run: &LinuxRun, kernel: &[u8], initramfs: &[u8]) -> anyhow::Result<Machine<EmuEngine>> {
    let shape = Shape::new(run.vcpus, run.memory_mib << 20)?;
    let image = load(&shape, kernel, DEFAULT_CMDLINE, Some(initramfs))?;
    let config = EmuConfig {
        seed: run.seed,
        quantum: Quantum::default(),
    };
    let mut engine = EmuEngine::boot(shape, &image.memory, image.vcpu_states, config)?;
    // The kernel writes most of its memory once while it decompresses,
    // and this run takes no checkpoint.
    engine.set_dirty_tracking(DirtyTracking::EveryPage)?;
    let bus = linux_bus(run.vcpus, Box::new(MemStore::new(DISK_BLOCKS)));
    Ok(Machine::new(shape, engine, bus))
}

/// Runs the boot until the ledger's serving line is on the console:
/// when (guest ns) and how long (wall seconds) it took.
fn boot_to_serving(
    machine: &mut Machine<EmuEngine>,
    console: &mut Vec<u8>,
) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    while !String::from_utf8_lossy(console).contains(SERVING_LINE) {
        let now = machine.engine().now().0;
        if now >= BOOT_INSTRUCTIONS_MAX {
            print_console_tail(console);
            bail!("no '{SERVING_LINE}' on the console by {now} instructions");
        }
        machine.run(Instructions(BOOT_CHUNK))?;
        console.extend(machine.bus().console.take());
    }
    Ok((machine.engine().now().0, started.elapsed().as_secs_f64()))
}

fn print_console_tail(console: &[u8]) {
    let text = String::from_utf8_lossy(console);
    let lines: Vec<&str> = text.lines().collect();
    println!(
        "console (last {CONSOLE_TAIL_LINES} of {} lines):",
        lines.len()
    );
    for line in &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..] {
        println!("  | {line}");
    }
}

const KERNEL: GuestFile<'static> = GuestFile {
    what: "Linux kernel",
    flag: "--kernel",
    variable: "LOCKSTEP_LINUX_KERNEL",
    default: KERNEL_PATH,
    script: "fetch-kernel.sh",
};
const INITRAMFS: GuestFile<'static> = GuestFile {
    what: "initramfs",
    flag: "--initramfs",
    variable: "LOCKSTEP_LINUX_INITRAMFS",
    default: INITRAMFS_PATH,
    script: "build-initramfs.sh",
};

/// Boots the Linux guest, serves `run.requests` and reports.
pub(super) fn run_linux(run: &LinuxRun) -> anyhow::Result<ExitCode> {
    if run.requests >= TABLE_ENTRIES {
        bail!("at most {} requests", TABLE_ENTRIES - 1);
    }
    let (kernel_path, kernel) = guest_file(run.kernel.as_deref(), &KERNEL)?;
    let (initramfs_path, initramfs) = guest_file(run.initramfs.as_deref(), &INITRAMFS)?;
    println!("kernel:             {}", kernel_path.display());
    println!("initramfs:          {}", initramfs_path.display());
    let started = Instant::now();
    let mut machine = boot(run, &kernel, &initramfs)?;
    let mut console = Vec::new();
    let (serving_ns, boot_s) = boot_to_serving(&mut machine, &mut console)?;
    println!("ledger serving at:  {serving_ns} guest instructions, {boot_s:.1} s");

    let mut config = LedgerConfig::with_requests(run.requests);
    config.window = 64;
    let mut load = LedgerLoad::new(config, run.seed).with_retries(RETRY_NS);
    let serve_started = Instant::now();
    let executed_before = machine.engine().stats().instructions.0;
    while !load.done() {
        if machine.engine().now().0 - serving_ns > SERVE_NS_MAX {
            print_console_tail(&console);
            bail!("the ledger stalled after {} replies", load.served());
        }
        load.step(&mut machine, SERVE_SLICE)?;
        console.extend(machine.bus().console.take());
    }
    let serve_s = serve_started.elapsed().as_secs_f64();
    let serve_ns = machine.engine().now().0 - serving_ns;
    let executed = machine.engine().stats().instructions.0 - executed_before;
    print_console_tail(&console);
    println!(
        "requests served:    {} ({} sent again for want of an answer)",
        load.served(),
        load.resent()
    );
    let per_request = |total: u64| total / load.served().max(1);
    println!(
        "serving:            {serve_ns} ns guest time, {executed} instructions executed, \
         {serve_s:.1} s; per request {} ns, {} instructions, {:.2} ms",
        per_request(serve_ns),
        per_request(executed),
        serve_s * 1e3 / load.served().max(1) as f64
    );
    println!("client link:        {:?}", machine.bus().link_counts());
    let ok = super::print_ledger_check(&check_disk_journal(&mut machine, &load)?);
    super::report(&mut machine, ok, started, None)
}
