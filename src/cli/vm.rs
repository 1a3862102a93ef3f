//! `lockstep vm run`: one guest on one machine, with a built-in load
//! generator on its NIC, and a report of what the guest did.

mod linux;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger_load::{check, LedgerConfig, LedgerLoad, LedgerProblem, LedgerReport};
use machine::guests::{compute, dirtier, Guest};
use machine::{Engine, Gpa, Instructions, Kind, Machine, RunExit, Shape};

/// Guest time per load-generator step on the emulated engine.
const SLICE_EMU: Instructions = Instructions(20_000);
/// On KVM every step stops the vCPUs (a signal and a VM exit each): steps
/// of a millisecond keep that overhead small.
const SLICE_KVM: Instructions = Instructions(1_000_000);
/// Most steps before a run is declared stuck.
const STEPS_MAX: u64 = 10_000_000;

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VmCommand {
    /// Run a guest standalone and report on it.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineKind {
    /// The emulated engine (cpu-model).
    Emu,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The engine that runs the guest.
    #[arg(long, value_enum, default_value = "emu")]
    engine: EngineKind,
    /// ledger, echo, compute, dirtier, or linux (Debian's kernel with the
    /// ledger service in C, on the emulated engine).
    #[arg(long, default_value = "ledger")]
    guest: String,
    /// Number of vCPUs (1 to 8).
    #[arg(long, default_value_t = 4)]
    vcpus: u16,
    /// Seed of the scheduler, rdrand and the load generator.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Requests to serve (ledger) or packets to echo (echo).
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Guest memory in MiB (default 4; 256 for linux).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// The linux guest's kernel, a bzImage (default: $LOCKSTEP_LINUX_KERNEL,
    /// else guest-linux/fetch-kernel.sh's).
    #[arg(long)]
    kernel: Option<std::path::PathBuf>,
    /// The linux guest's initramfs (default: $LOCKSTEP_LINUX_INITRAMFS,
    /// else guest-linux/build-initramfs.sh's).
    #[arg(long)]
    initramfs: Option<std::path::PathBuf>,
    /// Loop iterations per vCPU (compute).
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// Pages written per millisecond per vCPU (dirtier).
    #[arg(long, default_value_t = 64)]
    pages_per_ms: u64,
    /// Milliseconds of guest time to run (dirtier).
    #[arg(long, default_value_t = 20)]
    duration_ms: u64,
}

/// Guest memory of the assembled guests unless told, in MiB.
const MEMORY_MIB_DEFAULT: u64 = 4;

pub fn run(args: VmArgs) -> anyhow::Result<ExitCode> {
    let VmCommand::Run(args) = args.command;
    if args.guest == "linux" {
        return run_linux(&args);
    }
    let guest: Guest = args.guest.parse()?;
    let memory_mib = args.memory_mib.unwrap_or(MEMORY_MIB_DEFAULT);
    let shape = Shape::new(args.vcpus, memory_mib << 20)?;
    let started = Instant::now();
    match args.engine {
        EngineKind::Emu => {
            let config = EmuConfig {
                seed: args.seed,
                quantum: Quantum::default(),
            };
            let boot = |guest: Guest, params: [u64; 8], blocks: u64| {
                let image = guest.image(params)?;
                Ok(emulated_machine(
                    shape,
                    &image,
                    config,
                    Box::new(MemStore::new(blocks)),
                )?)
            };
            let (mut machine, ok) = run_guest(&args, guest, shape, SLICE_EMU, &boot)?;
            report(&mut machine, ok, started, None)
        }
        EngineKind::Kvm => {
            let boot = |guest: Guest, params: [u64; 8], blocks: u64| {
                super::kvm::boot_kvm(shape, &guest.image(params)?, blocks)
            };
            let (mut machine, ok) = run_guest(&args, guest, shape, SLICE_KVM, &boot)?;
            let kvm = machine.engine().kvm_stats();
            let extra = format!(
                "KVM exits:          {} port I/O, {} hlt, {} kicks (KVM counts no instructions)",
                kvm.io_exits, kvm.halts, kvm.kicks
            );
            report(&mut machine, ok, started, Some(extra))
        }
    }
}

/// `--guest linux`: the emulated engine only (the KVM engine has no PC
/// platform yet, and this machine's KVM cannot run an unmodified kernel).
fn run_linux(args: &RunArgs) -> anyhow::Result<ExitCode> {
    if let EngineKind::Kvm = args.engine {
        bail!("the linux guest runs on the emulated engine (--engine emu) only");
    }
    linux::run_linux(&linux::LinuxRun {
        vcpus: args.vcpus,
        seed: args.seed,
        requests: args.requests,
        memory_mib: args.memory_mib.unwrap_or(linux::MEMORY_MIB_DEFAULT),
        kernel: args.kernel.clone(),
        initramfs: args.initramfs.clone(),
    })
}

type Outcome<E> = (Machine<E>, bool);

/// Boots a guest image on the chosen engine: (guest, boot params, disk blocks).
type Boot<'a, E> = dyn Fn(Guest, [u64; 8], u64) -> anyhow::Result<Machine<E>> + 'a;

fn run_guest<E: Engine>(
    args: &RunArgs,
    guest: Guest,
    shape: Shape,
    slice: Instructions,
    boot: &Boot<'_, E>,
) -> anyhow::Result<Outcome<E>> {
    match guest {
        Guest::Ledger => run_ledger(args, slice, boot),
        Guest::Echo => run_echo(args, slice, boot),
        Guest::Compute => run_compute(args, shape, boot),
        Guest::Dirtier => run_dirtier(args, shape, boot),
    }
}

fn report<E: Engine>(
    machine: &mut Machine<E>,
    ok: bool,
    started: Instant,
    extra: Option<String>,
) -> anyhow::Result<ExitCode> {
    let seconds = started.elapsed().as_secs_f64();
    let stats = machine.engine().stats();
    let counted = stats.instructions.0 > 0;
    if counted {
        println!("guest instructions: {}", stats.instructions.0);
    } else {
        println!("guest instructions: n/a (this engine counts none)");
    }
    println!(
        "guest time:         {:.3} ms",
        machine.engine().now().0 as f64 / 1e6
    );
    println!("host time:          {seconds:.3} s");
    if counted {
        println!(
            "guest MIPS:         {:.1}",
            stats.instructions.0 as f64 / seconds / 1e6
        );
    }
    println!("vCPU switches:      {}", stats.vcpu_switches);
    println!("dirty faults:       {}", stats.dirty_faults);
    if let Some(extra) = extra {
        println!("{extra}");
    }
    println!("machine state hash: {:016x}", machine.state_hash()?);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_ledger<E: Engine>(
    args: &RunArgs,
    slice: Instructions,
    boot: &Boot<'_, E>,
) -> anyhow::Result<Outcome<E>> {
    let mut ledger = LedgerConfig::with_requests(args.requests);
    ledger.window = 64;
    if args.requests >= machine::guests::ledger::TABLE_ENTRIES {
        bail!(
            "at most {} requests",
            machine::guests::ledger::TABLE_ENTRIES - 1
        );
    }
    let blocks = args.requests / machine::guests::ledger::RECORDS_PER_BLOCK + 16;
    let mut machine = boot(Guest::Ledger, ledger.params(), blocks)?;
    let mut load = LedgerLoad::new(ledger, args.seed);
    let mut steps = 0;
    while !load.done() {
        load.step(&mut machine, slice)?;
        steps += 1;
        if steps > STEPS_MAX {
            bail!("ledger stalled after {} replies", load.served());
        }
    }
    println!("requests served:    {}", load.served());
    let checked = check(&mut machine, &load)?;
    if let Ok(report) = &checked {
        println!("lock contended:     {:?} (per vCPU)", report.contended);
    }
    Ok((machine, print_ledger_check(&checked)))
}

/// Prints what the ledger check found; whether the ledger is healthy.
fn print_ledger_check(checked: &Result<LedgerReport, Vec<LedgerProblem>>) -> bool {
    match checked {
        Ok(report) => {
            println!(
                "ledger invariant:   ok (money conserved: {}; {} journal records, {} applied, {} refused; every reply matches the journal)",
                report.total_money, report.journal_records, report.applied, report.refused
            );
            true
        }
        Err(violations) => {
            println!("ledger invariant:   VIOLATED");
            for violation in violations.iter().take(20) {
                println!("  {violation}");
            }
            false
        }
    }
}

fn run_echo<E: Engine>(
    args: &RunArgs,
    slice: Instructions,
    boot: &Boot<'_, E>,
) -> anyhow::Result<Outcome<E>> {
    let mut machine = boot(Guest::Echo, [0; 8], 1)?;
    let mut rng = machine::rng::SplitMix64::new(args.seed);
    let (mut sent, mut matched) = (0u64, 0u64);
    let mut expected = std::collections::BTreeMap::new();
    let mut steps = 0;
    while matched < args.requests {
        while sent < args.requests && machine.bus().nic.rx_len() < 64 {
            let len = rng.range(8, 256) as usize;
            let mut packet: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            packet[..8].copy_from_slice(&sent.to_le_bytes());
            expected.insert(sent, packet.clone());
            machine
                .bus()
                .deliver_client(packet)
                .context("NIC has room")?;
            sent += 1;
        }
        machine.run(slice)?;
        for packet in machine.bus().take_client_output() {
            let id = u64::from_le_bytes(packet[..8].try_into().context("short echo")?);
            if expected.remove(&id).is_some_and(|p| p == packet) {
                matched += 1;
            } else {
                bail!("echo {id} does not match what was sent");
            }
        }
        steps += 1;
        if steps > STEPS_MAX {
            bail!("echo stalled after {matched} packets");
        }
    }
    println!("packets echoed:     {matched} (all byte-identical)");
    Ok((machine, true))
}

fn run_compute<E: Engine>(
    args: &RunArgs,
    shape: Shape,
    boot: &Boot<'_, E>,
) -> anyhow::Result<Outcome<E>> {
    let params = [args.iterations, 0, 0, 0, 0, 0, 0, 0];
    let mut machine = boot(Guest::Compute, params, 1)?;
    let mut steps = 0;
    while machine.run(Instructions(1_000_000))? != RunExit::Idle {
        steps += 1;
        if steps > STEPS_MAX {
            bail!("compute did not finish");
        }
    }
    let mut ok = true;
    for vcpu in 0..shape.vcpus() {
        let mut bytes = [0u8; 8];
        let at = Gpa(compute::RESULTS + 8 * u64::from(vcpu));
        machine.engine().read_memory(at, &mut bytes)?;
        let expected = compute::expected(vcpu, args.iterations.max(1));
        let got = u64::from_le_bytes(bytes);
        ok &= got == expected;
        println!(
            "compute vCPU {vcpu}:      {got:016x} ({})",
            if got == expected { "ok" } else { "WRONG" }
        );
    }
    Ok((machine, ok))
}

fn run_dirtier<E: Engine>(
    args: &RunArgs,
    shape: Shape,
    boot: &Boot<'_, E>,
) -> anyhow::Result<Outcome<E>> {
    let data_pages = (shape.memory_bytes() - machine::layout::GUEST_DATA.0) / machine::PAGE_SIZE;
    let region = (data_pages / u64::from(shape.vcpus())).min(1024);
    let params = [
        args.pages_per_ms,
        region,
        dirtier::PERIOD_NS_DEFAULT,
        0,
        0,
        0,
        0,
        0,
    ];
    let mut machine = boot(Guest::Dirtier, params, 1)?;
    let mut per_ms = Vec::new();
    for _ in 0..args.duration_ms {
        machine.run(Instructions(dirtier::PERIOD_NS_DEFAULT))?;
        per_ms.push(machine.checkpoint(Kind::Delta)?.pages.len());
    }
    println!("dirty pages per ms: {per_ms:?} (checkpoint each ms)");
    Ok((machine, true))
}
