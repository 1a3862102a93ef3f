//! `junit.xml`: one `<testsuite>` per scenario, one `<testcase>` per seed,
//! a `<failure>` with the violations and the replay command. CI systems
//! read this to show which seeds failed.

use std::collections::BTreeMap;
use std::io::Write;

use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

use crate::{xml_safe, ReportError, RunResult};

/// Writes the results as JUnit XML, scenarios and seeds in order.
pub fn write_junit(out: impl Write, results: &[RunResult]) -> Result<(), ReportError> {
    let mut writer = Writer::new_with_indent(out, b' ', 2);
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let by_scenario = group(results);
    let failures = results.iter().filter(|r| !r.passed).count();
    writer
        .create_element("testsuites")
        .with_attribute(("name", "lockstep"))
        .with_attribute(("tests", results.len().to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute((
            "time",
            seconds(results.iter().map(|r| r.wall_ms).sum()).as_str(),
        ))
        .write_inner_content(|w| {
            for (scenario, runs) in &by_scenario {
                suite(w, scenario, runs)?;
            }
            Ok(())
        })?;
    writer.get_mut().write_all(b"\n")?;
    Ok(())
}

/// Runs by scenario, each list sorted by seed: a deterministic order
/// whatever order the runs finished in.
pub(crate) fn group(results: &[RunResult]) -> BTreeMap<&str, Vec<&RunResult>> {
    let mut by_scenario: BTreeMap<&str, Vec<&RunResult>> = BTreeMap::new();
    for result in results {
        by_scenario
            .entry(&result.scenario)
            .or_default()
            .push(result);
    }
    for runs in by_scenario.values_mut() {
        runs.sort_by_key(|r| (r.seed, r.level));
    }
    by_scenario
}

fn seconds(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn suite<W: Write>(w: &mut Writer<W>, scenario: &str, runs: &[&RunResult]) -> std::io::Result<()> {
    let failures = runs.iter().filter(|r| !r.passed).count();
    w.create_element("testsuite")
        .with_attribute(("name", xml_safe(scenario).as_str()))
        .with_attribute(("tests", runs.len().to_string().as_str()))
        .with_attribute(("failures", failures.to_string().as_str()))
        .with_attribute((
            "time",
            seconds(runs.iter().map(|r| r.wall_ms).sum()).as_str(),
        ))
        .write_inner_content(|w| {
            for run in runs {
                case(w, run)?;
            }
            Ok(())
        })?;
    Ok(())
}

fn case<W: Write>(w: &mut Writer<W>, run: &RunResult) -> std::io::Result<()> {
    let name = format!("seed {} ({})", run.seed, run.level);
    let out = format!(
        "trace_hash {}\nsim_ms {}\nfailovers {}\nepochs {}\nreplay: {}",
        run.trace_hash, run.sim_ms, run.failovers, run.epochs, run.replay_command
    );
    w.create_element("testcase")
        .with_attribute(("name", name.as_str()))
        .with_attribute((
            "classname",
            xml_safe(&format!("lockstep.{}", run.scenario)).as_str(),
        ))
        .with_attribute(("time", seconds(run.wall_ms).as_str()))
        .write_inner_content(|w| {
            if !run.passed {
                failure(w, run)?;
            }
            w.create_element("system-out")
                .write_text_content(BytesText::new(&xml_safe(&out)))?;
            Ok(())
        })?;
    Ok(())
}

fn failure<W: Write>(w: &mut Writer<W>, run: &RunResult) -> std::io::Result<()> {
    let first = run
        .violations
        .first()
        .map_or_else(|| "failed".to_string(), ToString::to_string);
    let kind = run.violations.first().map_or_else(
        || "failure".to_string(),
        |v| format!("oracle-{}", v.oracle.number()),
    );
    let mut body: String = run.violations.iter().map(|v| format!("{v}\n")).collect();
    body.push_str(&format!("replay: {}", run.replay_command));
    w.create_element("failure")
        .with_attribute(("message", xml_safe(&first).as_str()))
        .with_attribute(("type", kind.as_str()))
        .write_text_content(BytesText::new(&xml_safe(&body)))?;
    Ok(())
}
