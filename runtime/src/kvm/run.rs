//! [`KvmEngine::run_for`]: the thread that calls `run` owns the device
//! bus; the vCPU threads send it their port accesses and stops, and it
//! answers, wakes halted vCPUs, keeps guest time and kicks every vCPU
//! when the budget is spent, or its waker is called. Kept running, the
//! vCPUs stay in the guest after the run (their port accesses wait for
//! the next run) until `settle` kicks them.

use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};
use machine::devices::IoContext;
use machine::{DeviceBus, EngineError, FaultKind, GuestNs, RunExit, RunState, VcpuId};

use super::vcpu::{self, Command, Direction, Report};
use super::KvmEngine;

/// How long to wait for kicked vCPUs before kicking them again.
const KICK_RETRY: Duration = Duration::from_millis(20);
/// Kicks without an answer before the engine gives up on a vCPU.
const KICKS_MAX: u32 = 50;
/// The shortest wait for reports while a clock deadline is due.
const DEADLINE_POLL_NS: u64 = 50_000;

/// Guest time while the guest runs: host monotonic time from a base.
#[derive(Debug)]
struct Clock {
    base_ns: u64,
    base: Instant,
}

impl Clock {
    fn start(now_ns: u64) -> Clock {
        Clock {
            base_ns: now_ns,
            base: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_nanos()).expect("runs under 500 years");
        self.base_ns + elapsed
    }

    /// Skips idle time: nothing can happen before `to`.
    fn jump(&mut self, to: u64) {
        *self = Clock::start(to.max(self.now()));
    }
}

/// Whether the run goes on or is stopping its vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
}

/// Which vCPUs are inside the guest now.
#[derive(Debug, Default)]
pub(super) struct InGuest(Vec<bool>);

impl InGuest {
    /// None of `n` vCPUs.
    pub(super) fn none(n: usize) -> InGuest {
        InGuest(vec![false; n])
    }

    pub(super) fn any(&self) -> bool {
        self.0.iter().any(|&b| b)
    }
}

impl KvmEngine {
    /// Runs until `budget_ns` more of guest time passed, or until the
    /// engine's waker is called; see the module documentation for what
    /// guest time is on KVM. Kept running ([`machine::Engine::keep_running`]),
    /// the vCPUs stay in the guest when it returns.
    pub(super) fn run_for(
        &mut self,
        bus: &mut DeviceBus,
        budget_ns: u64,
    ) -> Result<RunExit, EngineError> {
        self.budget_end_ns += budget_ns;
        let end = self.budget_end_ns;
        let mut clock = Clock::start(self.now_ns);
        let mut in_guest = std::mem::take(&mut self.in_guest);
        self.wake_halted(bus, clock.now());
        if clock.now() < end {
            for v in 0..self.vcpus.len() {
                if self.run_states[v] == RunState::Running && !in_guest.0[v] {
                    self.enter(v, &mut in_guest);
                }
            }
        }
        let mut failure = None;
        let mut woken = false;
        while failure.is_none() && !woken && clock.now() < end {
            if !in_guest.any() && !Self::event_before(bus, &mut clock, end) {
                break;
            }
            let timeout = self.wait_for_reports(bus, clock.now(), end);
            match self.reports.recv_timeout(timeout) {
                Ok(Report::Wake) => {
                    self.wake_pending.store(false, Ordering::Release);
                    woken = true;
                }
                Ok(report) => {
                    failure = self.handle(report, bus, &clock, &mut in_guest, Phase::Running);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    failure = Some(EngineError::Backend("kvm: vCPU threads gone".into()));
                }
            }
            for v in self.wake_halted(bus, clock.now()) {
                self.enter(v, &mut in_guest);
            }
        }
        let stop_failure = if self.keep_running && failure.is_none() {
            None
        } else {
            self.stop_all(bus, &clock, &mut in_guest)
        };
        self.in_guest = in_guest;
        self.now_ns = self.now_ns.max(clock.now());
        if woken {
            // The rest of the budget is not owed: the host runs the guest
            // again once it has taken its input.
            self.budget_end_ns = self.now_ns;
        }
        if let Some(error) = failure.or(stop_failure) {
            return Err(error);
        }
        self.wake_halted(bus, self.now_ns);
        let idle = self.run_states.iter().all(|s| *s == RunState::Halted);
        Ok(if woken {
            RunExit::Woken
        } else if idle {
            RunExit::Idle
        } else {
            RunExit::BudgetSpent
        })
    }

    /// Stops the vCPUs a run left in the guest (see
    /// [`machine::Engine::settle`]).
    pub(super) fn settle_vcpus(&mut self, bus: &mut DeviceBus) -> Result<(), EngineError> {
        if !self.in_guest.any() {
            return Ok(());
        }
        let clock = Clock::start(self.now_ns);
        let mut in_guest = std::mem::take(&mut self.in_guest);
        let failure = self.stop_all(bus, &clock, &mut in_guest);
        self.in_guest = in_guest;
        self.now_ns = self.now_ns.max(clock.now());
        failure.map_or(Ok(()), Err)
    }

    /// Every vCPU is halted: true if the bus has a deadline before `end`
    /// (the wait for reports ends at it, or at a wake); else lets the rest
    /// of the budget pass at once and returns false.
    fn event_before(bus: &DeviceBus, clock: &mut Clock, end: u64) -> bool {
        match bus.next_deadline() {
            Some(GuestNs(at)) if at < end => true,
            _ => {
                clock.jump(end);
                false
            }
        }
    }

    /// How long to wait for the next report: until the budget's end, or
    /// until a clock deadline while some vCPU sleeps. A deadline that
    /// passed without waking anyone belongs to a running vCPU; polling
    /// for it is rate-limited.
    fn wait_for_reports(&self, bus: &DeviceBus, now: u64, end: u64) -> Duration {
        let halted = self.run_states.contains(&RunState::Halted);
        let until = match bus.next_deadline() {
            Some(GuestNs(at)) if halted => at.max(now + DEADLINE_POLL_NS).min(end),
            _ => end,
        };
        Duration::from_nanos(until.saturating_sub(now))
    }

    fn enter(&mut self, v: usize, in_guest: &mut InGuest) {
        in_guest.0[v] = true;
        self.vcpus[v].send(Command::Run);
    }

    /// Wakes the halted vCPUs that have an event at `now`; returns them.
    fn wake_halted(&mut self, bus: &mut DeviceBus, now: u64) -> Vec<usize> {
        let mut woken = Vec::new();
        for (v, run_state) in self.run_states.iter_mut().enumerate() {
            let vcpu = VcpuId(u16::try_from(v).expect("few vCPUs"));
            if *run_state == RunState::Halted && bus.wake_pending(vcpu, GuestNs(now)) {
                bus.woke(vcpu, GuestNs(now));
                *run_state = RunState::Running;
                woken.push(v);
            }
        }
        woken
    }

    /// Acts on one report of a vCPU thread; a failed vCPU is returned as
    /// the run's error.
    fn handle(
        &mut self,
        report: Report,
        bus: &mut DeviceBus,
        clock: &Clock,
        in_guest: &mut InGuest,
        phase: Phase,
    ) -> Option<EngineError> {
        match report {
            Report::Io {
                vcpu,
                port,
                direction,
                size,
                value,
            } => {
                self.stats.io_exits += 1;
                let ctx = IoContext {
                    vcpu,
                    now: GuestNs(clock.now()),
                };
                let answer = match direction {
                    Direction::In => bus.port_in(ctx, port, size),
                    Direction::Out => {
                        bus.port_out(ctx, port, size, value);
                        0
                    }
                };
                self.vcpus[usize::from(vcpu.0)].send(Command::IoDone(answer));
                None
            }
            Report::Halted(vcpu) => {
                self.stats.halts += 1;
                let v = usize::from(vcpu.0);
                in_guest.0[v] = false;
                self.run_states[v] = RunState::Halted;
                None
            }
            Report::Stopped(vcpu) => {
                let v = usize::from(vcpu.0);
                in_guest.0[v] = false;
                if phase == Phase::Running {
                    // A late kick from an earlier stop: go on.
                    self.enter(v, in_guest);
                }
                None
            }
            Report::Failed(vcpu, kind) => {
                in_guest.0[usize::from(vcpu.0)] = false;
                Some(self.guest_fault(vcpu, kind))
            }
            Report::Wake => {
                // While stopping: the host takes its input right after.
                self.wake_pending.store(false, Ordering::Release);
                None
            }
        }
    }

    /// Kicks every vCPU in the guest and serves them until all stopped.
    fn stop_all(
        &mut self,
        bus: &mut DeviceBus,
        clock: &Clock,
        in_guest: &mut InGuest,
    ) -> Option<EngineError> {
        let mut failure = None;
        let mut kicks = 0;
        let started = Instant::now();
        self.stats.stop_ns_last = 0;
        while in_guest.any() {
            if kicks == KICKS_MAX {
                return Some(EngineError::Backend("kvm: a vCPU does not stop".into()));
            }
            for (v, inside) in in_guest.0.iter().enumerate() {
                if *inside {
                    self.stats.kicks += 1;
                    self.vcpus[v].kick();
                }
            }
            kicks += 1;
            loop {
                match self.reports.recv_timeout(KICK_RETRY) {
                    Ok(report) => {
                        let error = self.handle(report, bus, clock, in_guest, Phase::Stopping);
                        failure = failure.or(error);
                        if !in_guest.any() {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Some(EngineError::Backend("kvm: vCPU threads gone".into()));
                    }
                }
            }
            self.stats.stop_ns_last = u64::try_from(started.elapsed().as_nanos())
                .expect("stops take less than a century");
        }
        failure
    }

    /// The error for a vCPU that cannot go on, with the code at its rip.
    fn guest_fault(&self, vcpu: VcpuId, kind: FaultKind) -> EngineError {
        let fd = vcpu::lock(&self.vcpus[usize::from(vcpu.0)].fd);
        let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
        drop(fd);
        let len = self.shape.memory_bytes().saturating_sub(rip).min(32) as usize;
        let mut bytes = vec![0u8; len];
        let disassembly = match machine::Engine::read_memory(self, machine::Gpa(rip), &mut bytes) {
            Ok(()) => listing(&bytes, rip),
            Err(_) => "   (rip is outside guest memory)\n".to_string(),
        };
        EngineError::GuestFault {
            vcpu,
            rip,
            kind,
            disassembly,
        }
    }
}

/// Up to four instructions at `rip`, one per line.
fn listing(bytes: &[u8], rip: u64) -> String {
    let mut formatter = IntelFormatter::new();
    let mut out = String::new();
    for instruction in Decoder::with_ip(64, bytes, rip, DecoderOptions::NONE)
        .iter()
        .take(4)
    {
        let mut text = String::new();
        formatter.format(&instruction, &mut text);
        out.push_str(&format!("   {:#010x}  {text}\n", instruction.ip()));
    }
    out
}
