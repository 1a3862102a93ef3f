//! `report.html`: one self-contained page (no scripts, no links out): the
//! summary, a pass/fail matrix of scenario × seed, the failures with their
//! replay commands, and the figures as inline SVG.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write;

use faults::Level;

use crate::junit::group;
use crate::plots::{bars, histogram, quantiles};
use crate::{ReportError, RunResult, Summary};

const STYLE: &str = "body{font-family:sans-serif;margin:2em}\
table.matrix{border-collapse:collapse;font-size:11px}\
.matrix td,.matrix th{border:1px solid #ccc;padding:2px 4px;text-align:center}\
.matrix th.scenario{text-align:left;white-space:nowrap}\
td.pass{background:#bfe5bf}td.fail{background:#f2a0a0;font-weight:bold}td.none{background:#eee}\
.wide{overflow-x:auto}figure{display:inline-block;margin:1em}code{background:#f4f4f4}";

fn escape(text: &str) -> String {
    quick_xml::escape::escape(crate::xml_safe(text).as_str()).into_owned()
}

/// Writes the page.
pub fn write_html(
    mut out: impl Write,
    results: &[RunResult],
    summary: &Summary,
) -> Result<(), ReportError> {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">");
    page.push_str("<title>Lockstep simulation report</title>");
    let _ = write!(page, "<style>{STYLE}</style></head>\n<body>\n");
    page.push_str("<h1>Lockstep simulation report</h1>\n");
    let _ = writeln!(
        page,
        "<pre id=\"summary\">{}</pre>",
        escape(&summary.to_string())
    );
    matrix(&mut page, results);
    failures(&mut page, results);
    page.push_str("<h2>Figures</h2>\n");
    for svg in figures(results)? {
        let _ = writeln!(page, "<figure>{svg}</figure>");
    }
    page.push_str("</body>\n</html>\n");
    out.write_all(page.as_bytes())?;
    Ok(())
}

fn matrix(page: &mut String, results: &[RunResult]) {
    let columns: BTreeSet<(u64, Level)> = results.iter().map(|r| (r.seed, r.level)).collect();
    let levels: BTreeSet<Level> = columns.iter().map(|c| c.1).collect();
    page.push_str(
        "<h2>Runs</h2>\n<div class=\"wide\"><table class=\"matrix\">\n<tr><th>scenario</th>",
    );
    for (seed, level) in &columns {
        match levels.len() {
            1 => {
                let _ = write!(page, "<th>{seed}</th>");
            }
            _ => {
                let _ = write!(page, "<th>{seed} {level}</th>");
            }
        }
    }
    page.push_str("</tr>\n");
    let mut failure_index = 0;
    for (scenario, runs) in group(results) {
        let _ = write!(page, "<tr><th class=\"scenario\">{}</th>", escape(scenario));
        let mut runs = runs.into_iter().peekable();
        for column in &columns {
            let mut cell = false;
            while let Some(run) = runs.next_if(|r| (r.seed, r.level) == *column) {
                cell = true;
                if run.passed {
                    page.push_str("<td class=\"run pass\" title=\"passed\">✓</td>");
                } else {
                    let title: Vec<String> =
                        run.violations.iter().map(ToString::to_string).collect();
                    let _ = write!(
                        page,
                        "<td class=\"run fail\" title=\"{}\"><a href=\"#failure-{failure_index}\">✗</a></td>",
                        escape(&title.join("; "))
                    );
                    failure_index += 1;
                }
            }
            if !cell {
                page.push_str("<td class=\"none\"></td>");
            }
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table></div>\n");
}

fn failures(page: &mut String, results: &[RunResult]) {
    let failed: Vec<&RunResult> = group(results)
        .into_values()
        .flatten()
        .filter(|r| !r.passed)
        .collect();
    if failed.is_empty() {
        return;
    }
    page.push_str("<h2>Failures</h2>\n<ol>\n");
    for (i, run) in failed.iter().enumerate() {
        let _ = write!(
            page,
            "<li id=\"failure-{i}\"><b>{}</b> seed {} ({}), trace {}<ul>",
            escape(&run.scenario),
            run.seed,
            run.level,
            run.trace_hash
        );
        for v in &run.violations {
            let _ = write!(page, "<li>{}</li>", escape(&v.to_string()));
        }
        let _ = writeln!(
            page,
            "</ul><code>{}</code></li>",
            escape(&run.replay_command)
        );
    }
    page.push_str("</ol>\n");
}

/// Mean of `f` over each scenario's runs, in scenario order.
fn per_scenario(results: &[RunResult], f: impl Fn(&RunResult) -> f64) -> Vec<(String, f64)> {
    group(results)
        .into_iter()
        .map(|(name, runs)| {
            let mean = runs.iter().map(|r| f(r)).sum::<f64>() / runs.len().max(1) as f64;
            (name.to_string(), mean)
        })
        .collect()
}

fn per_sim_second(value: u64, sim_ms: u64) -> f64 {
    value as f64 * 1000.0 / sim_ms.max(1) as f64
}

/// The figures, in page order.
pub(crate) fn figures(results: &[RunResult]) -> Result<Vec<String>, ReportError> {
    let failover_ms: Vec<f64> = results
        .iter()
        .flat_map(|r| r.failover_ms.iter().copied())
        .collect();
    let epochs = per_scenario(results, |r| per_sim_second(r.epochs, r.sim_ms));
    let bandwidth = per_scenario(results, |r| {
        per_sim_second(r.delta_bytes, r.sim_ms) / (1 << 20) as f64
    });
    let p50: Vec<f64> = results
        .iter()
        .map(|r| r.pause_ns_p50 as f64 / 1000.0)
        .collect();
    let p99: Vec<f64> = results
        .iter()
        .map(|r| r.pause_ns_p99 as f64 / 1000.0)
        .collect();
    Ok(vec![
        histogram(
            "Failover time",
            "ms from suspicion to first output",
            &failover_ms,
            30,
        )?,
        bars(
            "Epochs per simulated second (mean per scenario)",
            "epochs/s",
            &epochs,
        )?,
        quantiles(
            "Guest pause per checkpoint",
            "µs",
            &[("p50", p50), ("p99", p99)],
        )?,
        bars(
            "Replication bandwidth (mean per scenario)",
            "MiB per simulated second",
            &bandwidth,
        )?,
    ])
}
