//! `lockstep vm run --guest linux`: Debian's unmodified kernel with the
//! busybox initramfs and the C ledger service (guest-linux/) on the
//! emulated engine's PC platform. It boots to the ledger's serving line,
//! serves the load through the machine's client link (UDP on the virtio
//! NIC, [`machine::linux::net`]) and judges the replies by the journal on
//! the virtio disk.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use cpu_model::linux::{run_to_serving, ImageFile, LinuxGuest};
use machine::devices::MemStore;
use machine::guests::ledger::TABLE_ENTRIES;
use machine::guests::ledger_load::{check_disk_journal, LedgerConfig, LedgerLoad};
use machine::linux::DEFAULT_CMDLINE;
use machine::{Engine, Instructions};

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
pub(super) const MEMORY_MIB_DEFAULT: u64 = cpu_model::linux::LINUX_MEMORY_BYTES >> 20;
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

/// Boots the Linux guest, serves `run.requests` and reports.
pub(super) fn run_linux(run: &LinuxRun) -> anyhow::Result<ExitCode> {
    if run.requests >= TABLE_ENTRIES {
        bail!("at most {} requests", TABLE_ENTRIES - 1);
    }
    let kernel_path = ImageFile::Kernel.path(run.kernel.as_deref());
    let initramfs_path = ImageFile::Initramfs.path(run.initramfs.as_deref());
    println!("kernel:             {}", kernel_path.display());
    println!("initramfs:          {}", initramfs_path.display());
    let guest = LinuxGuest::read(&kernel_path, &initramfs_path, DEFAULT_CMDLINE)?
        .with_memory(run.memory_mib << 20);
    let started = Instant::now();
    // The simulator's machine: the same platform, devices and dirty log.
    let mut machine = guest.machine(run.vcpus, run.seed, Box::new(MemStore::new(DISK_BLOCKS)))?;
    let mut console = Vec::new();
    run_to_serving(&mut machine, &mut console)?;
    let serving_ns = machine.engine().now().0;
    println!(
        "ledger serving at:  {serving_ns} guest instructions, {:.1} s",
        started.elapsed().as_secs_f64()
    );

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
