//! Large buffers freed off the driver's thread. Freeing a round of
//! hundreds of MiB returns every one of its pages to the kernel, which
//! takes as long as an epoch (about 20 ms for 256 MiB): done in the step
//! that received the joiner's ack, it paused the primary's guest for it.
//! Freed here, on a thread of their own, it costs the guest nothing.

use bytes::Bytes;
use std::sync::mpsc;
use std::sync::OnceLock;

/// Buffers at least this large are freed elsewhere; smaller ones, where
/// they are dropped.
pub(crate) const FREED_ELSEWHERE_BYTES: usize = 4 << 20;

/// The thread that frees what it is sent (started at the first use; `None`
/// if the OS would not start it, and then buffers are freed in place).
fn reaper() -> Option<&'static mpsc::Sender<Box<dyn Send>>> {
    static REAPER: OnceLock<Option<mpsc::Sender<Box<dyn Send>>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
            std::thread::Builder::new()
                .name("lockstep-free".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Drops `value`, which holds `len` bytes, on the reaper's thread if
/// that is large.
pub(crate) fn free<T: Send + 'static>(value: T, len: usize) {
    if len >= FREED_ELSEWHERE_BYTES {
        if let Some(reaper) = reaper() {
            // A failed send hands the value back, and it drops here.
            let _ = reaper.send(Box::new(value));
        }
    }
}

/// Large buffers handed to the protocol, kept until it lets them go.
#[derive(Debug, Default)]
pub(crate) struct Handed(Vec<Bytes>);

impl Handed {
    /// `bytes` go to the protocol: a large buffer is remembered.
    pub(crate) fn note(&mut self, bytes: &Bytes) {
        if bytes.len() >= FREED_ELSEWHERE_BYTES {
            self.0.push(bytes.clone());
        }
    }

    /// Frees, elsewhere, each buffer nobody but us holds any more.
    pub(crate) fn free_released(&mut self) {
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].is_unique() {
                let bytes = self.0.swap_remove(i);
                let len = bytes.len();
                free(bytes, len);
            } else {
                i += 1;
            }
        }
    }

    /// Buffers still held by someone else.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_kept_until_only_we_hold_it() {
        let mut handed = Handed::default();
        let big = Bytes::from(vec![7u8; FREED_ELSEWHERE_BYTES]);
        let small = Bytes::from(vec![7u8; 100]);
        handed.note(&big);
        handed.note(&small);
        assert_eq!(handed.len(), 1, "a small buffer is not remembered");
        let slice = big.slice(10..20);
        drop(big);
        handed.free_released();
        assert_eq!(handed.len(), 1, "a slice of it is still out there");
        drop(slice);
        handed.free_released();
        assert_eq!(handed.len(), 0, "freed once nobody else holds it");
    }
}
