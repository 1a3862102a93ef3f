//! The KVM engine on the command line: the constructor `vm run --engine
//! kvm` uses, and `lockstep bench kvm`: guest throughput on KVM against
//! the emulated engine (same guest, same process), and the checkpoint
//! pause against dirty pages and vCPUs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::{IoContext, MemStore, PORT_DOORBELL};
use machine::guests::ledger_load::{LedgerConfig, LedgerLoad};
use machine::guests::{compute, Guest, GuestImage};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Engine, Instructions, Kind, Machine, RunExit, Shape, VcpuId};
use runtime::kvm::{kvm_machine, KvmEngine};

/// A machine on KVM with a disk of `blocks` blocks in memory: what
/// `vm run --engine kvm` boots. Fails with a one-line reason when KVM is
/// not usable.
pub fn boot_kvm(
    shape: Shape,
    image: &GuestImage,
    blocks: u64,
) -> anyhow::Result<Machine<KvmEngine>> {
    Ok(kvm_machine(shape, image, Box::new(MemStore::new(blocks)))?)
}

#[derive(Debug, clap::Args)]
pub struct KvmBenchArgs {
    /// Loop iterations of the compute guest per vCPU (7 instructions each).
    #[arg(long, default_value_t = 200_000)]
    iterations: u64,
    /// vCPU counts of the compute throughput comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    throughput_vcpus: Vec<u16>,
    /// Ledger requests for the throughput comparison.
    #[arg(long, default_value_t = 300)]
    requests: u64,
    /// Dirty page counts to measure the checkpoint pause at.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    dirty_pages: Vec<u64>,
    /// vCPU counts to measure the checkpoint pause at.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    vcpus: Vec<u16>,
    /// Checkpoints per table cell; the median is printed.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
}

/// Guest time per run call while a guest works to idle.
const SLICE: Instructions = Instructions(20_000_000);
/// Most run calls before a guest must be idle.
const RUNS_MAX: u32 = 10_000;
/// Guest memory of the checkpoint measurements: room for 10 000 dirty
/// pages beyond the guest's code.
const BENCH_MEMORY_BYTES: u64 = 64 << 20;

pub fn bench(args: KvmBenchArgs) -> anyhow::Result<ExitCode> {
    runtime::kvm::open_kvm()?;
    for &vcpus in &args.throughput_vcpus {
        throughput_compute(vcpus, args.iterations)?;
    }
    throughput_ledger(args.requests)?;
    println!();
    println!(
        "checkpoint pause, median of {} rounds. capture: Machine::checkpoint(Delta) of the paused",
        args.rounds
    );
    println!("guest (dirty log, page copies, vCPU state, devices); log: the dirty log alone;");
    println!(
        "stop: first kick to every vCPU out of the guest (busy guest); pause: stop + capture."
    );
    println!(
        "{:>5}  {:>11}  {:>10}  {:>10}  {:>9}  {:>8}  {:>9}",
        "vCPUs", "dirty pages", "capture µs", "of it log", "delta KiB", "stop µs", "pause µs"
    );
    for &vcpus in &args.vcpus {
        for &dirty in &args.dirty_pages {
            capture_row(vcpus, dirty, args.rounds)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_to_idle<E: Engine>(machine: &mut Machine<E>) -> anyhow::Result<()> {
    for _ in 0..RUNS_MAX {
        if machine.run(SLICE)? == RunExit::Idle {
            return Ok(());
        }
    }
    anyhow::bail!("guest not idle after {RUNS_MAX} runs")
}

fn throughput_compute(vcpus: u16, iterations: u64) -> anyhow::Result<()> {
    let image = Guest::Compute.image([iterations, 0, 0, 0, 0, 0, 0, 0])?;
    let shape = Shape::new(vcpus, MEMORY_BYTES_MIN)?;
    let config = EmuConfig {
        seed: 1,
        quantum: Quantum::default(),
    };
    let mut emu = emulated_machine(shape, &image, config, Box::new(MemStore::new(1)))?;
    let started = Instant::now();
    run_to_idle(&mut emu)?;
    let emu_s = started.elapsed().as_secs_f64();
    let mut kvm = boot_kvm(shape, &image, 1)?;
    let started = Instant::now();
    run_to_idle(&mut kvm)?;
    let kvm_s = started.elapsed().as_secs_f64();
    for v in 0..vcpus {
        let expected = Some(compute::expected(v, iterations) as u32);
        let i = usize::from(v);
        ensure!(
            kvm.bus().done()[i] == expected,
            "KVM vCPU {v} computed a wrong result"
        );
        ensure!(
            emu.bus().done()[i] == expected,
            "emulated vCPU {v} computed a wrong result"
        );
    }
    let instructions = (u64::from(vcpus) * iterations * compute::INSTRUCTIONS_PER_ITERATION) as f64;
    println!(
        "compute, {vcpus} vCPU(s), {iterations} iterations each ({instructions} instructions), to the results:"
    );
    println!(
        "  emulated: {:8.3} s  {:9.2} MIPS",
        emu_s,
        instructions / emu_s / 1e6
    );
    println!(
        "  KVM:      {:8.3} s  {:9.2} MIPS",
        kvm_s,
        instructions / kvm_s / 1e6
    );
    println!("  KVM / emulated throughput: {:.3}", emu_s / kvm_s);
    Ok(())
}

fn serve<E: Engine>(machine: &mut Machine<E>, load: &mut LedgerLoad) -> anyhow::Result<()> {
    for _ in 0..RUNS_MAX {
        if load.done() {
            return Ok(());
        }
        load.feed(machine.bus());
        run_to_idle(machine)?;
        load.drain(machine.bus());
    }
    anyhow::bail!("ledger load not served")
}

fn throughput_ledger(requests: u64) -> anyhow::Result<()> {
    let config = LedgerConfig::with_requests(requests);
    let image = Guest::Ledger.image(config.params())?;
    let shape = Shape::new(1, MEMORY_BYTES_MIN)?;
    let blocks = requests / 16 + 16;
    let emu_config = EmuConfig {
        seed: 1,
        quantum: Quantum::default(),
    };
    let mut emu = emulated_machine(shape, &image, emu_config, Box::new(MemStore::new(blocks)))?;
    let mut load = LedgerLoad::new(config, 1);
    let started = Instant::now();
    serve(&mut emu, &mut load)?;
    let emu_s = started.elapsed().as_secs_f64();
    let mut kvm = boot_kvm(shape, &image, blocks)?;
    let mut load = LedgerLoad::new(config, 1);
    let started = Instant::now();
    serve(&mut kvm, &mut load)?;
    let kvm_s = started.elapsed().as_secs_f64();
    let stats = kvm.engine().kvm_stats();
    println!("ledger, 1 vCPU, {requests} requests, to the last reply:");
    println!(
        "  emulated: {:8.3} s  {:9.0} requests/s",
        emu_s,
        requests as f64 / emu_s
    );
    println!(
        "  KVM:      {:8.3} s  {:9.0} requests/s  ({} port exits, {:.1} µs each)",
        kvm_s,
        requests as f64 / kvm_s,
        stats.io_exits,
        kvm_s * 1e6 / stats.io_exits.max(1) as f64
    );
    println!("  KVM / emulated throughput: {:.3}", emu_s / kvm_s);
    Ok(())
}

/// Rings every vCPU's doorbell: the dirtier writes its pages once more.
fn dirty_round(machine: &mut Machine<KvmEngine>, vcpus: u16) -> anyhow::Result<()> {
    let ctx = IoContext {
        vcpu: VcpuId(0),
        now: machine.engine().now(),
    };
    machine
        .bus()
        .port_out(ctx, PORT_DOORBELL, 4, (1u32 << vcpus) - 1);
    run_to_idle(machine)
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// One row: the dirtier on `vcpus` vCPUs writes `dirty` pages in all
/// (spread over the vCPUs) per round, woken by the doorbell; each round
/// ends idle and takes a delta checkpoint (or, in between, only reads
/// and clears the dirty log, to show its share).
fn capture_row(vcpus: u16, dirty: u64, rounds: u32) -> anyhow::Result<()> {
    let per_vcpu = dirty.div_ceil(u64::from(vcpus));
    let pages = per_vcpu * u64::from(vcpus);
    // A period longer than any round: only the doorbell wakes the guest.
    let period_ns = u64::from(u32::MAX);
    let image = Guest::Dirtier.image([per_vcpu, per_vcpu, period_ns, 0, 0, 0, 0, 0])?;
    let shape = Shape::new(vcpus, BENCH_MEMORY_BYTES)?;
    let mut machine = boot_kvm(shape, &image, 1)?;
    run_to_idle(&mut machine)?;
    machine.checkpoint(Kind::Full)?;
    let (mut captures, mut logs, mut size) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        dirty_round(&mut machine, vcpus)?;
        let started = Instant::now();
        let delta = machine.checkpoint(Kind::Delta)?;
        captures.push(started.elapsed());
        let got = delta.pages.len() as u64;
        ensure!(got == pages, "delta has {got} pages, expected {pages}");
        size = delta.encode().len();
        dirty_round(&mut machine, vcpus)?;
        let started = Instant::now();
        let logged = machine.engine_mut().take_dirty_pages()?.len() as u64;
        logs.push(started.elapsed());
        ensure!(
            logged == pages,
            "dirty log has {logged} pages, expected {pages}"
        );
    }
    let stop = stop_latency(vcpus, rounds).context("stop latency")?;
    let capture_us = median(captures);
    let stop_us = stop.as_secs_f64() * 1e6;
    println!(
        "{:>5}  {:>11}  {:>10.0}  {:>10.0}  {:>9}  {:>8.0}  {:>9.0}",
        vcpus,
        pages,
        capture_us,
        median(logs),
        size / 1024,
        stop_us,
        capture_us + stop_us
    );
    Ok(())
}

/// Median time to stop `vcpus` busy vCPUs (compute guest) at a budget's
/// end: first kick to all out of the guest. A run that a slow stop
/// already paid for (its budget spent before it began) is not counted.
fn stop_latency(vcpus: u16, rounds: u32) -> anyhow::Result<Duration> {
    let image = Guest::Compute.image([0; 8])?;
    let shape = Shape::new(vcpus, MEMORY_BYTES_MIN)?;
    let mut machine = boot_kvm(shape, &image, 1)?;
    let mut stops = Vec::new();
    for _ in 0..rounds * 20 {
        machine.run(Instructions(2_000_000))?;
        let stop_ns = machine.engine().kvm_stats().stop_ns_last;
        if stop_ns > 0 {
            stops.push(stop_ns);
        }
        if stops.len() == rounds as usize {
            break;
        }
    }
    ensure!(!stops.is_empty(), "no run entered the guest");
    stops.sort_unstable();
    Ok(Duration::from_nanos(stops[stops.len() / 2]))
}
