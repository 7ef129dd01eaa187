#!/usr/bin/env bash
# Installs what kiwi-stackbuild and its tests need on this host, idempotently:
# skopeo, umoci, rsync, podman, a container registry for tests, a Rust
# toolchain's build needs, rpmbuild and rpm2archive (the RPM build test),
# pigz (the parallel gzip floor the layer compression is measured against), and
# kiwi-ng (11.1.6 in a venv when none is on PATH).
#
# Usage (as root): contrib/setup.sh   (or source it to keep its PATH)
# Environment:
#   KIWI_VENV   where the kiwi venv goes (default /opt/kiwi-stackbuild/kiwi-venv)
#   KIWI_VERSION  the kiwi version for the venv (default 11.1.6)
set -euo pipefail

KIWI_VENV=${KIWI_VENV:-/opt/kiwi-stackbuild/kiwi-venv}
KIWI_VERSION=${KIWI_VERSION:-11.1.6}

say() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        say "run this as root: it installs packages"
        exit 1
    fi
}

install_debian() {
    local pkgs=(skopeo umoci rsync podman docker-registry xz-utils zstd
                bzip2 gnupg debian-archive-keyring python3 python3-venv
                python3-pip ca-certificates curl openssl apache2-utils attr acl
                time tar gzip pigz rpm rpm2cpio gcc libc6-dev apt-utils dpkg)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # The registry package starts a service on port 5000; tests start their own.
    if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
}

install_suse() {
    zypper --non-interactive install --no-recommends skopeo umoci rsync podman \
        distribution-registry xz zstd bzip2 gpg2 python3 python3-pip curl openssl \
        apache2-utils attr acl time tar gzip pigz rpm-build gcc
}

install_fedora() {
    dnf install -y skopeo umoci rsync podman distribution xz zstd bzip2 gnupg2 \
        python3 python3-pip curl openssl httpd-tools attr acl time tar gzip pigz rpm-build gcc
}

install_kiwi() {
    if command -v kiwi-ng >/dev/null && [ -z "${KIWI_FORCE_VENV:-}" ]; then
        say "kiwi-ng found on PATH: $(command -v kiwi-ng)"
        return
    fi
    if [ -x "$KIWI_VENV/bin/kiwi-ng" ] \
        && "$KIWI_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kiwi') != '$KIWI_VERSION')"; then
        say "kiwi $KIWI_VERSION already in $KIWI_VENV"
    else
        say "installing kiwi $KIWI_VERSION into $KIWI_VENV"
        python3 -m venv "$KIWI_VENV"
        "$KIWI_VENV/bin/pip" install -q --disable-pip-version-check "kiwi==$KIWI_VERSION"
    fi
    ln -sf "$KIWI_VENV/bin/kiwi-ng" /usr/local/bin/kiwi-ng
}

# cargo and rustc 1.89 or newer, for building kiwi-stackbuild.
install_rust() {
    local have
    have=$(cargo --version 2>/dev/null | awk '{print $2}')
    if [ -n "$have" ] && printf '1.89.0\n%s\n' "$have" | sort -V -C; then
        return
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return
    fi
    say "installing a Rust toolchain with rustup (cargo ${have:-missing}, 1.89 needed)"
    command -v curl >/dev/null || { say "install curl, or a Rust toolchain (1.89 or newer) by hand"; exit 1; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
    export PATH="$HOME/.cargo/bin:$PATH"
}

main() {
    need_root
    . /etc/os-release
    case " ${ID:-} ${ID_LIKE:-} " in
        *" debian "*|*" ubuntu "*) install_debian ;;
        *suse*) install_suse ;;
        *" fedora "*|*" rhel "*) install_fedora ;;
        *) say "unknown distribution '${ID:-}': install skopeo, umoci, podman, rsync and kiwi by hand"; exit 1 ;;
    esac
    install_kiwi
    install_rust
    say "ready: $(skopeo --version), umoci $(umoci --version | awk '{print $3}'), kiwi-ng $(kiwi-ng --version 2>/dev/null | awk '{print $NF}')"
}

main "$@"
