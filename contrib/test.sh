#!/usr/bin/env bash
# Sets up this machine (contrib/setup.sh), checks the code's format and
# lints (rustfmt, clippy with warnings as errors), and runs the whole test
# suite: unit tests, CLI tests with fake tools, real skopeo/umoci tests and
# real kiwi-ng builds of the Debian fixture, at a soft limit of 1024 open files.
# Run as root from the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
. contrib/setup.sh
export KIWI_NG=${KIWI_NG:-$(command -v kiwi-ng)}
# As an ordinary login shell, sudo or a systemd service has it on openSUSE
# and Fedora: a soft limit of 1024 open files, and no backtraces asked for.
ulimit -Sn 1024
unset RUST_BACKTRACE
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings 2>&1
cargo test --locked "$@" 2>&1
