//! `lockstep bench emu`: guest instructions per second through the
//! machine (scheduler, dirty tracking, devices) against raw unicorn
//! running the same `compute` guest in the same process.

use std::process::ExitCode;
use std::time::Instant;

use cpu_model::raw::RawUnicorn;
use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::Guest;
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Engine, Instructions, Shape};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BenchCommand {
    /// The emulated engine against raw unicorn on the compute guest.
    Emu(EmuArgs),
    /// KVM against the emulated engine; the checkpoint pause on KVM.
    Kvm(super::kvm::KvmBenchArgs),
    /// The real-host cluster: ft, ha and unprotected side by side,
    /// failover and re-protection (root: network namespaces).
    Cluster(super::bench_cluster::ClusterBenchArgs),
    /// The emulated engine's dirty tracking modes side by side, in
    /// checkpoint epochs.
    Dirty(super::bench_dirty::DirtyBenchArgs),
}

#[derive(Debug, clap::Args)]
struct EmuArgs {
    /// Guest instructions per measurement (all vCPUs together).
    #[arg(long, default_value_t = 100_000_000)]
    instructions: u64,
    /// vCPU counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    vcpus: Vec<u16>,
    /// Shortest scheduler quantum (instructions).
    #[arg(long, default_value_t = Quantum::default().min)]
    quantum_min: u64,
    /// Longest scheduler quantum (instructions).
    #[arg(long, default_value_t = Quantum::default().max)]
    quantum_max: u64,
    /// Scheduler seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Guest time per `Machine::run` call.
const RUN_SLICE: u64 = 10_000_000;

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let args = match args.command {
        BenchCommand::Emu(args) => args,
        BenchCommand::Kvm(args) => return super::kvm::bench(args),
        BenchCommand::Cluster(args) => return super::bench_cluster::run(args),
        BenchCommand::Dirty(args) => return super::bench_dirty::run(args),
    };
    anyhow::ensure!(
        args.quantum_min >= 1 && args.quantum_min <= args.quantum_max,
        "need 1 <= --quantum-min <= --quantum-max"
    );
    let image = Guest::Compute.image([0; 8])?;
    println!(
        "guest: compute (endless), {} instructions per measurement",
        args.instructions
    );
    println!(
        "{:>5}  {:>12}  {:>12}  {:>6}",
        "vCPUs", "machine MIPS", "raw MIPS", "ratio"
    );
    for &vcpus in &args.vcpus {
        let shape = Shape::new(vcpus, MEMORY_BYTES_MIN)?;
        let config = EmuConfig {
            seed: args.seed,
            quantum: Quantum {
                min: args.quantum_min,
                max: args.quantum_max,
            },
        };
        let mut machine = emulated_machine(shape, &image, config, Box::new(MemStore::new(1)))?;
        let started = Instant::now();
        let mut left = args.instructions;
        while left > 0 {
            let slice = left.min(RUN_SLICE);
            machine.run(Instructions(slice))?;
            left -= slice;
        }
        let machine_seconds = started.elapsed().as_secs_f64();
        let retired = machine.engine().stats().instructions.0;
        anyhow::ensure!(retired == args.instructions, "machine retired {retired}");
        let mut raw = RawUnicorn::new(shape, &image)?;
        let per_vcpu = args.instructions / u64::from(vcpus);
        let started = Instant::now();
        raw.run(per_vcpu)?;
        let raw_seconds = started.elapsed().as_secs_f64();
        let machine_mips = retired as f64 / machine_seconds / 1e6;
        let raw_mips = (per_vcpu * u64::from(vcpus)) as f64 / raw_seconds / 1e6;
        println!(
            "{vcpus:>5}  {machine_mips:>12.1}  {raw_mips:>12.1}  {:>6.2}",
            machine_mips / raw_mips
        );
    }
    Ok(ExitCode::SUCCESS)
}
