//! The oracle: judges a run once it is over.
//!
//! 1. No reply a client received is lost, duplicated or contradicted: every
//!    reply matches the survivor's journal, and no id got two answers.
//! 2. Never two hosts releasing output in one generation.
//! 3. The survivor's ledger and journal equal a failure-free application of
//!    the journaled transfers (money conserved, every decision right).
//! 4. After healing, the service answered every request within the bound.
//! 5. The same seed gives the same trace hash (checked by running twice).

use crate::world::{World, HOST_NAMES};
use machine::guests::ledger_load::check_ledger;
use machine::Engine as _;
use protocol::RoleKind;
use std::collections::BTreeMap;

/// A broken property of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which oracle (1 to 5).
    pub oracle: u8,
    /// What it saw.
    pub message: String,
}

fn violation(oracle: u8, message: impl Into<String>) -> Violation {
    Violation {
        oracle,
        message: message.into(),
    }
}

/// Each vCPU of host `index` at the end: its rip and the instructions
/// there, for the report of a failed run.
pub fn vcpu_listings(world: &mut World, index: usize) -> Vec<String> {
    let Some(host) = world.hosts[index].host.as_mut() else {
        return vec![format!("{} is down\n", HOST_NAMES[index])];
    };
    let machine = host.machine();
    let states = match machine.vcpu_states() {
        Ok(states) => states,
        Err(e) => {
            return vec![format!(
                "{} vCPU state unreadable: {e}\n",
                HOST_NAMES[index]
            )]
        }
    };
    states
        .iter()
        .enumerate()
        .map(|(vcpu, state)| {
            let mut bytes = [0u8; 48];
            let read = machine
                .engine()
                .read_memory(machine::Gpa(state.rip), &mut bytes);
            let listing = match read {
                Ok(()) => cpu_model::listing(&bytes, state.rip),
                Err(e) => format!("   ({e})\n"),
            };
            format!(
                "{} vCPU {vcpu} rip {:#x}:\n{listing}",
                HOST_NAMES[index], state.rip
            )
        })
        .collect()
}

/// Which oracle a problem of the ledger check breaks: a reply that the
/// journal contradicts, answered twice, for an id never sent, or a request
/// sent twice with different contents is oracle 1; the rest (the ledger
/// does not replay) oracle 3. The real-world judge (`history::judge`)
/// sorts its problems the same way.
pub(crate) fn ledger_oracle(problem: &str) -> u8 {
    let replies = ["does not match", "answered", "unsent", "sent as"];
    if replies.iter().any(|r| problem.contains(r)) {
        1
    } else {
        3
    }
}

/// Judges the world at the end of a run.
pub fn judge(world: &mut World) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (generation, hosts) in &world.releases {
        if hosts.len() > 1 {
            violations.push(violation(
                2,
                format!("hosts {hosts:?} both released output in {generation}"),
            ));
        }
    }
    for error in &world.host_errors {
        violations.push(violation(3, format!("host error: {error}")));
    }
    if world.vm_lost.is_some() {
        // Beyond the fault model: nobody can answer, and there is no
        // survivor to judge. Replies already seen must still agree.
        for client in &world.clients {
            violations.extend(client.bad.iter().map(|b| violation(1, b.clone())));
        }
        return violations;
    }
    let total = world.spec.requests_total();
    let answered: u64 = world.clients.iter().map(|c| c.replies.len() as u64).sum();
    if answered < total {
        violations.push(violation(
            4,
            format!("{answered} of {total} requests answered by the end of the liveness phase"),
        ));
    }
    let grant = world.witness.grant;
    let survivor = usize::from(grant.holder.0);
    let ledger = world.ledger();
    let mut replies = BTreeMap::new();
    let mut bad = Vec::new();
    for client in &world.clients {
        replies.extend(client.replies.iter().map(|(id, r)| (*id, *r)));
        bad.extend(client.bad.iter().cloned());
    }
    let Some(host) = world.hosts[survivor].host.as_mut() else {
        violations.push(violation(
            4,
            format!(
                "the witness's holder {} is down at the end",
                HOST_NAMES[survivor]
            ),
        ));
        return violations;
    };
    if host.role() != RoleKind::Primary || host.node().generation() != grant.generation {
        violations.push(violation(
            4,
            format!(
                "the witness's holder {} is {:?} in {} at the end, grant {}",
                HOST_NAMES[survivor],
                host.role(),
                host.node().generation(),
                grant.generation
            ),
        ));
        return violations;
    }
    let expected = (answered == total).then_some(total);
    match check_ledger(host.machine(), &ledger, &replies, &bad, expected) {
        Ok(Ok(_)) => {}
        Ok(Err(problems)) => {
            for problem in problems {
                violations.push(violation(ledger_oracle(&problem), problem));
            }
        }
        Err(e) => violations.push(violation(3, format!("survivor unreadable: {e}"))),
    }
    violations
}
