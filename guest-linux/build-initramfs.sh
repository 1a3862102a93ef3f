#!/bin/sh
# Builds the Linux guest's initramfs, guest-linux/initramfs/initramfs.cpio
# (gitignored, like everything under guest-linux/initramfs/): an
# uncompressed newc cpio archive of
# - busybox (Debian bookworm's busybox-static, by apt from the Debian
#   archive, checked against the sha256 pinned here) and a link for each
#   of its applets;
# - the virtio modules from the kernel .deb that fetch-kernel.sh pins
#   (virtio, virtio_ring, virtio_mmio, virtio_blk, failover, net_failover,
#   virtio_net), in /lib/modules/;
# - /init (guest-linux/init, busybox sh);
# - /bin/lockstep-ledger, built static from guest-linux/ledger/ledger.c.
#
# The archive is byte-identical on every build from the same inputs:
# every file's mtime is 0, its owner root, its mode set here, the entries
# in sorted order, and GNU cpio's --reproducible numbers the inodes from
# the list rather than the disk. Uncompressed, because the guest's CPU is
# emulated: unpacking xz or gzip would cost it guest instructions (the
# kernel's own xz decompression is more than half of its boot), copying
# 4 MiB costs it little.
#
# The archive serves one version of a package name at a time. If it no
# longer serves the pinned one, this stops and names the version it
# serves (pinned-deb.sh): update BUSYBOX_VERSION and BUSYBOX_DEB_SHA256
# deliberately.
set -eu

BUSYBOX=busybox-static
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
BUSYBOX_DEB_SHA256=3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
KERNEL_RELEASE=6.1.0-47-amd64
# In load order: each after what it depends on (modinfo -F depends).
MODULES="drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko
drivers/virtio/virtio_mmio.ko drivers/block/virtio_blk.ko
net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko"

here=$(cd "$(dirname "$0")" && pwd)
out="$here/initramfs"
# apt-get download names the .deb with the epoch's colon escaped.
deb="$out/${BUSYBOX}_$(echo "$BUSYBOX_VERSION" | sed 's/:/%3a/')_amd64.deb"

for tool in apt-get apt-cache dpkg-deb sha256sum cpio gcc; do
    command -v "$tool" >/dev/null || {
        echo "build-initramfs.sh: needs $tool (a Debian or Ubuntu host; apt-get install cpio gcc)" >&2
        exit 1
    }
done
cpio --help | grep -q -- --reproducible || {
    echo "build-initramfs.sh: needs GNU cpio 2.12 or later (--reproducible)" >&2
    exit 1
}

# The kernel .deb, pinned and checked by fetch-kernel.sh.
"$here/fetch-kernel.sh" >/dev/null
kernel_deb=$(ls "$here"/kernel/linux-image-"$KERNEL_RELEASE"_*_amd64.deb)

. "$here/pinned-deb.sh"
mkdir -p "$out"
fetch_pinned_deb build-initramfs.sh "$BUSYBOX" "$BUSYBOX_VERSION" "$BUSYBOX_DEB_SHA256" "$deb"

work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/lib/modules" \
    "$root/dev" "$root/proc" "$root/sys" "$root/tmp" "$root/run"

dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" ./bin/busybox
install -m 0755 "$work/bin/busybox" "$root/bin/busybox"
# A link per applet, where busybox's own list puts it (it is static: it
# runs on the build host as it will in the guest).
"$root/bin/busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    ln -sf /bin/busybox "$root/$applet"
done

dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$work" \
    $(for m in $MODULES; do echo "./lib/modules/$KERNEL_RELEASE/kernel/$m"; done)
for m in $MODULES; do
    install -m 0644 "$work/lib/modules/$KERNEL_RELEASE/kernel/$m" "$root/lib/modules/"
done
# The load order, for /init.
for m in $MODULES; do basename "$m" .ko; done >"$root/lib/modules/order"
chmod 0644 "$root/lib/modules/order"

install -m 0755 "$here/init" "$root/init"
gcc -std=c11 -O2 -Wall -Wextra -Werror -static -ffile-prefix-map="$here"=. \
    -o "$root/bin/lockstep-ledger" "$here/ledger/ledger.c"
chmod 0755 "$root/bin/lockstep-ledger"

chmod 0755 "$root" "$root/bin" "$root/sbin" "$root/usr" "$root/usr/bin" "$root/usr/sbin" \
    "$root/lib" "$root/lib/modules" "$root/dev" "$root/proc" "$root/sys" "$root/run"
chmod 1777 "$root/tmp"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) >"$work/initramfs.cpio"
mv "$work/initramfs.cpio" "$out/initramfs.cpio"
echo "build-initramfs.sh: $out/initramfs.cpio ready ($(wc -c <"$out/initramfs.cpio") bytes," \
    "sha256 $(sha256sum "$out/initramfs.cpio" | cut -d' ' -f1))"
