//! The service address that moves with the primary, the way keepalived
//! moves a virtual IP: the primary adds it to its interface and announces
//! it with gratuitous ARP (again every `ANNOUNCE_INTERVAL`, since a
//! neighbour ignores an update within its ARP lock time); a host that
//! steps down removes it. iproute2's `ip` and iputils' `arping` do the
//! work, so this module holds no raw sockets.

use protocol::Generation;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a primary announces the address again, once it is settled.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(1000);
/// The first announcements after taking the address over come sooner (as
/// keepalived repeats its gratuitous ARP): one that a neighbour missed or
/// ignored costs this long, not a whole interval.
pub const ANNOUNCE_FIRST: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
];
/// Announcements still running at most; beyond it none is started.
pub const ANNOUNCERS_MAX: usize = 4;

/// A virtual address on an interface.
#[derive(Debug, Clone)]
pub struct ServiceAddress {
    /// The address with its prefix, as `ip` takes it: `10.77.0.100/24`.
    pub cidr: String,
    /// The interface it goes on.
    pub interface: String,
    held: Option<Generation>,
    next_announce: Option<Instant>,
    /// Announcements since the address was taken over.
    announced: usize,
    announcers: Vec<u32>,
}

impl ServiceAddress {
    /// The address `cidr` on `interface`, not held.
    pub fn new(cidr: String, interface: String) -> ServiceAddress {
        ServiceAddress {
            cidr,
            interface,
            held: None,
            next_announce: None,
            announced: 0,
            announcers: Vec::new(),
        }
    }

    fn ip(&self) -> &str {
        self.cidr.split('/').next().unwrap_or(&self.cidr)
    }

    /// Holds the address as the primary of `generation`: adds it on
    /// taking over, and announces it now and then.
    pub async fn hold(&mut self, generation: Generation) {
        let now = Instant::now();
        if self.held.is_none() {
            let added = run_ip(&["addr", "replace", &self.cidr, "dev", &self.interface]);
            if let Err(e) = added {
                tracing::error!(error = %e, cidr = %self.cidr, "cannot add the service address");
                return;
            }
            tracing::info!(cidr = %self.cidr, ?generation, "service address held");
            self.next_announce = None;
            self.announced = 0;
        }
        self.held = Some(generation);
        if self.next_announce.is_none_or(|at| now >= at) {
            let wait = ANNOUNCE_FIRST
                .get(self.announced)
                .copied()
                .unwrap_or(ANNOUNCE_INTERVAL);
            self.announced += 1;
            self.next_announce = Some(now + wait);
            self.announce();
        }
    }

    /// Lets the address go (also at start: a previous life of this host
    /// may have left it).
    pub async fn release(&mut self) {
        // An address that is not there is fine.
        let _ = run_ip(&["addr", "del", &self.cidr, "dev", &self.interface]);
        if self.held.take().is_some() {
            tracing::info!(cidr = %self.cidr, "service address dropped");
        }
    }

    /// Gratuitous ARP, in the background; finished announcers are reaped.
    fn announce(&mut self) {
        self.announcers.retain(|pid| !reaped(*pid));
        if self.announcers.len() >= ANNOUNCERS_MAX {
            return;
        }
        let child = Command::new("arping")
            .args(["-U", "-c", "1", "-I", &self.interface, self.ip()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                self.announcers.push(child.id());
                REAPER.with(|r| r.borrow_mut().push(child));
            }
            Err(e) => tracing::warn!(error = %e, "arping did not start: no gratuitous ARP"),
        }
    }
}

thread_local! {
    /// Announcers started on this thread, waited for once they end.
    static REAPER: std::cell::RefCell<Vec<Child>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn reaped(pid: u32) -> bool {
    REAPER.with(|r| {
        let mut children = r.borrow_mut();
        let Some(i) = children.iter().position(|c| c.id() == pid) else {
            return true;
        };
        match children[i].try_wait() {
            Ok(None) => false,
            _ => {
                // Ended: wait() returns its kept status at once.
                let _ = children.swap_remove(i).wait();
                true
            }
        }
    })
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
