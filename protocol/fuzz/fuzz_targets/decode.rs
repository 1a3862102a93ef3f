//! Arbitrary bytes into the wire decoder and into a node: an error or a
//! dropped frame, never a panic. A frame that decodes must encode back to
//! the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Codec, Config, Generation, Level, Node, NodeId, Start, Time};

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::plain(), Codec::authenticated(b"fuzz key")] {
        if let Ok(opened) = codec.open(data) {
            let again = codec.encode_stamped(&opened.envelope, opened.stamp);
            assert_eq!(again, data, "decode and encode agree");
        }
        let config = Config::new(NodeId(0), NodeId(1), NodeId(2), Level::Ft);
        let start = Start::Primary { generation: Generation(1) };
        let mut node = Node::new(config, codec, start, Time(0)).expect("valid config");
        node.handle_bytes(Time(1), data);
        while node.poll_action().is_some() {}
    }
});
