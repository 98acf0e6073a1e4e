#!/usr/bin/env bash
# Prints the apt sources (deb822) of the "bookworm" base image: bookworm's own suites only, from
# the given mirrors. scripts/make-base-images.sh writes this into the image instead of copying the
# host's sources, which may name another suite (pinned low by a preferences file that does not come
# along) and would silently turn the image into that suite.
#
#   bookworm-sources.sh MIRROR [SECURITY_MIRROR]
set -euo pipefail
[ $# -ge 1 ] && [ -n "$1" ] || { echo "usage: bookworm-sources.sh MIRROR [SECURITY_MIRROR]" >&2; exit 2; }
cat <<SRC
Types: deb
URIs: $1
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${2:-http://deb.debian.org/debian-security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
