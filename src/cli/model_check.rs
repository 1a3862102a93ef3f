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
    /// Steps per path in the safety check.
    #[arg(long, default_value_t = 11)]
    depth: usize,
    /// Checker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the liveness check.
    #[arg(long)]
    no_liveness: bool,
}

pub fn run(args: ModelCheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.depth > 0, "--depth must be at least 1");
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut variants = vec![(
        format!("safety model, level {}: 2 hosts + witness", args.level),
        Bounds::safety(args.level),
        Some(args.depth),
    )];
    if !args.no_liveness {
        variants.push((
            format!(
                "liveness model, level {}: fair delivery, one crash",
                args.level
            ),
            Bounds::fair(args.level),
            None,
        ));
        variants.push((
            format!(
                "re-protection model, level {}: fair delivery, a crash and a restart",
                args.level
            ),
            Bounds::reprotect(args.level),
            None,
        ));
    }
    let mut passed = true;
    for (index, (title, bounds, depth)) in variants.into_iter().enumerate() {
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
