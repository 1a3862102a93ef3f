#!/bin/sh
# Makes cpu-model/unicorn/unicorn-engine-sys: unicorn-engine-sys 2.1.5 from
# crates.io with Lockstep's delivery.patch applied (QEMU's own x86 delivery
# through the guest's IDT, external interrupts, syscall, RDMSR/WRMSR hooks,
# CPUID leaf 1 feature words, an exact instruction budget counted inline
# per translation block, the exit-request check made by the slow-path
# load and store helpers instead of after every guest access; see the
# pseudo-registers in its include/unicorn/x86.h and cpu-model/EXCEPTIONS.md).
#
# To change the patch: edit the prepared tree, then regenerate the patch
# against a pristine extraction of the crate, a/ pristine and b/ edited:
#   diff -ruN --exclude=.lockstep-prepared a b > delivery.patch
# (with the timestamps dropped from the ---/+++ lines), and check that a
# fresh run of this script reproduces the edited tree exactly.
# The root Cargo.toml points [patch.crates-io] at that directory, so this
# runs before any cargo command (README's commands and .ci/run do).
#
# Idempotent: does nothing when the directory was made from this crate and
# this patch. The crate comes from the local cargo cache or crates.io and
# must match the sha256 pinned here (Cargo.lock pinned the same one before
# the [patch]; a patched package has no checksum there).
#
# unicorn is GPL-2.0; the patch is our own modification of it, under the
# same licence (the project is GPL-2.0-or-later).
set -eu

CRATE=unicorn-engine-sys-2.1.5
CRATE_SHA256=685282714d35a6fbfed0ae14d81bb11c91838bc7a165cac778321679a7bb91d8
URL="https://static.crates.io/crates/unicorn-engine-sys/$CRATE.crate"

here=$(cd "$(dirname "$0")" && pwd)
out="$here/unicorn-engine-sys"
patch_file="$here/delivery.patch"
stamp="$out/.lockstep-prepared"

for tool in sha256sum tar patch; do
    command -v "$tool" >/dev/null || {
        echo "prepare.sh: needs $tool (apt-get install -y patch)" >&2
        exit 1
    }
done

want="$CRATE_SHA256 $(sha256sum "$patch_file" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

work=$(mktemp -d "$here/.prepare.XXXXXX")
trap 'rm -rf "$work"' EXIT

crate=""
for cached in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE.crate"; do
    if [ -f "$cached" ]; then
        crate=$cached
        break
    fi
done
if [ -z "$crate" ]; then
    echo "prepare.sh: $CRATE.crate is not in the cargo cache; downloading $URL" >&2
    crate="$work/$CRATE.crate"
    if command -v curl >/dev/null; then
        curl -fsSL -o "$crate" "$URL"
    else
        wget -q -O "$crate" "$URL"
    fi
fi

got=$(sha256sum "$crate" | cut -d' ' -f1)
if [ "$got" != "$CRATE_SHA256" ]; then
    echo "prepare.sh: $crate has sha256 $got, not the pinned $CRATE_SHA256" >&2
    exit 1
fi

tar -xzf "$crate" -C "$work"
patch -s -p1 -d "$work/$CRATE" < "$patch_file"
echo "$want" > "$work/$CRATE/.lockstep-prepared"
rm -rf "$out"
mv "$work/$CRATE" "$out"
echo "prepare.sh: $out ready ($CRATE with delivery.patch)" >&2
