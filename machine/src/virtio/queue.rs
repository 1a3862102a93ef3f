//! What the devices share about virtqueues: taking a descriptor chain off
//! a queue as a checked list (the guest's bytes are validated, never
//! trusted: a loop, an address outside guest memory or a chain longer
//! than the queue is an error the device counts), returning it used, and
//! a queue's registers in a checkpoint.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Address, GuestMemory as _, Permissions};

use super::GuestMemory;
use crate::codec::{DecodeError, Reader, Writer};

/// Most descriptors in one chain: a queue's largest size (a longer chain
/// revisits a descriptor, a loop).
pub const CHAIN_DESCRIPTORS_MAX: usize = 256;

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain's last descriptor still says "next": the chain loops,
    /// runs past the queue's size, or its next descriptor is unreadable.
    #[error("descriptor chain {head} loops or is longer than its queue")]
    Unterminated {
        /// The chain's head index.
        head: u16,
    },
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor chain {head}: buffer at {addr:#x}+{len} is outside guest memory")]
    OutOfRange {
        /// The chain's head index.
        head: u16,
        /// The buffer's address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The chain does not have the shape the device needs.
    #[error("descriptor chain {head}: {what}")]
    Shape {
        /// The chain's head index.
        head: u16,
        /// What is wrong.
        what: &'static str,
    },
}

/// A descriptor chain taken off a queue, checked.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The head index, to return it used.
    pub head: u16,
    /// Its descriptors, in order.
    pub descriptors: Vec<Descriptor>,
}

impl Chain {
    /// The chain's buffers the device reads (before its writable ones).
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| !d.is_write_only())
    }

    /// The buffers the device writes.
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(|d| d.is_write_only())
    }

    /// The error "this chain has the wrong shape".
    pub fn shape(&self, what: &'static str) -> ChainError {
        ChainError::Shape {
            head: self.head,
            what,
        }
    }
}

/// The next available chain of `queue`, if any: checked, or the error
/// that refuses it (its head is still returned used, with 0 bytes, so
/// the driver gets its descriptors back).
pub fn pop_chain(queue: &mut Queue, mem: &GuestMemory) -> Option<Result<Chain, (u16, ChainError)>> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let mut descriptors = Vec::new();
    for descriptor in chain {
        if descriptors.len() == CHAIN_DESCRIPTORS_MAX {
            return Some(Err((head, ChainError::Unterminated { head })));
        }
        descriptors.push(descriptor);
    }
    Some(check(head, descriptors).map_err(|e| (head, e)))
}

fn check(head: u16, descriptors: Vec<Descriptor>) -> Result<Chain, ChainError> {
    if descriptors.last().is_none_or(Descriptor::has_next) {
        return Err(ChainError::Unterminated { head });
    }
    Ok(Chain { head, descriptors })
}

/// Checks that a buffer lies inside guest memory.
pub fn check_range(
    mem: &GuestMemory,
    head: u16,
    descriptor: &Descriptor,
) -> Result<(), ChainError> {
    let (addr, len) = (descriptor.addr(), descriptor.len());
    let inside = len == 0 || mem.check_range(addr, len as usize, Permissions::ReadWrite);
    if !inside {
        return Err(ChainError::OutOfRange {
            head,
            addr: addr.raw_value(),
            len,
        });
    }
    Ok(())
}

/// Returns chain `head` used with `len` bytes written; whether the
/// driver wants an interrupt for it. A used ring the guest placed outside
/// its memory is an error (the device needs a reset).
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<bool, virtio_queue::Error> {
    queue.add_used(mem, head, len)?;
    queue.needs_notification(mem)
}

/// Appends a queue's registers and ring positions.
pub fn save_queue(queue: &Queue, w: &mut Writer) {
    let state = queue.state();
    w.u16(state.size);
    w.u8(u8::from(state.ready));
    w.u64(state.desc_table);
    w.u64(state.avail_ring);
    w.u64(state.used_ring);
    w.u16(state.next_avail);
    w.u16(state.next_used);
}

/// Decodes a queue of `max_size` saved by [`save_queue`].
pub fn restore_queue(r: &mut Reader<'_>, max_size: u16) -> Result<Queue, DecodeError> {
    let size = r.u16()?;
    let ready = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(DecodeError::Invalid(format!("virtio queue ready {other}"))),
    };
    let state = QueueState {
        max_size,
        size,
        ready,
        desc_table: r.u64()?,
        avail_ring: r.u64()?,
        used_ring: r.u64()?,
        next_avail: r.u16()?,
        next_used: r.u16()?,
        event_idx_enabled: false,
    };
    Queue::try_from(state).map_err(|e| DecodeError::Invalid(format!("virtio queue: {e}")))
}

#[cfg(test)]
mod tests;
