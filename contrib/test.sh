#!/usr/bin/env bash
# Sets up this machine (contrib/setup.sh) and runs the whole test suite:
# unit tests, CLI tests with fake tools, real skopeo/umoci tests and real
# kiwi-ng builds of the Debian fixture. Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
. contrib/setup.sh
export KIWI_NG=${KIWI_NG:-$(command -v kiwi-ng)}
cargo test --locked "$@" 2>&1
