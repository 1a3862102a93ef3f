//! `lockstep run` (a suite of seeded scenarios, in parallel, judged and
//! reported) and `lockstep replay` (one seed, exactly, with its trace).

use anyhow::{bail, Context};
use clap::Args;
use faults::scenario::{load_dir, Catalogue, Origin, Seeds};
use protocol::Level;
use sim::RunOutcome;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Run a suite of scenarios across seeds in the simulator.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The suite: a file name in `<scenarios>/suites/` (smoke, ci, nightly).
    #[arg(long)]
    suite: String,
    /// Seeds per scenario, instead of the suite's.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed, instead of the suite's.
    #[arg(long)]
    first_seed: Option<u64>,
    /// Runs at once (default: the machine's cores; at most JOBS_MAX).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run only shard K of N (K from 0): every N-th run of the suite's
    /// list, starting at the K-th. `lockstep report merge` joins the shards'
    /// reports into the unsharded suite's.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<Shard>,
    /// Protection level for every run, instead of each scenario's.
    #[arg(long)]
    level: Option<Level>,
    /// Where results.jsonl, junit.xml and report.html go.
    #[arg(long, default_value = "lockstep-out")]
    out: PathBuf,
    /// The scenario directory.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    /// Run each seed twice and compare the traces (oracle 5).
    #[arg(long)]
    check_determinism: bool,
    /// Append every failing (scenario, seed) to `<scenarios>/regressions.toml`,
    /// so that every suite runs it first from now on.
    #[arg(long)]
    record_failures: bool,
}

/// Replay one run exactly: print its trace hash, write its trace.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The scenario's name.
    #[arg(long)]
    scenario: String,
    /// The seed.
    #[arg(long)]
    seed: u64,
    /// Protection level, instead of the scenario's.
    #[arg(long)]
    level: Option<Level>,
    /// Where the trace goes, as JSON lines (default: replay-<scenario>-<seed>.jsonl).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// The scenario directory.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
}

/// Most runs at once: more threads than this only contend (each run is
/// single-threaded).
const JOBS_MAX: usize = 256;
/// Decisive events a failed replay prints (the last ones).
const DECISIVE_SHOWN: usize = 20;
/// The scenario directory when `--scenarios` is not given.
const SCENARIOS_DEFAULT: &str = "scenarios";

/// One of N equal parts of a suite's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which part, `0..count`.
    pub index: u64,
    /// How many parts.
    pub count: u64,
}

impl Shard {
    /// Whether the run at `position` in the suite's list is this shard's.
    pub fn holds(self, position: u64) -> bool {
        position % self.count == self.index
    }
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: give the shard as K/N, e.g. 0/4"))?;
    let index: u64 = k
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: K must be a number"))?;
    let count: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: N must be a number"))?;
    if count == 0 || index >= count {
        return Err(format!("{text:?}: need N >= 1 and 0 <= K < N"));
    }
    Ok(Shard { index, count })
}

/// The replay command of a run, naming the scenario directory when it is
/// not the default.
fn replay_line(scenario: &str, seed: u64, level: Level, scenarios: &Path) -> String {
    let line = reports::replay_command(scenario, seed, level);
    if scenarios == Path::new(SCENARIOS_DEFAULT) {
        line
    } else {
        format!(
            "{line} --scenarios {}",
            shell_word(&scenarios.display().to_string())
        )
    }
}

/// `word` as a shell reads it back as one word: as it is when it holds
/// nothing the shell treats specially, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn catalogue(dir: &Path) -> anyhow::Result<Catalogue> {
    load_dir(dir)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "loading scenarios from {} (use --scenarios DIR)",
                dir.display()
            )
        })
}

/// One run to do.
struct Job {
    scenario: faults::scenario::Scenario,
    seed: u64,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let catalogue = catalogue(&args.scenarios)?;
    let Some(suite) = catalogue.suites.get(&args.suite) else {
        let known: Vec<&String> = catalogue.suites.keys().collect();
        bail!(
            "no suite `{}` in {} (known: {known:?})",
            args.suite,
            args.scenarios.display()
        );
    };
    let mut suite = suite.clone();
    if let Some(seeds) = args.seeds {
        if seeds == 0 {
            bail!("--seeds must be at least 1 (it is the number of seeds per scenario)");
        }
        suite.seeds = Seeds::Count(seeds);
    }
    if let Some(first) = args.first_seed {
        suite.first_seed = first;
    }
    if suite.run_count(&catalogue).is_none() {
        bail!("suite `{}` is unbounded: give --seeds N", args.suite);
    }
    let mut jobs = Vec::new();
    let mut skipped = std::collections::BTreeMap::new();
    let mut regressions = 0;
    // Shards split the runs that can run (skipped ones are not counted),
    // so that `report merge` interleaves them back in the suite's order.
    let mut position = 0u64;
    for planned in suite.runs(&catalogue) {
        match sim::scenario::resolve(planned.scenario, planned.seed, args.level) {
            Ok(_) => {
                position += 1;
                if args.shard.is_some_and(|s| !s.holds(position - 1)) {
                    continue;
                }
                if planned.origin == Origin::Regression {
                    regressions += 1;
                }
                jobs.push(Job {
                    scenario: planned.scenario.clone(),
                    seed: planned.seed,
                });
            }
            Err(e) => {
                skipped
                    .entry(e.to_string())
                    .and_modify(|n| *n += 1)
                    .or_insert(1u64);
            }
        }
    }
    let asked = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if asked == 0 {
        bail!("--jobs must be at least 1");
    }
    if asked > JOBS_MAX {
        println!("--jobs {asked} is more than {JOBS_MAX}: running {JOBS_MAX} at once");
    }
    let workers = asked.min(JOBS_MAX).min(jobs.len().max(1));
    let shard = args.shard.map_or(String::new(), |s| {
        format!(" (shard {}/{})", s.index, s.count)
    });
    println!(
        "suite {}{shard}: {} runs ({} regressions first) on {workers} jobs{}",
        args.suite,
        jobs.len(),
        regressions,
        if args.check_determinism {
            ", each twice"
        } else {
            ""
        }
    );
    for (reason, count) in &skipped {
        println!("SKIPPED {count} runs: {reason}");
    }
    let started = Instant::now();
    let context = RunContext {
        level: args.level,
        check_determinism: args.check_determinism,
        scenarios: args.scenarios.clone(),
    };
    let results = run_parallel(jobs, workers, &context, &args.out)?;
    let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!();
    let summary = write_reports(&args.out, &results, args.shard, wall_ms)?;
    if args.record_failures {
        let recorded = record_failures(&args.scenarios, &catalogue, &results, &args.suite)?;
        println!(
            "{recorded} failing seeds added to {}",
            args.scenarios
                .join(faults::scenario::suite::REGRESSIONS_FILE)
                .display()
        );
    }
    let skipped_runs: u64 = skipped.values().sum();
    if skipped_runs > 0 {
        println!(
            "{skipped_runs} runs skipped: their faults cannot strike their targets here (see above)"
        );
    }
    Ok(if summary.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What every run of a suite shares.
#[derive(Debug, Clone)]
struct RunContext {
    level: Option<Level>,
    check_determinism: bool,
    scenarios: PathBuf,
}

/// The file beside a suite's reports that says which shard they are and
/// how long the suite took, for `report merge`.
const SHARD_FILE: &str = "shard.json";

/// What [`SHARD_FILE`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ShardFile {
    index: u64,
    count: u64,
    wall_ms: u64,
}

fn write_shard(out: &Path, shard: Option<Shard>, wall_ms: u64) -> anyhow::Result<()> {
    let shard = shard.unwrap_or(Shard { index: 0, count: 1 });
    let file = ShardFile {
        index: shard.index,
        count: shard.count,
        wall_ms,
    };
    let path = out.join(SHARD_FILE);
    let text = serde_json::to_string(&file).expect("plain numbers serialise");
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Writes the reports and the shard file into `out`, and says so.
fn write_reports(
    out: &Path,
    results: &[reports::RunResult],
    shard: Option<Shard>,
    wall_ms: u64,
) -> anyhow::Result<reports::Summary> {
    let (summary, paths) = reports::write_all(out, results, wall_ms)?;
    write_shard(out, shard, wall_ms)?;
    println!("{summary}");
    println!(
        "reports: {}, {}, {}",
        paths.jsonl.display(),
        paths.junit.display(),
        paths.html.display()
    );
    Ok(summary)
}

/// `lockstep report`: work on the reports of finished suites.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ReportCommand {
    /// Join the reports of the N shards of one suite (`run --shard K/N`)
    /// into the reports the unsharded suite writes.
    Merge {
        /// The shards' output directories, in any order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the merged results.jsonl, junit.xml and report.html go.
        #[arg(long, default_value = "lockstep-out")]
        out: PathBuf,
    },
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let ReportCommand::Merge { dirs, out } = args.command;
    let mut shards = Vec::new();
    for dir in &dirs {
        let path = dir.join(SHARD_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: not the output of `lockstep run`", path.display()))?;
        let shard: ShardFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed", path.display()))?;
        let jsonl = dir.join("results.jsonl");
        let file = std::fs::File::open(&jsonl)
            .with_context(|| format!("{}: cannot open", jsonl.display()))?;
        let results = reports::read_jsonl(std::io::BufReader::new(file))
            .map_err(|e| anyhow::anyhow!("{}: {e}", jsonl.display()))?;
        shards.push((shard, results));
    }
    let count = shards[0].0.count;
    shards.sort_by_key(|(s, _)| s.index);
    let indices: Vec<u64> = shards.iter().map(|(s, _)| s.index).collect();
    if shards.iter().any(|(s, _)| s.count != count) || indices != (0..count).collect::<Vec<_>>() {
        bail!("give every shard of one suite once: have shards {indices:?} of {count}");
    }
    // Run p of the suite is run p / N of shard p % N: interleave them back.
    let wall_ms = shards.iter().map(|(s, _)| s.wall_ms).max().unwrap_or(0);
    let total: usize = shards.iter().map(|(_, r)| r.len()).sum();
    let mut iters: Vec<_> = shards.into_iter().map(|(_, r)| r.into_iter()).collect();
    let mut merged = Vec::with_capacity(total);
    let n = iters.len();
    for p in 0..total {
        let Some(result) = iters[p % n].next() else {
            bail!(
                "the shards' run counts do not make one suite (shard {} ends early)",
                p % n
            );
        };
        merged.push(result);
    }
    let summary = write_reports(&out, &merged, None, wall_ms)?;
    Ok(if summary.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_parallel(
    jobs: Vec<Job>,
    workers: usize,
    context: &RunContext,
    out: &Path,
) -> anyhow::Result<Vec<reports::RunResult>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let total = jobs.len();
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate()));
    let (sender, receiver) = mpsc::channel();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let sender = sender.clone();
        let (level, check_determinism) = (context.level, context.check_determinism);
        handles.push(std::thread::spawn(move || loop {
            let next = queue
                .lock()
                .expect("no worker panics holding the queue")
                .next();
            let Some((index, job)) = next else { break };
            let started = Instant::now();
            let outcome = one_run(&job, level, check_determinism);
            let wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if sender.send((index, outcome, wall_ms)).is_err() {
                break;
            }
        }));
    }
    drop(sender);
    let mut results: Vec<Option<reports::RunResult>> = (0..total).map(|_| None).collect();
    let mut done = 0;
    let mut failed = 0;
    for (index, outcome, wall_ms) in receiver {
        done += 1;
        if !outcome.passed() {
            failed += 1;
            println!(
                "\nFAIL {} seed {}: {}\n  replay: {}",
                outcome.scenario,
                outcome.seed,
                outcome
                    .violations
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                replay_line(
                    &outcome.scenario,
                    outcome.seed,
                    outcome.level,
                    &context.scenarios
                )
            );
        }
        if done % 50 == 0 || done == total {
            print!("\r{done}/{total} runs, {failed} failed");
            let _ = std::io::stdout().flush();
        }
        let mut result = sim::report::to_result(&outcome, wall_ms);
        result.replay_command = replay_line(
            &outcome.scenario,
            outcome.seed,
            outcome.level,
            &context.scenarios,
        );
        results[index] = Some(result);
    }
    println!();
    for handle in handles {
        if handle.join().is_err() {
            bail!("a simulation worker panicked");
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Appends the failing runs not yet kept to the regressions file.
fn record_failures(
    dir: &Path,
    catalogue: &Catalogue,
    results: &[reports::RunResult],
    suite: &str,
) -> anyhow::Result<usize> {
    let path = dir.join(faults::scenario::suite::REGRESSIONS_FILE);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut added = 0;
    for result in results.iter().filter(|r| !r.passed) {
        let known = catalogue
            .regressions
            .iter()
            .any(|r| r.scenario == result.scenario && r.seed == result.seed);
        if known {
            continue;
        }
        let first = result
            .violations
            .first()
            .map_or(String::new(), |v| v.message.replace(['"', '\\', '\n'], " "));
        text.push_str(&format!(
            "\n[[regressions]]\nscenario = \"{}\"\nseed = {}\nnote = \"found by lockstep run --suite {suite} (level {}): {first}\"\n",
            result.scenario, result.seed, result.level
        ));
        added += 1;
    }
    if added > 0 {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        // What we wrote must load: a regressions file that does not parse
        // would stop every later suite.
        faults::scenario::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(added)
}

fn one_run(job: &Job, level: Option<Level>, check_determinism: bool) -> RunOutcome {
    let spec = sim::scenario::resolve(&job.scenario, job.seed, level).expect("resolved before");
    // A panic is caught per run: the run is a violation with its seed and
    // the suite goes on.
    let mut outcome = sim::run_catching(&spec, check_determinism);
    if check_determinism && outcome.trace_events > 0 {
        let again = sim::run_catching(&spec, true);
        if let Some(message) = first_difference(&outcome, &again) {
            outcome.violations.push(sim::Violation::new(
                sim::ViolationKind::Nondeterministic,
                message,
            ));
        }
        outcome.trace.clear();
    }
    outcome
}

/// The first event where two runs of one seed differ, if they do.
fn first_difference(a: &RunOutcome, b: &RunOutcome) -> Option<String> {
    if a.trace_hash == b.trace_hash {
        return None;
    }
    let index = a
        .trace
        .iter()
        .zip(&b.trace)
        .position(|(x, y)| x != y)
        .unwrap_or(a.trace.len().min(b.trace.len()));
    let show = |t: &RunOutcome| {
        t.trace
            .get(index)
            .map_or("(end of trace)".to_string(), |e| e.to_json())
    };
    Some(format!(
        "same seed, different traces ({:016x} vs {:016x}); first difference at event {index}: {} vs {}",
        a.trace_hash, b.trace_hash, show(a), show(b)
    ))
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let catalogue = catalogue(&args.scenarios)?;
    let Some(scenario) = catalogue.scenarios.get(&args.scenario) else {
        bail!(
            "no scenario `{}` in {}",
            args.scenario,
            args.scenarios.display()
        );
    };
    let spec = sim::scenario::resolve(scenario, args.seed, args.level)?;
    let started = Instant::now();
    let outcome = sim::run(&spec, true);
    let path = args
        .trace
        .unwrap_or_else(|| PathBuf::from(format!("replay-{}-{}.jsonl", args.scenario, args.seed)));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for event in &outcome.trace {
        writeln!(file, "{}", event.to_json())?;
    }
    file.flush()?;
    println!(
        "{} seed {} level {}: trace hash {:016x}, {} events in {} ({} ms simulated, {:.2} s wall)",
        outcome.scenario,
        outcome.seed,
        outcome.level,
        outcome.trace_hash,
        outcome.trace_events,
        path.display(),
        outcome.sim_ms,
        started.elapsed().as_secs_f64()
    );
    if let Some(reason) = &outcome.vm_lost {
        println!("VM LOST to more than one host failure (beyond what Lockstep survives): {reason}");
    }
    if outcome.passed() {
        println!(
            "passed: replies {} of {}, failovers {:?} ms",
            outcome.replies_received,
            spec.requests_total(),
            outcome.failover_ms
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("VIOLATIONS:");
    for v in &outcome.violations {
        println!("  {v}");
    }
    println!(
        "decisive events (the last faults, boots, role changes, fail-stops, crash disk losses and witness answers):"
    );
    for event in sim::trace::decisive(&outcome.trace, DECISIVE_SHOWN) {
        println!(
            "  {:>10.3} ms {:<8} {}",
            event.at_ns as f64 / 1e6,
            event.host,
            event.what
        );
    }
    println!("vCPUs at the end:");
    for listing in &outcome.listings {
        print!("{listing}");
    }
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_line_names_the_scenario_directory_only_when_it_is_not_the_default() {
        let default = replay_line("baseline", 7, Level::Ha, Path::new(SCENARIOS_DEFAULT));
        assert_eq!(
            default,
            "lockstep replay --scenario baseline --seed 7 --level ha"
        );
        let other = replay_line("baseline", 7, Level::Ft, Path::new("/tmp/my scenarios"));
        assert_eq!(
            other,
            "lockstep replay --scenario baseline --seed 7 --level ft --scenarios '/tmp/my scenarios'"
        );
        let plain = replay_line("b", 1, Level::Ft, Path::new("/work/x-1/scenarios"));
        assert!(
            plain.ends_with(" --scenarios /work/x-1/scenarios"),
            "{plain}"
        );
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
