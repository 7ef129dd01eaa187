#!/usr/bin/env bash
# Sets up this machine (contrib/setup.sh), builds kiwi-stackbuild, and runs
# the main job on the example description in fixtures/debian-bookworm:
#   1. build it with kiwi-ng and keep the root tree as the stash
#      kiwi-stackbuild-example:1.0.0 (rebuild --description --keep-root),
#   2. list the stashes,
#   3. build the image again from the stash alone (rebuild --root).
# Run as root from the repository. The Debian mirror comes from DEBIAN_MIRROR
# or from this machine's apt sources.
#
# Environment:
#   DEMO_DIR       work directory, emptied first (default /var/tmp/kiwi-stackbuild-demo)
#   DEBIAN_MIRROR  Debian archive to build from (default: the one apt uses here)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. contrib/setup.sh

work=${DEMO_DIR:-/var/tmp/kiwi-stackbuild-demo}

. contrib/lib.sh

mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
if [ -z "$mirror" ]; then
    echo "demo: no Debian bookworm mirror in this machine's apt sources; set DEBIAN_MIRROR" >&2
    exit 1
fi

cargo build --release --locked
bin=$repo/target/release/kiwi-stackbuild

rm -rf "$work"
mkdir -p "$work"
cp -r fixtures/debian-bookworm "$work/description"
sed -i "s|@DEBIAN_MIRROR@|$mirror|" "$work/description/config.xml"
kiwi=(--kiwi-config "$repo/fixtures/kiwi.yml" --shared-cache-dir "$work/cache")

"$bin" "${kiwi[@]}" rebuild --description "$work/description" \
    --keep-root kiwi-stackbuild-example -- --target-dir "$work/built"
"$bin" stash --list
"$bin" "${kiwi[@]}" rebuild --root kiwi-stackbuild-example:1.0.0 -- --target-dir "$work/rebuilt"

echo
echo "built from the description:  $(ls "$work"/built/*.tar.xz)"
echo "rebuilt from the stash:      $(ls "$work"/rebuilt/*.tar.xz)"
echo "the stash store:             ${KIWI_STACKBUILD_HOME:-/var/lib/kiwi-stackbuild/stash}"
