use super::*;
use crate::devices::nic::{FRAME_BYTES_MAX, RX_QUEUE_MAX};
use etherparse::{ArpPacket, Ipv4Header, SlicedPacket, TransportSlice};
use quickcheck::{QuickCheck, TestResult};

fn link() -> UdpLink {
    UdpLink::new(GUEST_MAC)
}

fn nic() -> Nic {
    Nic::new(1).with_packet_bytes_max(FRAME_BYTES_MAX)
}

/// A datagram as the guest's stack sends it: Ethernet to `to_mac`, IPv4
/// from `from` to `to`, UDP between the ports, checksums right.
fn guest_datagram(to_mac: [u8; 6], ports: (u16, u16), from: [u8; 4], payload: &[u8]) -> Packet {
    let builder = PacketBuilder::ethernet2(GUEST_MAC, to_mac)
        .ipv4(from, HOST_IPV4, 64)
        .udp(ports.0, ports.1);
    let mut frame = Vec::new();
    builder.write(&mut frame, payload).expect("writes");
    frame
}

/// The ledger's reply as the guest sends it to the host.
fn guest_reply(payload: &[u8]) -> Packet {
    guest_datagram(HOST_MAC, (LEDGER_PORT, HOST_PORT), GUEST_IPV4, payload)
}

/// An ARP frame from the guest, broadcast.
fn guest_arp(operation: ArpOperation, target_ipv4: [u8; 4]) -> Packet {
    let arp = ArpEthIpv4Packet {
        operation,
        sender_mac: GUEST_MAC,
        sender_ipv4: GUEST_IPV4,
        target_mac: [0; 6],
        target_ipv4,
    };
    let builder = PacketBuilder::ethernet2(GUEST_MAC, [0xff; 6]).arp(ArpPacket::from(arp));
    let mut frame = Vec::new();
    builder.write(&mut frame).expect("writes");
    frame
}

const IPV4_AT: usize = 14;
const UDP_AT: usize = IPV4_AT + 20;

#[test]
fn the_guests_init_script_uses_the_seams_address_and_port() {
    let init = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-linux/init"));
    let [a, b, c, d] = GUEST_IPV4;
    let address = format!("GUEST_ADDRESS={a}.{b}.{c}.{d}/{GUEST_PREFIX_LEN}");
    assert!(init.lines().any(|l| l == address), "init sets {address}");
    let port = format!("LEDGER_PORT={LEDGER_PORT}");
    assert!(init.lines().any(|l| l == port), "init sets {port}");
    // The host's address is on the guest's link, so the guest resolves it
    // by ARP rather than looking for a router.
    let prefix = u32::MAX << (32 - GUEST_PREFIX_LEN);
    assert_eq!(
        u32::from_be_bytes(HOST_IPV4) & prefix,
        u32::from_be_bytes(GUEST_IPV4) & prefix
    );
}

#[test]
fn a_request_is_a_udp_datagram_from_the_host_to_the_ledger_with_right_checksums() {
    let payload: Vec<u8> = (0..32).collect();
    let frame = link()
        .request_frame(&payload, FRAME_BYTES_MAX)
        .expect("fits");
    assert_eq!(frame.len(), UDP_FRAME_OVERHEAD_BYTES + payload.len());
    let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
    let ethernet = sliced
        .link
        .and_then(|l| l.to_header())
        .and_then(|h| h.ethernet2())
        .expect("Ethernet II");
    assert_eq!(
        (ethernet.source, ethernet.destination),
        (HOST_MAC, GUEST_MAC)
    );
    let ipv4 = sliced
        .net
        .as_ref()
        .and_then(|n| n.ipv4_ref())
        .expect("IPv4");
    let header = ipv4.header().to_header();
    assert_eq!((header.source, header.destination), (HOST_IPV4, GUEST_IPV4));
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("UDP")
    };
    assert_eq!(
        (udp.source_port(), udp.destination_port()),
        (HOST_PORT, LEDGER_PORT)
    );
    assert_eq!(udp.payload(), &payload[..]);
    let checksum = udp
        .to_header()
        .calc_checksum_ipv4(&header, udp.payload())
        .expect("short");
    assert_eq!(udp.checksum(), checksum);
    assert_ne!(udp.checksum(), 0, "the host computes its checksums");
}

#[test]
fn a_payload_that_no_frame_holds_is_refused_not_truncated() {
    let most = FRAME_BYTES_MAX - UDP_FRAME_OVERHEAD_BYTES;
    assert!(link()
        .request_frame(&vec![7; most], FRAME_BYTES_MAX)
        .is_some());
    assert_eq!(
        link().request_frame(&vec![7; most + 1], FRAME_BYTES_MAX),
        None
    );
    let mut nic = nic();
    let udp = ClientLink::Udp(link());
    assert_eq!(
        udp.deliver(&mut nic, vec![7; most + 1]),
        Err(NicError::TooLong(most + 1))
    );
    assert_eq!(nic.rx_len(), 0);
}

#[test]
fn the_ledgers_reply_to_the_host_comes_out_as_its_payload() {
    let payload = vec![0xa5; 24];
    assert_eq!(
        link().classify(&guest_reply(&payload)),
        FromGuest::Payload(payload)
    );
}

#[test]
fn an_arp_request_for_the_host_is_answered_to_whoever_asked() {
    let FromGuest::ArpRequest(answer) =
        link().classify(&guest_arp(ArpOperation::REQUEST, HOST_IPV4))
    else {
        panic!("answered")
    };
    let ethernet = Ethernet2Slice::from_slice_without_fcs(&answer).expect("Ethernet");
    assert_eq!(
        (ethernet.source(), ethernet.destination()),
        (HOST_MAC, GUEST_MAC)
    );
    assert_eq!(ethernet.ether_type(), EtherType::ARP);
    let arp = etherparse::ArpPacketSlice::from_slice(ethernet.payload_slice())
        .expect("ARP")
        .to_packet()
        .try_eth_ipv4()
        .expect("Ethernet/IPv4 ARP");
    let expected = ArpEthIpv4Packet {
        operation: ArpOperation::REPLY,
        sender_mac: HOST_MAC,
        sender_ipv4: HOST_IPV4,
        target_mac: GUEST_MAC,
        target_ipv4: GUEST_IPV4,
    };
    assert_eq!(arp, expected);
}

#[test]
fn what_the_host_does_not_take_is_dropped_by_kind() {
    let reply = guest_reply(&[1; 24]);
    let mut bad_ip_checksum = reply.clone();
    bad_ip_checksum[IPV4_AT + 10] ^= 1;
    let mut bad_udp_checksum = reply.clone();
    *bad_udp_checksum.last_mut().expect("a payload") ^= 1;
    let mut fragment = reply.clone();
    fragment[IPV4_AT + 6] |= 0x20; // more fragments
    let mut header = Ipv4Header::from_slice(&fragment[IPV4_AT..])
        .expect("IPv4")
        .0;
    header.header_checksum = header.calc_header_checksum();
    fragment[IPV4_AT + 10..IPV4_AT + 12].copy_from_slice(&header.header_checksum.to_be_bytes());
    let mut ipv6 = reply.clone();
    ipv6[12..14].copy_from_slice(&EtherType::IPV6.0.to_be_bytes());
    let mut vlan = reply.clone();
    vlan[12..14].copy_from_slice(&EtherType::VLAN_TAGGED_FRAME.0.to_be_bytes());
    let mut icmp = reply.clone();
    icmp[IPV4_AT + 9] = IpNumber::ICMP.0;
    let mut header = Ipv4Header::from_slice(&icmp[IPV4_AT..]).expect("IPv4").0;
    header.header_checksum = header.calc_header_checksum();
    icmp[IPV4_AT + 10..IPV4_AT + 12].copy_from_slice(&header.header_checksum.to_be_bytes());
    let cases = [
        (vec![0; 13], Dropped::Malformed),
        (reply[..reply.len() - 1].to_vec(), Dropped::Malformed),
        (bad_ip_checksum, Dropped::BadChecksum),
        (bad_udp_checksum, Dropped::BadChecksum),
        (
            guest_datagram(
                [2, 0, 0, 0, 0, 9],
                (LEDGER_PORT, HOST_PORT),
                GUEST_IPV4,
                &[1],
            ),
            Dropped::NotForHost,
        ),
        (
            guest_datagram([0xff; 6], (LEDGER_PORT, HOST_PORT), GUEST_IPV4, &[1]),
            Dropped::NotForHost,
        ),
        (
            guest_datagram(HOST_MAC, (LEDGER_PORT, 53), GUEST_IPV4, &[1]),
            Dropped::OtherPort,
        ),
        (
            guest_datagram(HOST_MAC, (68, HOST_PORT), GUEST_IPV4, &[1]),
            Dropped::OtherPort,
        ),
        (
            guest_datagram(HOST_MAC, (LEDGER_PORT, HOST_PORT), [10, 7, 0, 9], &[1]),
            Dropped::Ipv4NotForHost,
        ),
        (fragment, Dropped::Fragment),
        (icmp, Dropped::NotUdp),
        (ipv6, Dropped::Ipv6),
        (vlan, Dropped::OtherEtherType),
        (
            guest_arp(ArpOperation::REQUEST, [10, 7, 0, 3]),
            Dropped::ArpNotForHost,
        ),
        (
            guest_arp(ArpOperation::REPLY, HOST_IPV4),
            Dropped::ArpNotForHost,
        ),
    ];
    for (frame, why) in cases {
        assert_eq!(
            link().classify(&frame),
            FromGuest::Dropped(why),
            "{frame:x?}"
        );
    }
}

#[test]
fn taking_the_output_answers_arp_into_rx_and_hands_out_replies_in_order() {
    let mut nic = nic();
    let udp = ClientLink::Udp(link());
    nic.send(guest_arp(ArpOperation::REQUEST, HOST_IPV4));
    nic.send(guest_reply(&[1; 24]));
    let mut to_elsewhere = guest_reply(&[3; 24]);
    to_elsewhere[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    nic.send(to_elsewhere);
    nic.send(guest_reply(&[2; 24]));
    let mut counts = LinkCounts::default();
    let payloads = udp.take_output(&mut nic, &mut counts);
    assert_eq!(payloads, vec![vec![1; 24], vec![2; 24]]);
    assert_eq!(nic.rx_len(), 1, "the ARP answer waits for the guest");
    assert_eq!(counts.payloads_out, 2);
    assert_eq!(counts.arp_answered, 1);
    assert_eq!(counts.dropped_total(), 1);
    assert_eq!(counts.dropped.get(&Dropped::NotForHost), Some(&1));
    assert!(nic.take_tx().is_empty());
}

#[test]
fn an_arp_answer_with_no_room_in_rx_is_counted_lost() {
    let mut nic = nic();
    let udp = ClientLink::Udp(link());
    for _ in 0..RX_QUEUE_MAX {
        udp.deliver(&mut nic, vec![0; 32]).expect("room");
    }
    nic.send(guest_arp(ArpOperation::REQUEST, HOST_IPV4));
    let mut counts = LinkCounts::default();
    assert!(udp.take_output(&mut nic, &mut counts).is_empty());
    assert_eq!((counts.arp_answered, counts.arp_answers_lost), (1, 1));
    assert_eq!(nic.rx_len(), RX_QUEUE_MAX);
}

#[test]
fn for_the_assembled_guests_the_link_is_the_identity() {
    let mut nic = Nic::new(1);
    let payloads = ClientLink::Payloads;
    payloads.deliver(&mut nic, vec![1, 2, 3]).expect("room");
    assert_eq!(nic.rx_take(), Some(vec![1, 2, 3]));
    nic.send(vec![4, 5]);
    let mut counts = LinkCounts::default();
    assert_eq!(
        payloads.take_output(&mut nic, &mut counts),
        vec![vec![4, 5]]
    );
    assert_eq!(counts.payloads_out, 1);
}

/// Every frame taken is a payload, an ARP answer or a drop, whatever its
/// bytes: after a valid Ethernet header (to the host or broadcast, of
/// any of the types the host looks into) and a valid IPv4 header or not.
#[test]
fn any_bytes_the_guest_sends_are_accounted_for_and_never_panic() {
    fn prop(frames: Vec<(Vec<u8>, u8)>) -> TestResult {
        let mut nic = nic();
        let udp = ClientLink::Udp(link());
        let sent = frames.len().min(TX_SENT_MAX) as u64;
        for (tail, shape) in frames.into_iter().take(TX_SENT_MAX) {
            let mut frame = match shape % 4 {
                0 => Vec::new(),
                1 => guest_reply(&[])[..IPV4_AT].to_vec(),
                2 => guest_reply(&[])[..UDP_AT].to_vec(),
                _ => guest_arp(ArpOperation::REQUEST, HOST_IPV4)[..IPV4_AT].to_vec(),
            };
            if shape & 0x10 != 0 && frame.len() >= 6 {
                frame[..6].copy_from_slice(&[0xff; 6]);
            }
            if shape & 0x20 != 0 && frame.len() >= 14 {
                frame[12..14].copy_from_slice(&EtherType::IPV6.0.to_be_bytes());
            }
            frame.extend(tail);
            frame.truncate(FRAME_BYTES_MAX);
            nic.send(frame);
        }
        let mut counts = LinkCounts::default();
        let payloads = udp.take_output(&mut nic, &mut counts);
        let accounted = counts.payloads_out + counts.arp_answered + counts.dropped_total();
        if payloads.len() as u64 != counts.payloads_out || accounted != sent {
            return TestResult::error(format!("{sent} frames, {counts:?}"));
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3000)
        .quickcheck(prop as fn(Vec<(Vec<u8>, u8)>) -> TestResult);
}

/// At most this many frames per property case (the NIC's tx queue holds
/// more; a case need not).
const TX_SENT_MAX: usize = 64;

/// A reply changed in one byte either still carries its payload (the
/// byte was the Ethernet source, say) or is dropped: the checksums let
/// no changed payload through.
#[test]
fn a_reply_changed_in_one_byte_is_its_payload_or_dropped() {
    fn prop(payload: Vec<u8>, at: u16, mask: u8) -> TestResult {
        if mask == 0 || payload.len() > FRAME_BYTES_MAX - UDP_FRAME_OVERHEAD_BYTES {
            return TestResult::discard();
        }
        let mut frame = guest_reply(&payload);
        let at = usize::from(at) % frame.len();
        frame[at] ^= mask;
        match link().classify(&frame) {
            FromGuest::Payload(got) if got == payload => TestResult::passed(),
            FromGuest::Dropped(_) => TestResult::passed(),
            other => TestResult::error(format!("byte {at} ^ {mask:#x}: {other:?}")),
        }
    }
    QuickCheck::new()
        .tests(3000)
        .quickcheck(prop as fn(Vec<u8>, u16, u8) -> TestResult);
}

/// What the host sends the guest is what the guest's reply, built the
/// same way in the other direction, gives back: any payload that fits.
#[test]
fn any_payload_that_fits_goes_in_framed_and_comes_back_whole() {
    fn prop(payload: Vec<u8>) -> TestResult {
        if payload.len() > FRAME_BYTES_MAX - UDP_FRAME_OVERHEAD_BYTES {
            return TestResult::discard();
        }
        let frame = link()
            .request_frame(&payload, FRAME_BYTES_MAX)
            .expect("fits");
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(TransportSlice::Udp(udp)) = sliced.transport else {
            return TestResult::error("not UDP");
        };
        if udp.payload() != &payload[..] {
            return TestResult::error("payload changed");
        }
        let back = link().classify(&guest_reply(&payload));
        TestResult::from_bool(back == FromGuest::Payload(payload))
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<u8>) -> TestResult);
}
