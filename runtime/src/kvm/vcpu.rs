//! One host thread per vCPU. The thread owns `KVM_RUN` for its vCPU and
//! forwards every port access to the thread in [`machine::Engine::run`],
//! which owns the device bus, and waits for the answer: the bus is never
//! shared between threads. Between runs the thread waits for a command,
//! with its vCPU unlocked so the engine can read and write its state.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
use machine::{FaultKind, VcpuId};

use super::sys;

/// What the engine tells a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Enter the guest and run until halted, kicked or failed.
    Run,
    /// The answer to the last port access (the value of an `in`).
    IoDone(u32),
    /// End the thread.
    Quit,
}

/// Port access direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    In,
    Out,
}

/// What a vCPU thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// A port access; the thread waits for [`Command::IoDone`].
    Io {
        vcpu: VcpuId,
        port: u16,
        direction: Direction,
        size: u8,
        value: u32,
    },
    /// The guest executed `hlt` (rip is past it).
    Halted(VcpuId),
    /// A kick stopped the vCPU at an instruction boundary, with any port
    /// access it was in completed.
    Stopped(VcpuId),
    /// An exit the machine does not handle: the guest cannot go on.
    Failed(VcpuId, FaultKind),
    /// Not from a vCPU: the engine's [`machine::RunWaker`] was called.
    Wake,
}

/// A vCPU's file descriptor, shared between its thread (while running)
/// and the engine (while stopped).
pub(crate) type SharedVcpu = Arc<Mutex<VcpuFd>>;

/// Locks a vCPU; a thread that panicked while holding it left a vCPU that
/// is still usable for state ioctls.
pub(crate) fn lock(vcpu: &SharedVcpu) -> MutexGuard<'_, VcpuFd> {
    vcpu.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The engine's end of one vCPU thread.
#[derive(Debug)]
pub(crate) struct VcpuThread {
    pub fd: SharedVcpu,
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuThread {
    /// Starts the thread of vCPU `vcpu`, reporting to `reports`.
    pub(crate) fn spawn(
        vcpu: VcpuId,
        fd: VcpuFd,
        reports: Sender<Report>,
    ) -> std::io::Result<VcpuThread> {
        let fd: SharedVcpu = Arc::new(Mutex::new(fd));
        let (commands, inbox) = std::sync::mpsc::channel();
        let thread_fd = fd.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.0))
            .spawn(move || thread_main(vcpu, &thread_fd, &inbox, &reports))?;
        Ok(VcpuThread {
            fd,
            commands,
            thread: Some(thread),
        })
    }

    /// Sends a command; a thread that is gone is reported by the engine
    /// as a failed vCPU when no report comes.
    pub(crate) fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Kicks the vCPU out of `KVM_RUN` (or makes its next entry return at
    /// once).
    pub(crate) fn kick(&self) {
        if let Some(thread) = &self.thread {
            use vmm_sys_util::signal::Killable;
            let _ = thread.kill(sys::kick_signal());
        }
    }
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        self.send(Command::Quit);
        // A vCPU left in the guest (a run that failed to stop it) is
        // kicked out, so the join below returns.
        self.kick();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn thread_main(vcpu: VcpuId, fd: &SharedVcpu, inbox: &Receiver<Command>, reports: &Sender<Report>) {
    sys::bind_kick(&mut lock(fd));
    while let Ok(command) = inbox.recv() {
        match command {
            Command::Run => {
                // immediate_exit is left as it is: a kick may have landed
                // between the engine's Run and here, and clearing it
                // would lose that kick. A stale one costs one spurious
                // Stopped, which the engine answers with another Run.
                let mut guard = lock(fd);
                let report = run_until_stop(vcpu, &mut guard, inbox, reports);
                drop(guard);
                if reports.send(report).is_err() {
                    break;
                }
            }
            Command::IoDone(_) => {}
            Command::Quit => break,
        }
    }
    sys::unbind_kick();
}

/// Runs the vCPU until it halts, is kicked, or fails. A port access is
/// answered and the vCPU re-entered before anything else: KVM completes
/// the access on that entry (even a kicked one), so a stopped vCPU never
/// has one half done.
fn run_until_stop(
    vcpu: VcpuId,
    fd: &mut VcpuFd,
    inbox: &Receiver<Command>,
    reports: &Sender<Report>,
) -> Report {
    loop {
        let exit = match fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                return Report::Stopped(vcpu);
            }
            Err(e) => return Report::Failed(vcpu, FaultKind::Other(format!("KVM_RUN: {e}"))),
        };
        let answered = match exit {
            VcpuExit::Hlt => return Report::Halted(vcpu),
            VcpuExit::IoOut(port, data) => {
                forward(vcpu, port, Direction::Out, data, inbox, reports).map(|_| ())
            }
            VcpuExit::IoIn(port, data) => forward(vcpu, port, Direction::In, data, inbox, reports)
                .map(|value| {
                    let len = data.len();
                    data.copy_from_slice(&value.to_le_bytes()[..len]);
                }),
            VcpuExit::MmioRead(address, _) | VcpuExit::MmioWrite(address, _) => Err(
                Report::Failed(vcpu, FaultKind::MemoryOutOfRange { address }),
            ),
            VcpuExit::Shutdown => Err(Report::Failed(
                vcpu,
                FaultKind::Other("shutdown: triple fault".into()),
            )),
            other => Err(Report::Failed(
                vcpu,
                FaultKind::Other(format!("unhandled exit {other:?}")),
            )),
        };
        if let Err(report) = answered {
            return report;
        }
    }
}

/// Sends one port access to the engine and waits for its answer.
fn forward(
    vcpu: VcpuId,
    port: u16,
    direction: Direction,
    data: &[u8],
    inbox: &Receiver<Command>,
    reports: &Sender<Report>,
) -> Result<u32, Report> {
    let size = match data.len() {
        1 | 2 | 4 => data.len() as u8,
        n => {
            let what = format!("port access of {n} bytes");
            return Err(Report::Failed(vcpu, FaultKind::Other(what)));
        }
    };
    let mut bytes = [0u8; 4];
    if direction == Direction::Out {
        bytes[..data.len()].copy_from_slice(data);
    }
    let request = Report::Io {
        vcpu,
        port,
        direction,
        size,
        value: u32::from_le_bytes(bytes),
    };
    if reports.send(request).is_err() {
        return Err(Report::Failed(vcpu, FaultKind::Other("engine gone".into())));
    }
    loop {
        match inbox.recv() {
            Ok(Command::IoDone(value)) => return Ok(value),
            Ok(Command::Run) => continue,
            Ok(Command::Quit) | Err(_) => {
                let what = FaultKind::Other("quit during port access".into());
                return Err(Report::Failed(vcpu, what));
            }
        }
    }
}
