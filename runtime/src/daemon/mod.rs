//! The daemons of a real deployment and the body they share with the
//! simulator: [`body`] is the event loop of a VM host over a seam;
//! [`node`] runs it on a real host, [`witness`] is the witness daemon.

pub mod address;
pub mod body;
pub mod durable;
pub mod keys;
pub mod net;
pub mod node;
pub mod witness;

pub use body::{serve, Ended, Input, Seam, Service};

/// Resolves on the first SIGTERM or SIGINT: how every Lockstep process is
/// asked to stop cleanly. Never resolves if the handlers cannot be set up
/// (the process then stops only by SIGKILL, which it survives anyway).
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
