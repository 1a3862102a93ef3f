#!/bin/sh
# Fetches the Linux guest's kernel: Debian bookworm's unmodified
# linux-image-6.1.0-47-amd64, by apt from the Debian archive, checked
# against the sha256 pinned here, and extracts its bzImage to
# guest-linux/kernel/vmlinuz-6.1.0-47-amd64 (gitignored: no kernel binary
# is committed). The emulated engine's Linux boot test reads it from there
# (or from $LOCKSTEP_LINUX_KERNEL).
#
# Idempotent: does nothing when the extracted kernel is there and the
# .deb it came from still matches the pin.
#
# The archive serves one version of a package name at a time. If it no
# longer serves the pinned one, this stops and names the version it
# serves: update PACKAGE_VERSION and DEB_SHA256 deliberately (and expect
# the boot's measured figures in the README to move).
set -eu

PACKAGE=linux-image-6.1.0-47-amd64
PACKAGE_VERSION=6.1.170-3
DEB_SHA256=e0061f95dbe31f5646e5a29ba9a62293f6b625a70e81fc2b04344d8ab7589c34
KERNEL=vmlinuz-6.1.0-47-amd64

here=$(cd "$(dirname "$0")" && pwd)
out="$here/kernel"
deb="$out/${PACKAGE}_${PACKAGE_VERSION}_amd64.deb"

for tool in apt-get apt-cache dpkg-deb sha256sum; do
    command -v "$tool" >/dev/null || {
        echo "fetch-kernel.sh: needs $tool (a Debian or Ubuntu host)" >&2
        exit 1
    }
done

. "$here/pinned-deb.sh"
mkdir -p "$out"
if [ -f "$out/$KERNEL" ] && deb_matches "$deb" "$DEB_SHA256"; then
    echo "fetch-kernel.sh: $out/$KERNEL ready ($PACKAGE $PACKAGE_VERSION)"
    exit 0
fi
fetch_pinned_deb fetch-kernel.sh "$PACKAGE" "$PACKAGE_VERSION" "$DEB_SHA256" "$deb"

work=$(mktemp -d "$out/.extract.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "./boot/$KERNEL"
mv "$work/boot/$KERNEL" "$out/$KERNEL"
echo "fetch-kernel.sh: $out/$KERNEL ready ($PACKAGE $PACKAGE_VERSION)"
