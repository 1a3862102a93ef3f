#!/bin/sh
# Builds unicorn-engine-sys 2.1.5 with unicorn-delivery.patch and runs
# delivery_probe.rs against it, all under target/unicorn-proto (outside the
# workspace; nothing here is part of the build). Needs the crate in the
# local cargo registry (any build of the workspace fetched it).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/unicorn-proto"
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/unicorn-engine-sys-2.1.5 | head -n 1)

rm -rf "$work/unicorn-engine-sys" "$work/probe/src"
mkdir -p "$work/probe/src"
cp -r "$registry" "$work/unicorn-engine-sys"
patch -s -d "$work/unicorn-engine-sys" -p1 < "$here/unicorn-delivery.patch"
cp "$here/delivery_probe.rs" "$work/probe/src/main.rs"
cp "$root/cpu-model/tests/emulated/longmode.rs" "$work/probe/src/longmode.rs"
cp "$root/Cargo.lock" "$work/probe/Cargo.lock"
cat > "$work/probe/Cargo.toml" <<'TOML'
[package]
name = "delivery-probe"
version = "0.1.0"
edition = "2021"

[dependencies]
iced-x86 = { version = "1.22", default-features = false, features = ["std", "decoder", "code_asm", "intel", "instr_info"] }
unicorn-engine = { version = "2.1.5", default-features = false, features = ["arch_x86"] }

[patch.crates-io]
unicorn-engine-sys = { path = "../unicorn-engine-sys" }

[workspace]
TOML
cd "$work/probe"
flock /work/.buildlock cargo build --release --offline -j2
./target/release/delivery-probe
