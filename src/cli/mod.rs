//! Subcommands of the `lockstep` binary.

mod bench;
mod bench_cluster;
mod bench_dirty;
mod cluster;
mod daemon;
mod kvm;
mod load;
mod model_check;
mod run;
mod vm;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Lockstep keeps a virtual machine alive across the death of its host.
#[derive(Debug, Parser)]
#[command(name = "lockstep", version, about, long_about = None)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exhaustively check the replication protocol's safety and liveness.
    ModelCheck(model_check::ModelCheckArgs),
    /// Run a suite of seeded failover scenarios in the simulator.
    Run(run::RunArgs),
    /// Replay one seed of a scenario exactly and write its trace.
    Replay(run::ReplayArgs),
    /// Work on suite reports: `report merge` joins shards.
    Report(run::ReportArgs),
    /// Run a guest on one machine.
    Vm(vm::VmArgs),
    /// Measure engine speed.
    Bench(bench::BenchArgs),
    /// Run one VM host of a protected VM (a daemon).
    Node(daemon::NodeArgs),
    /// Run the witness of a VM's pair of hosts (a daemon).
    Witness(daemon::WitnessArgs),
    /// Run a real client fleet against a protected ledger and record its history.
    Load(load::LoadArgs),
    /// Judge a recorded history against the survivor's final checkpoint.
    Check(load::CheckArgs),
    /// Real-host clusters: `cluster local` builds one in network namespaces.
    Cluster(cluster::ClusterArgs),
}

pub fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::ModelCheck(args) => model_check::run(args),
        Command::Run(args) => run::run(args),
        Command::Replay(args) => run::replay(args),
        Command::Report(args) => run::report(args),
        Command::Vm(args) => vm::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Node(args) => daemon::node(args),
        Command::Witness(args) => daemon::witness(args),
        Command::Load(args) => load::load(args),
        Command::Check(args) => load::check(args),
        Command::Cluster(args) => cluster::run(args),
    }
}

pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour for a terminal only: a log file or the journal gets text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
