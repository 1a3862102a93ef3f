//! The oracle: judges a run once it is over.
//!
//! 1. No reply a client received is lost, duplicated or contradicted: every
//!    reply matches the survivor's journal, and no id got two answers.
//! 2. Never two hosts releasing output in one generation.
//! 3. The survivor's ledger and journal equal a failure-free application of
//!    the journaled transfers (money conserved, every decision right).
//! 4. After healing, the service answered every request within the bound.
//! 5. The same seed gives the same trace hash (checked by running twice).

use crate::spec::GuestKind;
use crate::world::{World, HOST_NAMES};
use machine::guests::ledger_load::{check_disk_ledger, check_ledger, LedgerProblem, ProblemKind};
use machine::Engine as _;
use protocol::RoleKind;
use std::collections::BTreeMap;

pub use reports::{Violation, ViolationKind};

/// Bytes of code a listing shows at each vCPU's rip.
const LISTING_BYTES: usize = 48;

/// Each vCPU of host `index` at the end: its rip and the instructions
/// there (read through the guest's page tables), for the report of a
/// failed run.
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
            let engine = machine.engine();
            let linear = machine::paging::code_address(state);
            let mut entry = |gpa: machine::Gpa, len: usize| {
                let mut bytes = [0u8; 8];
                engine.read_memory(gpa, &mut bytes[..len]).ok()?;
                Some(u64::from_le_bytes(bytes))
            };
            let listing = match machine::paging::translate(state, linear, &mut entry) {
                // Up to the page's end: the next page may map elsewhere.
                Some(gpa) => {
                    let to_page_end = machine::PAGE_SIZE - gpa.0 % machine::PAGE_SIZE;
                    let mut bytes = vec![0u8; LISTING_BYTES.min(to_page_end as usize)];
                    match engine.read_memory(gpa, &mut bytes) {
                        Ok(()) => cpu_model::listing(&bytes, state.rip),
                        Err(e) => format!("   ({e})\n"),
                    }
                }
                None => {
                    format!("   (linear {linear:#x} is not mapped by the guest's page tables)\n")
                }
            };
            format!(
                "{} vCPU {vcpu} rip {:#x}:\n{listing}",
                HOST_NAMES[index], state.rip
            )
        })
        .collect()
}

/// The violation a problem of the ledger check is: a reply that the
/// journal contradicts, answered twice, for an id never sent or unreadable,
/// or a request sent twice with different contents breaks oracle 1; the
/// rest (the ledger does not replay) oracle 3. The real-world judge
/// (`history::judge`) sorts its problems the same way.
pub(crate) fn ledger_violation(problem: LedgerProblem) -> Violation {
    let kind = match problem.kind {
        ProblemKind::ReplyUnreadable => ViolationKind::ReplyUnreadable,
        ProblemKind::ReplyToUnsentId => ViolationKind::ReplyToUnsentId,
        ProblemKind::AnsweredTwice => ViolationKind::AnsweredTwice,
        ProblemKind::SentTwice => ViolationKind::SentTwice,
        ProblemKind::ReplyContradictsJournal => ViolationKind::ReplyContradictsJournal,
        ProblemKind::JournalOutOfSequence => ViolationKind::JournalOutOfSequence,
        ProblemKind::JournaledTwice => ViolationKind::JournaledTwice,
        ProblemKind::WrongDecision => ViolationKind::WrongDecision,
        ProblemKind::BalanceDisagrees => ViolationKind::BalanceDisagrees,
        ProblemKind::MoneyNotConserved => ViolationKind::MoneyNotConserved,
        ProblemKind::IdsJournaledWrong => ViolationKind::IdsJournaledWrong,
    };
    Violation::new(kind, problem.message)
}

/// Judges the world at the end of a run.
pub fn judge(world: &mut World) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (generation, hosts) in &world.releases {
        if hosts.len() > 1 {
            violations.push(Violation::new(
                ViolationKind::TwoReleasers,
                format!("hosts {hosts:?} both released output in {generation}"),
            ));
        }
    }
    for error in &world.host_errors {
        violations.push(Violation::new(
            ViolationKind::HostError,
            format!("host error: {error}"),
        ));
    }
    if world.vm_lost.is_some() {
        // Beyond the fault model: nobody can answer, and there is no
        // survivor to judge. Replies already seen must still agree.
        for client in &world.clients {
            violations.extend(client.bad.iter().cloned().map(ledger_violation));
        }
        return violations;
    }
    let total = world.spec.requests_total();
    let answered: u64 = world.clients.iter().map(|c| c.replies.len() as u64).sum();
    if answered < total {
        violations.push(Violation::new(
            ViolationKind::Unanswered,
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
        violations.push(Violation::new(
            ViolationKind::HolderDown,
            format!(
                "the witness's holder {} is down at the end",
                HOST_NAMES[survivor]
            ),
        ));
        return violations;
    };
    if host.role() != RoleKind::Primary || host.node().generation() != grant.generation {
        violations.push(Violation::new(
            ViolationKind::HolderNotPrimary,
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
    let check = match world.spec.guest {
        GuestKind::Ledger => check_ledger,
        // Its balances live in a process the oracle cannot read: oracle 3
        // checks every decision against the records before it and the
        // money the journal moves.
        GuestKind::Linux => check_disk_ledger,
    };
    let checked = check(host.machine(), &ledger, &replies, &bad, expected);
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(problems)) => {
            violations.extend(problems.into_iter().map(ledger_violation));
        }
        Err(e) => violations.push(Violation::new(
            ViolationKind::SurvivorUnreadable,
            format!("survivor unreadable: {e}"),
        )),
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::RunSpec;
    use protocol::Time;

    #[test]
    fn ledger_problems_are_sorted_into_oracles_by_kind_whatever_their_text() {
        use reports::Oracle;
        // Text that a substring match would have put under oracle 1.
        let text = "journal record 3 does not match: answered, unsent, sent as";
        let v = ledger_violation(LedgerProblem::new(ProblemKind::WrongDecision, text));
        assert_eq!(
            (v.kind, v.oracle),
            (ViolationKind::WrongDecision, Oracle::STATE)
        );
        assert_eq!(v.message, text);
        let sorted = [
            (ProblemKind::ReplyUnreadable, Oracle::REPLIES),
            (ProblemKind::ReplyToUnsentId, Oracle::REPLIES),
            (ProblemKind::AnsweredTwice, Oracle::REPLIES),
            (ProblemKind::SentTwice, Oracle::REPLIES),
            (ProblemKind::ReplyContradictsJournal, Oracle::REPLIES),
            (ProblemKind::JournalOutOfSequence, Oracle::STATE),
            (ProblemKind::JournaledTwice, Oracle::STATE),
            (ProblemKind::BalanceDisagrees, Oracle::STATE),
            (ProblemKind::MoneyNotConserved, Oracle::STATE),
            (ProblemKind::IdsJournaledWrong, Oracle::STATE),
        ];
        for (kind, oracle) in sorted {
            let v = ledger_violation(LedgerProblem::new(kind, "reply does not match"));
            assert_eq!(v.oracle, oracle, "{kind:?}");
        }
    }

    /// The Linux kernel runs at 0xffffffff8...: its listing is read
    /// through its page tables, not at rip as a physical address.
    #[test]
    fn a_linux_guests_listing_reads_its_kernel_code_through_its_page_tables() {
        if let Err(e) = cpu_model::linux::LinuxGuest::from_env() {
            eprintln!("==================================================================");
            eprintln!("SKIPPED: {e}");
            eprintln!("==================================================================");
            return;
        }
        let mut spec = RunSpec::baseline("listing-linux", 1);
        spec.guest = GuestKind::Linux;
        let mut world = World::new(spec, false);
        world.boot_host(0, Time(0));
        let listings = vcpu_listings(&mut world, 0);
        assert_eq!(listings.len(), 2, "{listings:?}");
        for listing in &listings {
            let header = listing.lines().next().expect("a header line");
            assert!(header.contains(" rip 0xffffffff8"), "kernel text: {header}");
            assert!(
                listing.lines().nth(1).is_some_and(|l| l.starts_with("=> ")),
                "an instruction listed: {listing}"
            );
            assert!(!listing.contains("not mapped"), "{listing}");
        }
    }

    #[test]
    fn every_vcpu_listing_ends_its_lines_so_listings_can_be_printed_one_after_another() {
        let mut world = World::new(RunSpec::baseline("listing", 1), false);
        world.boot_host(0, Time(0));
        let up = vcpu_listings(&mut world, 0);
        let down = vcpu_listings(&mut world, 1);
        assert_eq!(up.len(), 2, "one listing per vCPU: {up:?}");
        assert_eq!(down, ["b is down\n"]);
        for (vcpu, listing) in up.iter().enumerate() {
            assert!(listing.ends_with('\n'), "{listing:?}");
            let header = listing.lines().next().expect("a header line");
            assert!(
                header.starts_with(&format!("a vCPU {vcpu} rip 0x")),
                "{header}"
            );
            assert!(
                listing.lines().nth(1).is_some_and(|l| l.starts_with("=> ")),
                "{listing}"
            );
        }
        let printed: String = up.iter().chain(&down).cloned().collect();
        assert_eq!(
            printed
                .lines()
                .filter(|l| l.contains(" vCPU ") || l.ends_with("is down"))
                .count(),
            3,
            "{printed}"
        );
    }
}
