# Sourced by fetch-kernel.sh and build-initramfs.sh: a Debian package at
# a pinned version and sha256, by apt-get download from the archive.
#
# The archive serves one version of a package name at a time. If it no
# longer serves the pinned one, this stops and names the version it
# serves: the pin moves only deliberately.

# Whether the file $1 has the sha256 $2.
deb_matches() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# Makes $5 the .deb of package $2 at version $3 with sha256 $4, for the
# script named $1: kept if it already is, else downloaded into its
# directory (apt-get download names it so).
fetch_pinned_deb() {
    script=$1 package=$2 version=$3 sha256=$4 deb=$5
    deb_matches "$deb" "$sha256" && return 0
    served=$(apt-cache policy "$package" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    if [ "$served" != "$version" ]; then
        echo "$script: the archive serves $package ${served:-(none; run apt-get update)}," \
            "not the pinned $version" >&2
        exit 1
    fi
    rm -f "$deb"
    (cd "$(dirname "$deb")" && apt-get download "$package=$version")
    if ! deb_matches "$deb" "$sha256"; then
        echo "$script: $deb does not match the pinned sha256 $sha256" >&2
        exit 1
    fi
}
