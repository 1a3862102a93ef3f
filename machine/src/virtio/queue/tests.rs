use super::*;
use crate::virtio::testing::{add_chain, desc, memory, BUFFERS, MEMORY_BYTES, NEXT, WRITE};
use quickcheck::{Arbitrary, Gen, QuickCheck};
use virtio_queue::mock::MockSplitQueue;

const SIZE: u16 = 16;

fn queue_of(mock: &MockSplitQueue<'_, GuestMemory>) -> Queue {
    mock.create_queue().expect("mock queue")
}

#[test]
fn a_well_formed_chain_comes_off_in_order() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, SIZE);
    add_chain(
        &mock,
        0,
        &[
            (BUFFERS, 16, 0),
            (BUFFERS + 0x100, 512, WRITE),
            (BUFFERS + 0x400, 1, WRITE),
        ],
    );
    let mut queue = queue_of(&mock);
    let chain = pop_chain(&mut queue, &mem)
        .expect("one chain")
        .expect("well formed");
    assert_eq!(chain.head, 0);
    assert_eq!(chain.readable().count(), 1);
    assert_eq!(
        chain.writable().map(|d| d.len()).collect::<Vec<_>>(),
        vec![512, 1]
    );
    for d in &chain.descriptors {
        assert!(check_range(&mem, chain.head, d).is_ok());
    }
    assert!(
        pop_chain(&mut queue, &mem).is_none(),
        "nothing more available"
    );
}

#[test]
fn a_loop_and_a_chain_past_the_table_are_unterminated() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, SIZE);
    // 0 -> 1 -> 0 -> ...
    mock.add_desc_chains(&[desc(BUFFERS, 8, NEXT, 1), desc(BUFFERS, 8, NEXT, 0)], 0)
        .expect("fits");
    let mut queue = queue_of(&mock);
    let popped = pop_chain(&mut queue, &mem).expect("a chain");
    assert!(
        matches!(popped, Err((0, ChainError::Unterminated { head: 0 }))),
        "{popped:?}"
    );
    let mock = MockSplitQueue::new(&mem, SIZE);
    mock.add_desc_chains(&[desc(BUFFERS, 8, NEXT, SIZE + 3)], 0)
        .expect("fits");
    let mut queue = queue_of(&mock);
    assert!(matches!(
        pop_chain(&mut queue, &mem),
        Some(Err((0, ChainError::Unterminated { .. })))
    ));
}

#[test]
fn a_buffer_outside_memory_is_refused() {
    let mem = memory();
    let end = MEMORY_BYTES as u64;
    let inside = desc(end - 16, 16, 0, 0);
    let across = desc(end - 16, 17, 0, 0);
    let wrapping = desc(u64::MAX - 2, 8, 0, 0);
    let d = |raw: RawDesc| Descriptor::from(raw);
    assert!(check_range(&mem, 0, &d(inside)).is_ok());
    assert!(matches!(
        check_range(&mem, 0, &d(across)),
        Err(ChainError::OutOfRange { .. })
    ));
    assert!(check_range(&mem, 0, &d(wrapping)).is_err());
}

type RawDesc = virtio_queue::desc::RawDescriptor;

/// A descriptor table as a guest could write it: any addresses, lengths,
/// flags (NEXT, WRITE, INDIRECT) and next indices, around the table's
/// size, and any available head.
#[derive(Debug, Clone)]
struct Table {
    descs: Vec<(u64, u32, u16, u16)>,
    head: u16,
}

impl Arbitrary for Table {
    fn arbitrary(g: &mut Gen) -> Table {
        let addr = |g: &mut Gen| match u8::arbitrary(g) % 4 {
            0 => u64::arbitrary(g),
            1 => MEMORY_BYTES as u64 - u64::from(u16::arbitrary(g) % 64),
            _ => BUFFERS + u64::from(u16::arbitrary(g)),
        };
        let descs = (0..SIZE)
            .map(|_| {
                (
                    addr(g),
                    u32::arbitrary(g) % 0x2_0000,
                    u16::arbitrary(g) & 0b111,
                    u16::arbitrary(g) % (SIZE + 4),
                )
            })
            .collect();
        Table {
            descs,
            head: u16::arbitrary(g) % (SIZE + 2),
        }
    }
}

/// Whatever the guest wrote, popping a chain does not panic, and a chain
/// accepted is terminated and bounded; its buffers are then checked.
fn popping_never_panics(table: Table) -> bool {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, SIZE);
    for (i, &(addr, len, flags, next)) in table.descs.iter().enumerate() {
        mock.desc_table()
            .store(i as u16, desc(addr, len, flags, next))
            .expect("in the table");
    }
    mock.avail()
        .ring()
        .ref_at(0)
        .expect("ring")
        .store(table.head);
    mock.avail().idx().store(1);
    let mut queue = queue_of(&mock);
    match pop_chain(&mut queue, &mem) {
        None => true,
        Some(Err(_)) => true,
        Some(Ok(chain)) => {
            for d in &chain.descriptors {
                let _ = check_range(&mem, chain.head, d);
            }
            chain.descriptors.len() <= CHAIN_DESCRIPTORS_MAX
                && !chain.descriptors.last().expect("not empty").has_next()
        }
    }
}

#[test]
fn any_descriptor_table_is_an_error_or_a_bounded_chain_never_a_panic() {
    QuickCheck::new()
        .tests(500)
        .quickcheck(popping_never_panics as fn(Table) -> bool);
}

#[test]
fn queue_state_round_trips_and_bad_sizes_are_refused() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, SIZE);
    let queue = queue_of(&mock);
    let mut w = Writer::new();
    save_queue(&queue, &mut w);
    let bytes = w.into_bytes();
    let back = restore_queue(&mut Reader::new(&bytes), SIZE).expect("decodes");
    assert_eq!(back.state(), queue.state());
    assert!(
        restore_queue(&mut Reader::new(&bytes), 8).is_err(),
        "bigger than its max"
    );
    let mut odd = bytes;
    odd[..2].copy_from_slice(&3u16.to_le_bytes());
    assert!(
        restore_queue(&mut Reader::new(&odd), SIZE).is_err(),
        "not a power of two"
    );
}
