//! Lockstep's fault catalogue as data: what can go wrong ([`FaultKind`]),
//! where ([`Target`]) and when ([`ScheduledFault`], [`FaultPlan`]); the
//! scenario, suite and regression files ([`scenario`]); and the injectors
//! that need no simulator ([`disk`]). Deterministic: every draw comes from
//! the run's seed.
#![forbid(unsafe_code)]

pub mod catalogue;
pub mod disk;
pub mod plan;
pub mod scenario;
mod spans;
pub mod timeline;

pub use catalogue::{
    ClientIndex, Direction, FaultKind, HostName, KindName, Rate, ScheduledFault, Target,
};
pub use disk::{FaultyStore, Injected};
pub use plan::{FaultPlan, PlanBounds, Swarm};
pub use scenario::{
    field_error, load_dir, load_scenario, load_suite, parse_toml, Catalogue, FileError, Level,
    Regression, Scenario, ScenarioError, Suite,
};
pub use timeline::{timeline, Phase, Step};
