//! Suites (which scenarios, how many seeds), the regressions file (failing
//! seeds found once, run first by every suite), and a directory of them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::Source;
use super::validate::is_name;
use super::{FileError, Scenario, ScenarioError};
use crate::spans::FieldPath;

/// Name of the regressions file in a scenario directory.
pub const REGRESSIONS_FILE: &str = "regressions.toml";
/// Folder of suite files in a scenario directory.
pub const SUITES_DIR: &str = "suites";
/// Most regressions kept.
pub const REGRESSIONS_MAX: usize = 10_000;

/// Which scenarios a suite runs: `"all"` or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum Selection {
    /// Every scenario of the directory, by name.
    All,
    /// These, in this order.
    Named(Vec<String>),
}

impl TryFrom<toml::Value> for Selection {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<Selection, String> {
        let wrong = || "expected \"all\" or a list of scenario names".to_string();
        match value {
            toml::Value::String(s) if s == "all" => Ok(Selection::All),
            toml::Value::Array(names) => names
                .into_iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(wrong))
                .collect::<Result<_, _>>()
                .map(Selection::Named),
            _ => Err(wrong()),
        }
    }
}

/// How many seeds a suite runs per scenario: a count or `"unbounded"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum Seeds {
    /// Seeds `first_seed..first_seed + n`.
    Count(u64),
    /// Seeds from `first_seed` on, until stopped.
    Unbounded,
}

impl TryFrom<toml::Value> for Seeds {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<Seeds, String> {
        match value {
            toml::Value::Integer(n) if n >= 1 => Ok(Seeds::Count(n as u64)),
            toml::Value::String(s) if s == "unbounded" => Ok(Seeds::Unbounded),
            other => Err(format!(
                "expected a count of at least 1 or \"unbounded\", got {other}"
            )),
        }
    }
}

/// A suite: scenarios × seeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The file's stem.
    pub name: String,
    /// What the suite is for.
    pub description: String,
    /// Which scenarios.
    pub scenarios: Selection,
    /// How many seeds each.
    pub seeds: Seeds,
    /// The first seed.
    #[serde(default)]
    pub first_seed: u64,
}

/// A failing seed found once and kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regression {
    /// Scenario name.
    pub scenario: String,
    /// The seed that failed.
    pub seed: u64,
    /// What went wrong, and what fixed it.
    pub note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegressionsFile {
    #[serde(default)]
    regressions: Vec<Regression>,
}

/// Why a run is in a suite's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// From the regressions file.
    Regression,
    /// From the suite's scenarios × seeds.
    Suite,
}

/// One run to make.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// Which scenario.
    pub scenario: &'a Scenario,
    /// With which seed.
    pub seed: u64,
    /// Why.
    pub origin: Origin,
}

/// Everything in a scenario directory, cross-checked: every name a suite or
/// regression uses is a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    /// Scenarios by name.
    pub scenarios: BTreeMap<String, Scenario>,
    /// Suites by name.
    pub suites: BTreeMap<String, Suite>,
    /// Regressions, in file order.
    pub regressions: Vec<Regression>,
}

impl Suite {
    /// The runs of this suite: the regressions first, then seed by seed
    /// every selected scenario. Endless when the seeds are unbounded.
    pub fn runs<'a>(&'a self, catalogue: &'a Catalogue) -> impl Iterator<Item = Run<'a>> + 'a {
        let regressions = catalogue.regressions.iter().filter_map(|r| {
            Some(Run {
                scenario: catalogue.scenarios.get(&r.scenario)?,
                seed: r.seed,
                origin: Origin::Regression,
            })
        });
        let scenarios: Vec<&Scenario> = match &self.scenarios {
            Selection::All => catalogue.scenarios.values().collect(),
            Selection::Named(names) => names
                .iter()
                .filter_map(|n| catalogue.scenarios.get(n))
                .collect(),
        };
        let seeds = match self.seeds {
            Seeds::Count(n) => self.first_seed..self.first_seed.saturating_add(n),
            Seeds::Unbounded => self.first_seed..u64::MAX,
        };
        let suite = seeds.flat_map(move |seed| {
            scenarios.clone().into_iter().map(move |scenario| Run {
                scenario,
                seed,
                origin: Origin::Suite,
            })
        });
        regressions.chain(suite)
    }

    /// Runs the suite makes, regressions included; `None` when unbounded.
    pub fn run_count(&self, catalogue: &Catalogue) -> Option<u64> {
        let scenarios = match &self.scenarios {
            Selection::All => catalogue.scenarios.len(),
            Selection::Named(names) => names.len(),
        } as u64;
        match self.seeds {
            Seeds::Count(n) => Some(catalogue.regressions.len() as u64 + scenarios * n),
            Seeds::Unbounded => None,
        }
    }
}

fn read(path: &Path) -> Result<String, ScenarioError> {
    std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: path.to_path_buf(),
        source,
    })
}

/// Reads and checks one suite file; its `name` must be its file stem. The
/// scenario names are checked against a directory by [`load_dir`].
pub fn load_suite(path: &Path) -> Result<Suite, ScenarioError> {
    let text = read(path)?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    Ok(parse_suite(path, &text, stem)?)
}

/// Checks a suite given as text.
pub fn parse_suite(file: &Path, text: &str, stem: Option<&str>) -> Result<Suite, FileError> {
    let source = Source { file, text };
    let suite: Suite = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    let name_ok = is_name(&suite.name) && stem.is_none_or(|s| s == suite.name);
    if !name_ok {
        let message = format!(
            "{:?} must be a name (a-z, 0-9, '-') equal to the file name",
            suite.name
        );
        return Err(source.at_field(&FieldPath::keys(&["name"]), message));
    }
    if let Selection::Named(names) = &suite.scenarios {
        if names.is_empty() {
            return Err(source.at_field(&FieldPath::keys(&["scenarios"]), "names no scenario"));
        }
    }
    Ok(suite)
}

/// Checks a regressions file given as text.
pub fn parse_regressions(file: &Path, text: &str) -> Result<Vec<Regression>, FileError> {
    let source = Source { file, text };
    let parsed: RegressionsFile = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
    if parsed.regressions.len() > REGRESSIONS_MAX {
        let message = format!("at most {REGRESSIONS_MAX} regressions");
        return Err(source.at_field(&FieldPath::keys(&["regressions"]), message));
    }
    Ok(parsed.regressions)
}

/// The `*.toml` files directly in `dir`, sorted by name.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ScenarioError::Read {
        file: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| ScenarioError::Read {
                file: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads a scenario directory: `*.toml` scenarios, `suites/*.toml`, and
/// `regressions.toml` (optional). Stops at the first file with an error.
pub fn load_dir(dir: &Path) -> Result<Catalogue, ScenarioError> {
    let mut scenarios = BTreeMap::new();
    for path in toml_files(dir)? {
        if path.file_name().is_some_and(|n| n == REGRESSIONS_FILE) {
            continue;
        }
        let scenario = super::load_scenario(&path)?;
        scenarios.insert(scenario.name.clone(), scenario);
    }
    let mut suites = BTreeMap::new();
    let suites_dir = dir.join(SUITES_DIR);
    if suites_dir.is_dir() {
        for path in toml_files(&suites_dir)? {
            let text = read(&path)?;
            let suite = parse_suite(&path, &text, path.file_stem().and_then(|s| s.to_str()))?;
            known_names(&path, &text, &suite, &scenarios)?;
            suites.insert(suite.name.clone(), suite);
        }
    }
    let regressions_path = dir.join(REGRESSIONS_FILE);
    let regressions = if regressions_path.is_file() {
        let text = read(&regressions_path)?;
        let regressions = parse_regressions(&regressions_path, &text)?;
        let source = Source {
            file: &regressions_path,
            text: &text,
        };
        for (i, r) in regressions.iter().enumerate() {
            if !scenarios.contains_key(&r.scenario) {
                let field = FieldPath::keys(&["regressions"]).index(i).key("scenario");
                return Err(source
                    .at_field(&field, format!("no scenario {:?}", r.scenario))
                    .into());
            }
        }
        regressions
    } else {
        Vec::new()
    };
    Ok(Catalogue {
        scenarios,
        suites,
        regressions,
    })
}

fn known_names(
    file: &Path,
    text: &str,
    suite: &Suite,
    scenarios: &BTreeMap<String, Scenario>,
) -> Result<(), FileError> {
    let Selection::Named(names) = &suite.scenarios else {
        return Ok(());
    };
    let source = Source { file, text };
    for (i, name) in names.iter().enumerate() {
        if !scenarios.contains_key(name) {
            let field = FieldPath::keys(&["scenarios"]).index(i);
            return Err(source.at_field(&field, format!("no scenario {name:?} in the directory")));
        }
    }
    Ok(())
}
