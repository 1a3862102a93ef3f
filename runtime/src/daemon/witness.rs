//! `lockstep witness`: the witness of one VM's pair of hosts as a daemon.
//! A grant is durable (written, fsynced, renamed, the directory fsynced)
//! before the answer that carries it leaves, so a restarted witness never
//! grants a generation twice.

use super::durable::{self, DurableError};
use super::net::DATAGRAM_BYTES_MAX;
use crate::driver::{Transmit, WitnessHost};
use protocol::{Generation, Grant, NodeId, Time};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;
use tokio::net::UdpSocket;

/// Everything the witness daemon needs, as its configuration file says.
#[derive(Debug, Clone)]
pub struct WitnessSettings {
    /// The witness's node id.
    pub me: NodeId,
    /// The two VM hosts: ids and addresses (their `listen`).
    pub members: [(NodeId, SocketAddr); 2],
    /// Which member is primary at the very first start.
    pub bootstrap_primary: NodeId,
    /// Where frames arrive (UDP).
    pub listen: SocketAddr,
    /// The witness's durable state.
    pub state_dir: PathBuf,
    /// The key of the link to each member.
    pub keys: super::keys::LinkKeys,
}

/// A witness that cannot start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The grant could not be read or made durable.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The socket or the runtime could not be set up.
    #[error("witness socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error("state directory {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The async runtime could not start.
    #[error("async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the witness until SIGTERM or SIGINT.
pub fn run(settings: WitnessSettings) -> Result<(), WitnessError> {
    let ids = [settings.members[0].0, settings.members[1].0];
    if ids[0] == ids[1] || ids.contains(&settings.me) || !ids.contains(&settings.bootstrap_primary)
    {
        return Err(WitnessError::Config(format!(
            "members {ids:?}, witness {}, bootstrap primary {}: ids must differ and the primary be a member",
            settings.me, settings.bootstrap_primary
        )));
    }
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| WitnessError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    let grant_path = settings.state_dir.join("grant");
    let grant = match durable::read_grant(&grant_path)? {
        Some(grant) => grant,
        None => {
            let backup = ids.into_iter().find(|id| *id != settings.bootstrap_primary);
            let grant = Grant {
                generation: Generation(1),
                holder: settings.bootstrap_primary,
                backup,
            };
            durable::write_grant(&grant_path, grant)?;
            grant
        }
    };
    tracing::info!(?grant, "witness starts");
    let mut witness = WitnessHost::new(settings.me, ids, grant, super::keys::codec(&settings.keys));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WitnessError::Runtime)?;
    runtime.block_on(async move {
        let socket =
            UdpSocket::bind(settings.listen)
                .await
                .map_err(|source| WitnessError::Socket {
                    addr: settings.listen,
                    source,
                })?;
        let clock = Instant::now();
        let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
        let mut persisted = grant;
        let stop = super::stop_signal();
        tokio::pin!(stop);
        loop {
            let n = tokio::select! {
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, _)) => n,
                    Err(_) => continue,
                },
                () = &mut stop => return Ok(()),
            };
            let now = Time(u64::try_from(clock.elapsed().as_nanos()).expect("short uptimes"));
            witness.handle_frame(now, &buf[..n]);
            if witness.persisted() != persisted {
                // Durable before the answer that carries it leaves.
                durable::write_grant(&grant_path, witness.persisted())?;
                persisted = witness.persisted();
                tracing::info!(grant = ?persisted, "granted");
            }
            while let Some(Transmit::Frame { to, frame }) = witness.poll_transmit() {
                let bytes = frame.seal();
                let addr = settings
                    .members
                    .iter()
                    .find(|(id, _)| *id == to)
                    .map(|(_, a)| *a);
                if let Some(addr) = addr {
                    // A full socket buffer loses the datagram; the node asks again.
                    let _ = socket.try_send_to(&bytes, addr);
                }
            }
        }
    })
}
