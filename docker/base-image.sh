#!/usr/bin/env bash
# Makes a Python 3.11 base image from Debian bookworm packages (no Docker Hub needed): reads a Debian mirror and,
# optionally, the site's CA certificates; writes a local image for the BASE_IMAGE argument of every Dockerfile here.
#
#   docker/base-image.sh TAG [SITE_CA_FILE]
#
# MIRROR (default http://deb.debian.org/debian) names the Debian mirror, e.g. a hospital's internal one.
# SITE_CA_FILE holds PEM certificates (one or more) that the site's TLS-inspecting proxy or internal registry
# signs with: they join the image's trust store, and pip is told to use that store. Certificates are public,
# so baking them into a site's base is safe; credentials never go here (builds take them as BuildKit secrets).
# DOCKER (default docker) is the client; mmdebstrap runs as root.
# The hooks are single-quoted on purpose: mmdebstrap runs them with the root folder as $1.
# shellcheck disable=SC2016
set -euo pipefail

tag=${1:?usage: docker/base-image.sh TAG [SITE_CA_FILE]}
site_ca=${2:-}
mirror=${MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}

if [ -n "$site_ca" ] && [ ! -s "$site_ca" ]; then
    echo "site CA file $site_ca is missing or empty" >&2
    exit 2
fi
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 2; }

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
# One certificate a file, as update-ca-certificates expects (a bundle file would be skipped by its rehash).
mkdir "$workdir/site-ca"
if [ -n "$site_ca" ]; then
    awk -v dir="$workdir/site-ca" '/-----BEGIN CERTIFICATE-----/ { n++; file = sprintf("%s/site-ca-%04d.crt", dir, n); keep = 1 }
        keep { print > file } /-----END CERTIFICATE-----/ { keep = 0; close(file) }' "$site_ca"
    [ -n "$(ls "$workdir/site-ca")" ] || { echo "site CA file $site_ca holds no PEM certificate" >&2; exit 2; }
fi

# minbase: dpkg, apt and the essentials, no documentation; the venv module (with its own pip) builds the
# images' virtual environments, so Debian's python3-pip is not needed. The hooks remove Debian's PEP 668 marker (images install into their own venv anyway), name
# python3.11 `python`, add the site's certificates and tell pip to trust the system store, not its own copy.
mmdebstrap --quiet --variant=minbase \
    --include=python3.11,python3.11-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
    --customize-hook='ln -sf python3.11 "$1"/usr/bin/python' \
    --customize-hook="mkdir -p \"\$1\"/usr/local/share/ca-certificates/site && cp -r '$workdir/site-ca/.' \"\$1\"/usr/local/share/ca-certificates/site/" \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
    --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1"/etc/pip.conf' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$workdir/base.tar" "$mirror"

"$docker" import \
    --change 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'CMD ["python"]' \
    --message "medimg base: Debian bookworm minbase, Python 3.11 (docker/base-image.sh)" \
    "$workdir/base.tar" "$tag" >/dev/null
echo "$tag: $("$docker" run --rm --network host "$tag" python --version 2>&1) from $mirror$([ -n "$site_ca" ] && echo ", site CA added")"
