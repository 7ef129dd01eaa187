#!/usr/bin/env bash
# Makes the two sources contrib/kiwi-stackbuild.spec builds from, in OUTDIR
# (default: the current directory): kiwi-stackbuild-VERSION.tar.gz (the
# committed tree) and vendor.tar.gz (every crate, for an offline build).
#
# Usage: contrib/rpm-sources.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-.}")
mkdir -p "$out"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
git archive --format=tar.gz --prefix="kiwi-stackbuild-$version/" -o "$out/kiwi-stackbuild-$version.tar.gz" HEAD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo vendor --locked --versioned-dirs "$work/vendor" >/dev/null
tar -C "$work" -czf "$out/vendor.tar.gz" vendor
echo "$out/kiwi-stackbuild-$version.tar.gz"
echo "$out/vendor.tar.gz"
