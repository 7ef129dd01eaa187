#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted `bash -c` scripts expand in the child
# Benchmarks kiwi-stackbuild on one real Debian root tree against KIWI's own
# `system stash` / `system stackbuild` and against plain tar floors, on this
# machine, in one run:
#   1. builds target/release/kiwi-stackbuild (cargo build --release --locked);
#   2. prepares a root once with kiwi-ng system prepare from
#      fixtures/debian-bookworm (171 MB on disk, 164 MB of data, ~7,250
#      entries; --large adds locales, perl, python3-minimal, vim-tiny and
#      systemd: ~228 MB of data, ~9,800 entries);
#   3. times each case --runs times, round-robin (one run of every case per
#      round, the order rotated each round), with `sync` before every run;
#   4. prints median/min/max, the ratios and the targets as Markdown tables
#      (contrib/bench_report.py) and writes the same data as JSON.
#
# Why a script and not a Rust binary or a cargo bench: what is measured is
# whole command lines of several programs (kiwi-stackbuild, kiwi-ng, podman,
# tar, gzip, zstd) run as a user runs them, with GNU time for peak RSS and a
# mount namespace for KIWI's hard-coded stash directory. A script shows the
# exact commands that were timed, needs nothing built besides the binary it
# measures, and keeps benchmark code out of the shipped binary. Statistics
# and tables are python3 (stdlib only) in contrib/bench_report.py.
#
# Cases (all on the same prepared root, page cache warm):
#   ours_stash       kiwi-stackbuild stash --root ROOT into an empty store
#   ours_stash_stub  the same with KIWI_NG pointing to a stub that only
#                    prints the version: kiwi-stackbuild's own time and RSS,
#                    without the `kiwi-ng --version` child stash starts
#   ours_restash     append a line to ROOT/etc/motd, stash again into a copy
#                    of a store that has the first stash (one delta layer)
#   ours_w2          kiwi-stackbuild rebuild --root bench -- --target-dir T;
#                    its log line `unpacked ... in X` is the restore time,
#                    and wrappers record the RSS of umoci and of
#                    kiwi-stackbuild (its VmHWM when it starts kiwi-ng)
#   kiwi_stash       kiwi-ng system stash --root ROOT (fresh stash dir and
#                    podman storage every run)
#   kiwi_w2          kiwi-ng system stackbuild --stash bench --target-dir T
#   floor_tar        tar -cf - ROOT | cat >/dev/null
#   floor_gzip       tar -cf - ROOT | gzip -1 > FILE
#   floor_zstd       tar -cf - ROOT | zstd -T0 -q > FILE
#   floor_untar      tar -xzf FILE (the gzip -1 archive) -C EMPTY_DIR
# The floors use --numeric-owner --xattrs and store the whole root, as a
# stash does (nothing is mounted in a prepared root).
#
# KIWI keeps its stashes in /var/tmp/kiwi-stash (hard-coded) and loads them
# into podman's storage. Every kiwi-ng run here is in its own mount
# namespace (unshare -m) with a directory of the work dir bind-mounted over
# /var/tmp/kiwi-stash, and with CONTAINERS_STORAGE_CONF / CONTAINERS_CONF
# naming a storage and tmp dir in the work dir, so nothing outside it is
# touched (the empty mount point /var/tmp/kiwi-stash is created when missing
# and removed again). The only network use is kiwi-ng's prepare, from the
# Debian mirror of this machine's apt sources (or DEBIAN_MIRROR).
#
# Usage (as root): contrib/bench.sh [--runs N] [--large] [--json FILE] [--keep]
#   --runs N     runs of every case (default 5)
#   --large      a root with more packages
#   --json FILE  where the JSON goes (default WORK/bench.json, copied to
#                /var/tmp/kiwi-stackbuild-bench.json when WORK is removed)
#   --keep       keep the work dir (logs of every run, the root, the stores)
# Environment:
#   DEBIAN_MIRROR  Debian archive to prepare from (default: the apt sources')
#   BENCH_TMPDIR   where the work dir is made (default /var/tmp)
set -euo pipefail
export LC_ALL=C

start_dir=$PWD
cd "$(dirname "$0")/.."
repo=$(pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. contrib/lib.sh

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

runs=5 large='' json='' keep=''
while [ $# -gt 0 ]; do
    case $1 in
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift 2 ;;
        --runs=*) runs=${1#*=}; shift ;;
        --large) large=1; shift ;;
        --json) [ $# -ge 2 ] || die "--json needs a file"; json=$2; shift 2 ;;
        --json=*) json=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case $json in /*|'') ;; *) json=$start_dir/$json ;; esac
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
[ "$(id -u)" = 0 ] || die "run this as root: kiwi-ng and the stash keep owners and device nodes"
[ -x /usr/bin/time ] || die "GNU time is missing at /usr/bin/time: run contrib/setup.sh (or apt-get install time)"
for t in kiwi-ng umoci skopeo podman rsync tar gzip zstd unshare mount python3 cargo; do
    command -v "$t" >/dev/null || die "$t is missing: run contrib/setup.sh"
done
mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
[ -n "$mirror" ] || die "no Debian bookworm mirror in this machine's apt sources; set DEBIAN_MIRROR"
kiwi_ng=$(command -v kiwi-ng)
kiwi_yml=$repo/fixtures/kiwi.yml

W=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.XXXX")
[ -n "$json" ] || json=$W/bench.json
made_stash_mountpoint=
cleanup() {
    local rc=$? m
    # Every kiwi-ng and podman call ran in its own mount namespace; this is
    # only a guard should one of their mounts have leaked out.
    for m in $(findmnt -rn -o TARGET | grep -F "$W/" | sort -r); do umount -l "$m" || true; done
    if [ -n "$made_stash_mountpoint" ]; then rmdir /var/tmp/kiwi-stash 2>/dev/null || true; fi
    if [ -n "$keep" ]; then
        say "work dir kept: $W"
    else
        case $json in "$W"/*) [ -f "$json" ] && cp "$json" "${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.json" \
            && say "JSON copied to ${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.json" ;; esac
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ ! -e /var/tmp/kiwi-stash ]; then
    mkdir /var/tmp/kiwi-stash
    made_stash_mountpoint=1
fi
mkdir -p "$W/logs" "$W/tmp" "$W/trash"
results=$W/results.tsv

# What a run made is moved aside, not deleted, until the benchmark ends:
# deleting a 170 MB root slows the file creation of whatever runs next on the
# same file system (seen: an unpack took 2.7 s instead of 1.5 s), which would
# charge one case for another's cleanup.
discard() {
    local p
    for p in "$@"; do
        [ -e "$p" ] && mv "$p" "$W/trash/$(basename "$p").$RANDOM$RANDOM"
    done
    return 0
}
: >"$results"
load() { cut -d' ' -f1-3 /proc/loadavg; }

say "work dir $W, $runs runs per case$([ -n "$large" ] && echo ", large root")"
say "load average before: $(load)"

# --- the binary ---------------------------------------------------------------
say "building the release binary"
cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-$repo/target}/release/kiwi-stackbuild
[ -x "$bin" ] || die "no binary at $bin after cargo build"
# What was built: HEAD, and -dirty when the sources differ from it.
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q .; then
    commit+=-dirty
fi

# --- the root -----------------------------------------------------------------
cp -r fixtures/debian-bookworm "$W/description"
sed -i "s|@DEBIAN_MIRROR@|$mirror|" "$W/description/config.xml"
if [ -n "$large" ]; then
    sed -i 's|<package name="coreutils"/>|&\n        <package name="locales"/>\n        <package name="perl"/>\n        <package name="python3-minimal"/>\n        <package name="vim-tiny"/>\n        <package name="systemd"/>|' \
        "$W/description/config.xml"
fi
ROOT=$W/root
say "preparing the root with kiwi-ng system prepare from $mirror"
prep_t0=$EPOCHREALTIME
if ! kiwi-ng --config "$kiwi_yml" --shared-cache-dir "$W/cache" system prepare \
        --description "$W/description" --root "$ROOT" >"$W/logs/prepare.log" 2>&1; then
    tail -n 30 "$W/logs/prepare.log" >&2
    die "kiwi-ng system prepare failed (log above)"
fi
prep_us=$(( ${EPOCHREALTIME/./} - ${prep_t0/./} ))
tree_entries=$(find "$ROOT" -mindepth 1 | wc -l)
tree_bytes=$(du -sb --apparent-size "$ROOT" | cut -f1)
say "root: $tree_entries entries, $tree_bytes bytes (du --apparent-size), prepared in $((prep_us / 1000000)) s"

# --- helpers ------------------------------------------------------------------
tar_c=(tar -C "$ROOT" --numeric-owner --xattrs -cf - .)

# measure CASE RUN CMD...: runs CMD (output to logs/CASE.RUN.log) under GNU
# time and appends "CASE RUN wall_us=.. rss_kib=.." to the results line
# being built in $line.
measure() {
    local case=$1 run=$2 t0 t1
    shift 2
    local log=$W/logs/$case.$run.log
    sync
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f %M -o "$log.rss" "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "$case run $run failed (log above; --keep keeps $log)"
    fi
    t1=$EPOCHREALTIME
    line="$case	$run	wall_us=$(( ${t1/./} - ${t0/./} ))	rss_kib=$(tail -n 1 "$log.rss")"
}
record() { printf '%s\n' "$line" >>"$results"; }

# Size in bytes of the top layer of NAME:TAG in the OCI layout STORE.
top_layer_size() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
store, ref = sys.argv[1], sys.argv[2]
index = json.load(open(f"{store}/index.json"))
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
algo, hexd = desc["digest"].split(":")
manifest = json.load(open(f"{store}/blobs/{algo}/{hexd}"))
print(manifest["layers"][-1]["size"])
EOF
}

# The value of the last log line "PREFIX ... in DURATION" (DURATION as Rust
# prints it: 1.88s, 936.65ms), or "?".
logged_duration() {
    grep -a "kiwi-stackbuild: info: $2 " "$1" | tail -n 1 | sed -n 's/.* in \([0-9.]*[mµun]*s\)$/\1/p' | grep . || echo '?'
}

# podman_env DIR: sets penv to the environment that gives podman a storage
# and a tmp dir of its own under DIR.
podman_env() {
    mkdir -p "$1/tmp"
    cat >"$1/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$1/storage"
runroot = "$1/run"
EOF
    cat >"$1/containers.conf" <<EOF
[engine]
tmp_dir = "$1/tmp"
events_logger = "none"
EOF
    penv=("CONTAINERS_STORAGE_CONF=$1/storage.conf" "CONTAINERS_CONF=$1/containers.conf")
}

# in_kiwi_ns STASH_DIR CMD...: CMD in a new mount namespace where STASH_DIR
# is /var/tmp/kiwi-stash.
in_kiwi_ns() {
    unshare -m --propagation private bash -c 'mount --bind "$1" /var/tmp/kiwi-stash && shift && exec "$@"' _ "$@"
}
export -f in_kiwi_ns

# Wrappers for ours_w2: umoci under GNU time, and kiwi-ng recording the
# VmHWM (peak RSS so far) of kiwi-stackbuild, its parent, when the build
# starts, i.e. after the restore.
cat >"$W/umoci-rss" <<EOF
#!/bin/sh
exec /usr/bin/time -f %M -o "\$BENCH_RSS.umoci" $(command -v umoci) "\$@"
EOF
cat >"$W/kiwi-ng-rss" <<EOF
#!/bin/sh
case " \$* " in *" create "*) awk '/^VmHWM:/ { print \$2 }' /proc/\$PPID/status >"\$BENCH_RSS.self" ;; esac
exec $kiwi_ng "\$@"
EOF
printf '#!/bin/sh\necho "KIWI (next generation) version %s"\n' "$(kiwi-ng --version | awk '{print $NF}')" >"$W/kiwi-ng-stub"
chmod +x "$W/umoci-rss" "$W/kiwi-ng-rss" "$W/kiwi-ng-stub"

# --- the stores the re-stash and W2 cases start from (not timed) ---------------
say "stashing the root once with both tools, and the gzip -1 archive for tar -xzf"
base_store=$W/store-base
"$bin" --stash-home "$base_store" stash --root "$ROOT" --container-name bench >"$W/logs/base-stash.log" 2>&1 \
    || { cat "$W/logs/base-stash.log" >&2; die "kiwi-stackbuild stash failed"; }
mkdir -p "$W/kiwi/base/stash"
podman_env "$W/kiwi/base/podman"
kiwi_base_env=("${penv[@]}")
env "${kiwi_base_env[@]}" bash -c 'in_kiwi_ns "$@"' _ "$W/kiwi/base/stash" \
    kiwi-ng --config "$kiwi_yml" --temp-dir "$W/tmp" system stash --root "$ROOT" --container-name bench \
    >"$W/logs/kiwi-base-stash.log" 2>&1 \
    || { tail -n 30 "$W/logs/kiwi-base-stash.log" >&2; die "kiwi-ng system stash failed"; }
"${tar_c[@]}" | gzip -1 >"$W/untar-source.tar.gz"

# --- one run of each case -----------------------------------------------------
case_ours_stash() {
    local store=$W/store-$1
    measure ours_stash "$1" "$bin" --stash-home "$store" stash --root "$ROOT" --container-name bench
    line+="	stored=$(logged_duration "$W/logs/ours_stash.$1.log" stored)	layer_bytes=$(top_layer_size "$store" bench:latest)"
    record
    discard "$store"
}
case_ours_stash_stub() {
    local store=$W/store-stub-$1
    measure ours_stash_stub "$1" env KIWI_NG="$W/kiwi-ng-stub" "$bin" --stash-home "$store" stash --root "$ROOT" --container-name bench
    line+="	stored=$(logged_duration "$W/logs/ours_stash_stub.$1.log" stored)"
    record
    discard "$store"
}
case_ours_restash() {
    local store=$W/store-re-$1
    cp -al "$base_store" "$store"
    printf 'kiwi-stackbuild bench run %s\n' "$1" >>"$ROOT/etc/motd"
    measure ours_restash "$1" "$bin" --debug --stash-home "$store" stash --root "$ROOT" --container-name bench
    line+="	stored=$(logged_duration "$W/logs/ours_restash.$1.log" stored)"
    line+="	read_base=$(grep -a 'debug: read .* entries of' "$W/logs/ours_restash.$1.log" | sed -n 's/.* in \([0-9.]*[mµun]*s\)$/\1/p' | tail -n 1)"
    line+="	layer_bytes=$(top_layer_size "$store" bench:latest)"
    record
    discard "$store"
}
case_ours_w2() {
    local target=$W/w2-ours-$1
    export BENCH_RSS=$W/logs/ours_w2.$1
    measure ours_w2 "$1" env KIWI_NG="$W/kiwi-ng-rss" UMOCI="$W/umoci-rss" \
        "$bin" --stash-home "$base_store" --kiwi-config "$kiwi_yml" --shared-cache-dir "$W/cache" \
        rebuild --root bench -- --target-dir "$target"
    line+="	unpacked=$(logged_duration "$W/logs/ours_w2.$1.log" unpacked)"
    line+="	self_rss_kib=$(cat "$BENCH_RSS.self" 2>/dev/null || echo '?')	umoci_rss_kib=$(tail -n 1 "$BENCH_RSS.umoci" 2>/dev/null || echo '?')"
    record
    discard "$target"
}
case_kiwi_stash() {
    local d=$W/kiwi/stash-$1
    mkdir -p "$d/stash" "$d/tmp"
    podman_env "$d/podman"
    # podman sets up a new storage on first use; a KIWI user's is set up already.
    env "${penv[@]}" bash -c 'in_kiwi_ns "$@"' _ "$d/stash" podman images >/dev/null
    measure kiwi_stash "$1" env "${penv[@]}" bash -c 'in_kiwi_ns "$@"' _ "$d/stash" \
        kiwi-ng --config "$kiwi_yml" --temp-dir "$d/tmp" system stash --root "$ROOT" --container-name bench
    line+="	archive_bytes=$(stat -c %s "$d/stash/bench/bench.tar")"
    record
    discard "$d"
}
case_kiwi_w2() {
    local target=$W/w2-kiwi-$1
    measure kiwi_w2 "$1" env "${kiwi_base_env[@]}" bash -c 'in_kiwi_ns "$@"' _ "$W/kiwi/base/stash" \
        kiwi-ng --config "$kiwi_yml" --shared-cache-dir "$W/cache" system stackbuild --stash bench --target-dir "$target"
    record
    discard "$target"
}
case_floor_tar() {
    measure floor_tar "$1" bash -c 'set -o pipefail; "$@" | cat >/dev/null' _ "${tar_c[@]}"
    record
}
# A tar of the root piped through a compressor into WORK/floor-RUN.EXT.
floor_compress() {
    local name=$1 run=$2 ext=$3
    shift 3
    local out=$W/floor-$run.$ext
    measure "$name" "$run" bash -c 'set -o pipefail; out=$1; compressor=$2; shift 2; "$@" | $compressor >"$out"' \
        _ "$out" "$*" "${tar_c[@]}"
    line+="	archive_bytes=$(stat -c %s "$out")"
    record
    discard "$out"
}
case_floor_gzip() {
    floor_compress floor_gzip "$1" tar.gz gzip -1
}
case_floor_zstd() {
    floor_compress floor_zstd "$1" tar.zst zstd -T0 -q
}
case_floor_untar() {
    local dir=$W/untar-$1
    mkdir "$dir"
    measure floor_untar "$1" tar --numeric-owner --xattrs --xattrs-include='*' -xzf "$W/untar-source.tar.gz" -C "$dir"
    record
    discard "$dir"
}

cases=(ours_stash kiwi_stash floor_gzip ours_restash floor_tar ours_w2 floor_untar
       ours_stash_stub kiwi_w2 floor_zstd)
loads=()
bench_t0=$EPOCHREALTIME
for ((r = 1; r <= runs; r++)); do
    say "round $r of $runs (load average $(load))"
    loads+=("$(load)")
    for ((i = 0; i < ${#cases[@]}; i++)); do
        c=${cases[(i + r - 1) % ${#cases[@]}]}
        "case_$c" "$r"
    done
done
bench_us=$(( ${EPOCHREALTIME/./} - ${bench_t0/./} ))
say "load average after: $(load)"

# --- the report ---------------------------------------------------------------
cat >"$W/meta.env" <<EOF
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
runs=$runs
large=${large:-0}
nproc=$(nproc)
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
kernel=$(uname -r)
loads=$(IFS=';'; echo "${loads[*]}")
load_after=$(load)
tree_entries=$tree_entries
tree_bytes=$tree_bytes
prepare_us=$prep_us
bench_us=$bench_us
commit=$commit
kiwi_ng=$(kiwi-ng --version | awk '{print $NF}')
umoci=$(umoci --version | awk '{print $NF}')
podman=$(podman --version | awk '{print $NF}')
tar=$(tar --version | awk 'NR == 1 {print $NF}')
gzip=$(gzip --version | awk 'NR == 1 {print $NF}')
zstd=$(zstd --version | sed -n 's/.* v\([0-9.]*\).*/\1/p')
EOF
python3 contrib/bench_report.py --meta "$W/meta.env" --results "$results" --json "$json"
say "JSON written to $json"
