//! `lockstep model-check`: the exhaustive check of the protocol.

use clap::Args;
use modelcheck::{check, Bounds, LockstepModel, Report};
use protocol::Level;
use std::process::ExitCode;
use std::time::Instant;

/// Explore every interleaving of the protocol (two VM hosts, a witness, a
/// lossy, duplicating, reordering network, crashes and restarts) up to a
/// depth, and check the safety properties; then check liveness on a fair
/// variant.
#[derive(Debug, Args)]
pub struct ModelCheckArgs {
    /// Protection level to check: `ft` must pass, `ha` must lose output.
    #[arg(long, default_value = "ft")]
    level: Level,
    /// Steps per path in the safety check (the hostile-claim check goes
    /// one step less deep).
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Checker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the liveness checks (the liveness and re-protection models).
    #[arg(long)]
    no_liveness: bool,
    /// Check only these models (repeatable; default: all).
    #[arg(long, value_enum)]
    only: Vec<Variant>,
}

/// One of the models `lockstep model-check` explores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    Safety,
    Hostile,
    Liveness,
    Reprotect,
}

pub fn run(args: ModelCheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.depth > 0, "--depth must be at least 1");
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut variants = vec![
        (
            Variant::Safety,
            format!("safety model, level {}: 2 hosts + witness", args.level),
            Bounds::safety(args.level),
            Some(args.depth),
        ),
        (
            Variant::Hostile,
            format!(
                "hostile-claim model, level {}: a peer forges a claim of a generation",
                args.level
            ),
            Bounds::hostile(args.level),
            // A claim can come at any step, to either host: one step
            // shallower keeps the states about as many as the safety
            // model's.
            Some(args.depth.saturating_sub(1).max(1)),
        ),
    ];
    if !args.no_liveness {
        variants.push((
            Variant::Liveness,
            format!(
                "liveness model, level {}: fair delivery, one crash",
                args.level
            ),
            Bounds::fair(args.level),
            None,
        ));
        variants.push((
            Variant::Reprotect,
            format!(
                "re-protection model, level {}: fair delivery, a crash and a restart",
                args.level
            ),
            Bounds::reprotect(args.level),
            None,
        ));
    }
    variants.retain(|(variant, ..)| args.only.is_empty() || args.only.contains(variant));
    anyhow::ensure!(
        !variants.is_empty(),
        "--only names no model left by --no-liveness"
    );
    let mut passed = true;
    for (index, (_, title, bounds, depth)) in variants.into_iter().enumerate() {
        let started = Instant::now();
        let depth_text = depth.map_or(String::new(), |d| format!(", depth {d}"));
        let gap = if index == 0 { "" } else { "\n" };
        println!("{gap}{title}, {bounds:?}{depth_text}");
        let report = check(LockstepModel { bounds }, depth, threads);
        passed &= print_report(&report, started);
    }
    println!(
        "\nmodel-check: {}",
        if passed {
            "all properties hold"
        } else {
            "VIOLATION"
        }
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &Report, started: Instant) -> bool {
    println!(
        "unique states explored: {} (states generated: {}, max depth: {}, {:.1} s)",
        report.unique_states,
        report.states,
        report.max_depth,
        started.elapsed().as_secs_f64()
    );
    for property in &report.properties {
        let verdict = if property.violated {
            "VIOLATED"
        } else {
            "holds"
        };
        println!("  {:<60} {verdict}", property.name);
        if let Some(path) = &property.counterexample {
            println!("    counterexample ({} steps):", path.lines().count());
            for line in path.lines() {
                println!("    {line}");
            }
        }
    }
    report.passed()
}
