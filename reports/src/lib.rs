//! Lockstep's run results and the reports made from them: `results.jsonl`
//! (one line a run), `junit.xml` (one testcase per scenario and seed),
//! `report.html` (matrix and figures), and a printed [`Summary`].
#![forbid(unsafe_code)]

pub mod html;
pub mod jsonl;
pub mod junit;
mod plots;
pub mod result;
pub mod summary;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use html::write_html;
pub use jsonl::{read_jsonl, JsonlWriter};
pub use junit::write_junit;
pub use result::{
    replay_command, DiskFigures, Oracle, RunResult, TraceHash, Violation, ViolationKind,
};
pub use summary::Summary;

/// Error writing or reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file system failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A JSON line did not (de)serialize.
    #[error("results line {line}: {source}")]
    Json {
        /// 1-based line.
        line: u64,
        /// Why.
        source: serde_json::Error,
    },
    /// A results line that disagrees with itself: `passed` with
    /// violations, failover times that are not one per failover, or a
    /// violation whose oracle is not its kind's.
    #[error("results line {line}: the run disagrees with itself (passed, failovers or a violation's oracle)")]
    Inconsistent {
        /// 1-based line.
        line: u64,
    },
    /// plotters could not draw a figure.
    #[error("plot: {0}")]
    Plot(String),
}

/// The three report files of a suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    /// `results.jsonl`.
    pub jsonl: PathBuf,
    /// `junit.xml`.
    pub junit: PathBuf,
    /// `report.html`.
    pub html: PathBuf,
}

/// Writes `results.jsonl`, `junit.xml` and `report.html` into `dir` (made
/// if missing) and returns the summary. A runner that streams
/// `results.jsonl` itself with [`JsonlWriter`] calls the other writers.
pub fn write_all(
    dir: &Path,
    results: &[RunResult],
    wall_ms: u64,
) -> Result<(Summary, ReportPaths), ReportError> {
    std::fs::create_dir_all(dir)?;
    let paths = ReportPaths {
        jsonl: dir.join("results.jsonl"),
        junit: dir.join("junit.xml"),
        html: dir.join("report.html"),
    };
    let mut jsonl = JsonlWriter::new(BufWriter::new(File::create(&paths.jsonl)?));
    for result in results {
        jsonl.write(result)?;
    }
    jsonl.finish()?;
    let mut junit = BufWriter::new(File::create(&paths.junit)?);
    write_junit(&mut junit, results)?;
    junit.flush()?;
    let summary = Summary::of(results, wall_ms);
    let mut html = BufWriter::new(File::create(&paths.html)?);
    write_html(&mut html, results, &summary)?;
    html.flush()?;
    Ok((summary, paths))
}

/// `text` with the characters XML 1.0 cannot hold at all (most control
/// characters) replaced by U+FFFD, so that any violation message makes a
/// well-formed document.
pub(crate) fn xml_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect()
}
