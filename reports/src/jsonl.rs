//! `results.jsonl`: one JSON object a line, one line a run, written as runs
//! finish so that a stopped suite keeps what it did.

use std::io::{BufRead, Write};

use crate::{ReportError, RunResult};

/// Appends runs to a JSON lines stream.
#[derive(Debug)]
pub struct JsonlWriter<W: Write> {
    out: W,
    lines: u64,
}

impl<W: Write> JsonlWriter<W> {
    /// A writer onto `out`.
    pub fn new(out: W) -> JsonlWriter<W> {
        JsonlWriter { out, lines: 0 }
    }

    /// Writes one run as one line.
    pub fn write(&mut self, result: &RunResult) -> Result<(), ReportError> {
        assert!(
            result.is_consistent(),
            "{} seed {}: passed disagrees with violations",
            result.scenario,
            result.seed
        );
        let line = serde_json::to_string(result).map_err(|source| ReportError::Json {
            line: self.lines + 1,
            source,
        })?;
        debug_assert!(!line.contains('\n'));
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.lines += 1;
        Ok(())
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Flushes and hands back the stream.
    pub fn finish(mut self) -> Result<W, ReportError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads runs back, naming the line of any that does not parse or does
/// not agree with itself. Blank lines are skipped.
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<RunResult>, ReportError> {
    let mut results = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let result: RunResult =
            serde_json::from_str(&line).map_err(|source| ReportError::Json {
                line: i as u64 + 1,
                source,
            })?;
        // The writers assert consistency: a line that lacks it (edited, or
        // from elsewhere) is refused here, not a panic later.
        if !result.is_consistent() {
            return Err(ReportError::Inconsistent { line: i as u64 + 1 });
        }
        results.push(result);
    }
    Ok(results)
}
