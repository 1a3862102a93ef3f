//! The protocol reads no clock, draws no OS entropy and iterates no hash
//! map: everything it does follows from its inputs. (CI also checks with
//! `cargo tree` that it depends on no I/O crate.)

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn protocol_source_uses_no_clock_entropy_or_hash_order() {
    let forbidden = [
        "std::time",
        "SystemTime",
        "Instant::",
        "thread_rng",
        "getrandom",
        "OsRng",
        "HashMap",
        "HashSet",
        "std::net",
        "std::fs",
        "std::thread",
        "std::env",
    ];
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() >= 10, "found the sources: {}", files.len());
    for (path, text) in &files {
        for word in forbidden {
            assert!(!text.contains(word), "{path} uses {word}");
        }
    }
}
