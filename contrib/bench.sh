#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted `bash -c` scripts expand in the child
# Benchmarks kiwi-stackbuild on real Debian root trees against KIWI's own
# `system stash` / `system stackbuild` and against plain tar, gzip, pigz and
# zstd floors, on this machine, in one run:
#   1. prepares each root once with kiwi-ng system prepare (or takes it from
#      --root-cache): the `fixture` root of fixtures/debian-bookworm (171 MB
#      on disk, 164 MB of data, ~7,250 entries; --large adds locales, perl,
#      python3-minimal, vim-tiny and systemd: ~228 MB of data, ~9,800
#      entries) and with --big also the `big` root: the same description
#      with compilers, clang, gdb, Python with numpy and scipy, Perl, Boost
#      headers, git, vim, locales and documentation added (big_packages
#      below: 1.5 GB on disk, ~45,000 entries);
#   2. builds target/release/kiwi-stackbuild (cargo build --release --locked);
#   3. per root, times each case --runs times, round-robin (one run of every
#      case per round, the order rotated each round), with `sync` before
#      every run;
#   4. prints per root median/min/max, CPU seconds per GB of tree, the
#      ratios and the targets as Markdown tables (contrib/bench_report.py)
#      and writes the same data as JSON.
#
# Why a script and not a Rust binary or a cargo bench: what is measured is
# whole command lines of several programs (kiwi-stackbuild, kiwi-ng, podman,
# tar, gzip, pigz, zstd) run as a user runs them, with GNU time for peak RSS
# and CPU time and a mount namespace for KIWI's hard-coded stash directory.
# A script shows the exact commands that were timed, needs nothing built
# besides the binary it measures, and keeps benchmark code out of the
# shipped binary. Statistics and tables are python3 (stdlib only) in
# contrib/bench_report.py.
#
# Cases (on each root; all on the same prepared root, page cache warm):
#   ours_stash       kiwi-stackbuild stash --root ROOT into an empty store
#                    (gzip, the default --jobs: all cores)
#   ours_stash_jobs1 the same with --jobs 1
#   ours_stash_zstd  the same with --compression zstd --compression-level 3
#                    (the level of floor_zstd)
#   ours_stash_stub  the same as ours_stash with KIWI_NG pointing to a stub
#                    that only prints the version (fixture root only)
#   ours_restash     append a line to ROOT/etc/motd, stash again into a copy
#                    of a store that has the first stash (one delta layer)
#   ours_restash_unchanged  stash ROOT onto a store that has ROOT as it is
#                    (brought up to date untimed first): nothing changed; the
#                    layers of the stash's manifest are counted before and
#                    after (new_layers)
#   ours_restore     kiwi-stackbuild rebuild --root bench -- --target-dir T
#                    with a kiwi-ng wrapper that stops at `system create`:
#                    its log line `unpacked ... in X` is the restore time
#   ours_restore_zstd  the same from a --compression zstd stash
#   ours_w2          the whole W2 (kiwi-ng system create of a tbz included);
#                    wrappers record the RSS of umoci and of kiwi-stackbuild
#                    (its VmHWM when it starts kiwi-ng)
#   ours_build_fresh  kiwi-stackbuild rebuild --description D --keep-root
#                    bench-reuse --reuse -- --target-dir T into an empty
#                    store: a whole kiwi-ng system build (prepare from the
#                    package cache, which the first build filled) and the
#                    stash of its root (fixture root only)
#   ours_build_reused the same command on a store that holds what such a
#                    build kept: inputs unchanged, so W2 from it, no prepare
#                    (the log must say "skipping prepare"; fixture root only)
#   kiwi_stash       kiwi-ng system stash --root ROOT (fresh stash dir and
#                    podman storage every run)
#   kiwi_w2          kiwi-ng system stackbuild --stash bench --target-dir T
#   floor_tar        tar -cf - ROOT | cat >/dev/null
#   floor_gzip       tar -cf - ROOT | gzip -1 > FILE
#   floor_pigz       tar -cf - ROOT | pigz -1 -p NCORES > FILE
#   floor_zstd       tar -cf - ROOT | zstd -3 -T0 -q > FILE
#   floor_untar      tar -xzf (a pigz -1 archive) -C EMPTY_DIR
#   floor_unzstd     zstd -dc (the zstd -3 archive) | tar -x -C EMPTY_DIR
# The floors use --numeric-owner --xattrs and store the whole root, as a
# stash does (nothing is mounted in a prepared root). GNU time gives every
# case its peak RSS and its CPU seconds (user+sys, children included).
# A case whose option the binary lacks (--compression, --compression-level,
# --jobs: `kiwi-stackbuild --help` decides) is reported as not measured.
# On the big root kiwi_stash and floor_gzip run --slow-runs-big times only
# (default 1: KIWI's stash of it takes minutes, gzip -1 one), ours_w2 and
# kiwi_w2 only with --big-w2 (then --slow-runs-big times: W2 bzip2s a tbz of
# the root), and ours_stash_stub, ours_build_fresh and ours_build_reused not
# at all (a prepare of the big root takes many minutes).
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
# Usage (as root): contrib/bench.sh [--runs N] [--large] [--big]
#                  [--root-cache DIR] [--prepare-only] [--slow-runs-big N]
#                  [--big-w2] [--json FILE] [--keep] [--host-fs]
#   --runs N     runs of every case (default 5)
#   --large      the fixture root with more packages
#   --big        run every case on the big root too (1.5 GB, ~45,000
#                entries; preparing it downloads several hundred MB)
#   --root-cache DIR  keep prepared roots in DIR/LABEL-KEY, KEY a hash of
#                the mirror and of the description's files, and reuse them
#                when present (a root is only read; the etc/motd the
#                re-stash case appends to is put back when the run ends)
#   --prepare-only  prepare (or find) the roots, then stop
#   --slow-runs-big N  runs of kiwi_stash, floor_gzip, kiwi_w2 and ours_w2
#                on the big root (default 1)
#   --big-w2     run ours_w2 and kiwi_w2 on the big root too
#   --json FILE  where the JSON goes (default WORK/bench.json, copied to
#                /var/tmp/kiwi-stackbuild-bench.json when WORK is removed)
#   --keep       keep the work dir (logs of every run, the stores)
#   --host-fs    make the work dir on BENCH_TMPDIR's own file system, not
#                on a fresh one (see "the work dir's file system" below)
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

runs=5 large='' big='' big_w2='' json='' keep='' root_cache='' prepare_only='' slow_runs_big=1 host_fs=''
while [ $# -gt 0 ]; do
    case $1 in
        --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift 2 ;;
        --runs=*) runs=${1#*=}; shift ;;
        --large) large=1; shift ;;
        --big) big=1; shift ;;
        --big-w2) big_w2=1; shift ;;
        --slow-runs-big) [ $# -ge 2 ] || die "--slow-runs-big needs a number"; slow_runs_big=$2; shift 2 ;;
        --slow-runs-big=*) slow_runs_big=${1#*=}; shift ;;
        --root-cache) [ $# -ge 2 ] || die "--root-cache needs a directory"; root_cache=$2; shift 2 ;;
        --root-cache=*) root_cache=${1#*=}; shift ;;
        --prepare-only) prepare_only=1; shift ;;
        --json) [ $# -ge 2 ] || die "--json needs a file"; json=$2; shift 2 ;;
        --json=*) json=${1#*=}; shift ;;
        --keep) keep=1; shift ;;
        --host-fs) host_fs=1; shift ;;
        -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case $json in /*|'') ;; *) json=$start_dir/$json ;; esac
case $root_cache in /*|'') ;; *) root_cache=$start_dir/$root_cache ;; esac
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number, not '$runs'"
[[ $slow_runs_big =~ ^[1-9][0-9]*$ ]] || die "--slow-runs-big takes a positive number, not '$slow_runs_big'"
[ "$(id -u)" = 0 ] || die "run this as root: kiwi-ng and the stash keep owners and device nodes"
[ -x /usr/bin/time ] || die "GNU time is missing at /usr/bin/time: run contrib/setup.sh (or apt-get install time)"
for t in kiwi-ng umoci skopeo podman rsync tar gzip pigz zstd unshare mount python3 cargo; do
    command -v "$t" >/dev/null || die "$t is missing: run contrib/setup.sh"
done
mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -n 1)}
[ -n "$mirror" ] || die "no Debian bookworm mirror in this machine's apt sources; set DEBIAN_MIRROR"
kiwi_ng=$(command -v kiwi-ng)
kiwi_yml=$repo/fixtures/kiwi.yml

W=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.XXXX")
[ -n "$json" ] || json=$W/bench.json
made_stash_mountpoint=
fs_image=
# Roots from --root-cache whose etc/motd the re-stash case appends to: the
# saved copy goes back when the run ends, so a cached root stays as prepared.
motd_saves=()
cleanup() {
    local rc=$? m i
    # Every kiwi-ng and podman call ran in its own mount namespace; this is
    # only a guard should one of their mounts have leaked out.
    for m in $(findmnt -rn -o TARGET | grep -F "$W/" | sort -r); do umount -l "$m" || true; done
    if [ -n "$made_stash_mountpoint" ]; then rmdir /var/tmp/kiwi-stash 2>/dev/null || true; fi
    for ((i = 0; i + 1 < ${#motd_saves[@]}; i += 2)); do
        cp -a "${motd_saves[i]}" "${motd_saves[i + 1]}" || say "could not put back ${motd_saves[i + 1]}"
    done
    if [ -n "$keep" ]; then
        say "work dir kept: $W$([ -n "$fs_image" ] && echo " (the file system in $fs_image, mounted there: umount $W && rm $fs_image drops it)")"
    else
        case $json in "$W"/*) [ -f "$json" ] && cp "$json" "${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.json" \
            && say "JSON copied to ${BENCH_TMPDIR:-/var/tmp}/kiwi-stackbuild-bench.json" ;; esac
        if [ -n "$fs_image" ]; then
            umount "$W" || umount -l "$W" || true
            rm -f "$fs_image"
        fi
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

# --- the work dir's file system -------------------------------------------------
# Every case writes into the work dir, which is a fresh ext4 file system
# (mkfs.ext4's defaults, a journal among them) in a sparse image file beside
# it, on a loop device with direct I/O (so that its writes are not cached a
# second time), mounted with discard (so that what a case deletes gives its
# space back to BENCH_TMPDIR). The reason is the machines these numbers come
# from: their root file system is ext4 without a journal, where the inode
# allocator skips inodes deleted in the last one to six minutes one buffer
# lookup at a time. After the big root's 45,000 files were deleted, `tar
# -xzf` of the same archive took 13 to 51 s there (perf: two thirds of it in
# recently_deleted and find_inode_bit), and every restore and untar case
# follows another case's cleanup. --host-fs measures on BENCH_TMPDIR's own
# file system instead.
fs_kind="the file system of ${BENCH_TMPDIR:-/var/tmp} ($(findmnt -n -o FSTYPE -T "$W"))"
if [ -z "$host_fs" ]; then
    for t in mkfs.ext4 losetup; do
        command -v "$t" >/dev/null || die "$t is missing (it comes with e2fsprogs and mount), or pass --host-fs"
    done
    fs_image=$W.img
    # Sparse: only what is written takes room, and discard gives it back.
    avail_kib=$(df -k --output=avail "$(dirname "$W")" | tail -n 1)
    truncate -s "$(( avail_kib > 67108864 ? 64 : avail_kib / 1048576 - 2 ))G" "$fs_image"
    # Inode tables and journal made now: no lazy init writes during the runs.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$fs_image" || die "mkfs.ext4 $fs_image failed (or pass --host-fs)"
    loop=$(losetup --find --show --direct-io=on "$fs_image") || die "no loop device for $fs_image (or pass --host-fs)"
    mount -o discard "$loop" "$W" || { losetup -d "$loop"; die "mounting $fs_image failed (or pass --host-fs)"; }
    # The loop device goes when the file system is unmounted.
    losetup -d "$loop"
    fs_kind="a fresh ext4 with a journal in $fs_image (loop device, direct I/O)"
fi
mkdir -p "$W/logs" "$W/tmp"
load() { cut -d' ' -f1-3 /proc/loadavg; }
say "the work dir is on $fs_kind"

labels=(fixture)
[ -z "$big" ] || labels+=(big)
say "work dir $W, $runs runs per case, roots: ${labels[*]}$([ -n "$large" ] && echo " (fixture root with --large)")"
say "load average before: $(load)"

# --- the roots ----------------------------------------------------------------
# What the big root adds to the fixture's bash and coreutils: gcc, clang
# (with LLVM's libraries), gdb, Python with numpy and scipy, Perl, Boost
# headers and documentation. Real packaged data: ELF binaries, libraries,
# headers, bytecode, HTML. Go and a JDK are left out: they made it 2.6 GB,
# and the run too long for --runs 3 on 2 cores.
big_packages=(build-essential gdb clang python3 python3-dev python3-pip
              python3-numpy python3-scipy perl perl-doc libboost-dev python3-doc
              git vim locales)
large_packages=(locales perl python3-minimal vim-tiny systemd)

# describe LABEL DIR: writes the description of root LABEL to DIR: the
# fixture with this machine's mirror, plus the packages of --large or big.
describe() {
    local label=$1 dir=$2 lines='' p
    local -a extra=()
    mkdir -p "$(dirname "$dir")"
    cp -r fixtures/debian-bookworm "$dir"
    sed -i "s|@DEBIAN_MIRROR@|$mirror|" "$dir/config.xml"
    if [ "$label" = big ]; then
        extra=("${big_packages[@]}")
    elif [ -n "$large" ]; then
        extra=("${large_packages[@]}")
    fi
    for p in "${extra[@]}"; do lines+="\\n        <package name=\"$p\"/>"; done
    [ -z "$lines" ] || sed -i "s|<package name=\"coreutils\"/>|&$lines|" "$dir/config.xml"
}

# prepare_root LABEL: prepares root LABEL with kiwi-ng system prepare, or
# with --root-cache finds it prepared under DIR/LABEL-KEY (KEY: sha256 of the
# mirror and of every file of the description), and writes W/LABEL/root.env
# (ROOT, its entries and bytes, the prepare time, whether it was reused).
prepare_root() {
    local label=$1 desc=$W/$1/description dir key t0 us reused=0
    describe "$label" "$desc"
    if [ -n "$root_cache" ]; then
        key=$( { printf '%s\n' "$mirror"; (cd "$desc" && find . -type f -print0 | sort -z | xargs -0 sha256sum); } \
            | sha256sum | cut -c1-16)
        dir=$root_cache/$label-$key
    else
        dir=$W/$label/prepared
    fi
    if [ -f "$dir/prepared.env" ]; then
        say "$label root: reusing $dir/root (prepared before, --root-cache)"
        reused=1
    else
        rm -rf "$dir" "$dir.partial"
        mkdir -p "$dir.partial"
        say "$label root: preparing with kiwi-ng system prepare from $mirror"
        t0=$EPOCHREALTIME
        if ! kiwi-ng --config "$kiwi_yml" --shared-cache-dir "$W/cache" system prepare \
                --description "$desc" --root "$dir.partial/root" >"$W/logs/$label-prepare.log" 2>&1; then
            tail -n 30 "$W/logs/$label-prepare.log" >&2
            die "kiwi-ng system prepare of the $label root failed (log above)"
        fi
        us=$(( ${EPOCHREALTIME/./} - ${t0/./} ))
        # The facts are taken before anything runs on the root.
        printf 'tree_entries=%s\ntree_bytes=%s\nprepare_us=%s\n' \
            "$(find "$dir.partial/root" -mindepth 1 | wc -l)" \
            "$(du -sb --apparent-size "$dir.partial/root" | cut -f1)" "$us" >"$dir.partial/prepared.env"
        mv "$dir.partial" "$dir"
    fi
    { printf 'ROOT=%q\n' "$dir/root"; cat "$dir/prepared.env"; echo "reused=$reused"; } >"$W/$label/root.env"
    # shellcheck source=/dev/null
    . "$W/$label/root.env"
    say "$label root: $tree_entries entries, $tree_bytes bytes (du --apparent-size), $(du -sh "$ROOT" | cut -f1) on disk," \
        "prepared in $((prepare_us / 1000000)) s"
}
# Set by sourcing W/LABEL/root.env.
ROOT='' tree_entries='' tree_bytes='' prepare_us='' reused=''
for label in "${labels[@]}"; do prepare_root "$label"; done
if [ -n "$prepare_only" ]; then
    say "roots prepared (--prepare-only)"
    exit 0
fi

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
# Options a case needs that an older binary lacks: such a case is recorded
# as not measured instead of failing the run.
help=$("$bin" --help)
lacks() {
    grep -qE -- "$1([^-a-z]|\$)" <<<"$help" && return 1
    printf 'the binary has no %s' "$1"
}
no_zstd=$(lacks --compression || true)
[ -n "$no_zstd" ] || no_zstd=$(lacks --compression-level || true)
no_jobs=$(lacks --jobs || true)
no_reuse=
grep -qE -- '--reuse([^-a-z]|$)' <<<"$("$bin" rebuild --help)" || no_reuse="the binary has no rebuild --reuse"
# The zstd level of both our zstd stash and the zstd floor.
zstd_level=3
ncores=$(nproc)

# --- helpers ------------------------------------------------------------------
# measure CASE RUN CMD...: runs CMD (output to R/logs/CASE.RUN.log) under
# GNU time and sets $line to "CASE RUN wall_us=.. rss_kib=.. cpu_s=..", the
# results line being built (cpu_s: user+sys of CMD and its children).
measure() {
    local case=$1 run=$2 t0 t1 rss user sys
    shift 2
    local log=$R/logs/$case.$run.log
    sync
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f '%M %U %S' -o "$log.time" "$@" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "$case run $run on the $label root failed (log above; --keep keeps $log)"
    fi
    t1=$EPOCHREALTIME
    read -r rss user sys < <(tail -n 1 "$log.time")
    line="$case	$run	wall_us=$(( ${t1/./} - ${t0/./} ))	rss_kib=$rss	cpu_s=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')"
}
record() { printf '%s\n' "$line" >>"$results"; }
# not_measured CASE RUN REASON: records that CASE could not run.
not_measured() { printf '%s\t%s\tnot_measured=%s\n' "$1" "$2" "$3" >>"$results"; }

# The manifest of NAME:TAG in the OCI layout STORE, as JSON.
manifest_of() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
store, ref = sys.argv[1], sys.argv[2]
index = json.load(open(f"{store}/index.json"))
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref)
algo, hexd = desc["digest"].split(":")
print(open(f"{store}/blobs/{algo}/{hexd}").read())
EOF
}
# Size in bytes of the top layer of NAME:TAG in STORE.
top_layer_size() { manifest_of "$1" "$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["layers"][-1]["size"])'; }
# Number of layers of NAME:TAG in STORE.
layer_count() { manifest_of "$1" "$2" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["layers"]))'; }

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

# Wrappers: umoci under GNU time; kiwi-ng recording the VmHWM (peak RSS so
# far) of kiwi-stackbuild, its parent, when the build starts, i.e. after the
# restore (kiwi-ng-restore then stops there: the restore cases time W2 up to
# the hand-over to kiwi-ng); a stub kiwi-ng that only prints the version.
cat >"$W/umoci-rss" <<EOF
#!/bin/sh
exec /usr/bin/time -f %M -o "\$BENCH_RSS.umoci" $(command -v umoci) "\$@"
EOF
for w in rss restore; do
    cat >"$W/kiwi-ng-$w" <<EOF
#!/bin/sh
case " \$* " in *" --help "*) ;; *" create "*)
    awk '/^VmHWM:/ { print \$2 }' /proc/\$PPID/status >"\$BENCH_RSS.self"
    $([ "$w" = restore ] && echo 'exit 0') ;;
esac
exec $kiwi_ng "\$@"
EOF
done
printf '#!/bin/sh\necho "KIWI (next generation) version %s"\n' "$(kiwi-ng --version | awk '{print $NF}')" >"$W/kiwi-ng-stub"
chmod +x "$W/umoci-rss" "$W/kiwi-ng-rss" "$W/kiwi-ng-restore" "$W/kiwi-ng-stub"

# What a run made is moved aside, not deleted, until the round ends:
# deleting a 170 MB root slows the file creation of whatever runs next on the
# same file system (seen: an unpack took 2.7 s instead of 1.5 s), which would
# charge one case for another's cleanup. Between rounds the trash is emptied
# and synced; on the big root after every case (a round's outputs of a 1.5 GB
# root take about 12 GB).
discard() {
    local p
    for p in "$@"; do
        [ -e "$p" ] && mv "$p" "$R/trash/$(basename "$p").$RANDOM$RANDOM"
    done
    return 0
}
empty_trash() { rm -rf "$R/trash"; mkdir -p "$R/trash"; sync; }

# --- the cases (one run each; $1 is the run number) ---------------------------
# stash_case CASE RUN OPTIONS...: kiwi-stackbuild OPTIONS stash into an empty store.
stash_case() {
    local case=$1 run=$2 store=$R/store-$1-$2
    shift 2
    measure "$case" "$run" "$@" --stash-home "$store" stash --root "$ROOT" --container-name bench
    line+="	stored=$(logged_duration "$R/logs/$case.$run.log" stored)	layer_bytes=$(top_layer_size "$store" bench:latest)"
    record
    discard "$store"
}
case_ours_stash() { stash_case ours_stash "$1" "$bin"; }
case_ours_stash_stub() { stash_case ours_stash_stub "$1" env KIWI_NG="$W/kiwi-ng-stub" "$bin"; }
case_ours_stash_zstd() {
    if [ -n "$no_zstd" ]; then not_measured ours_stash_zstd "$1" "$no_zstd"; return; fi
    stash_case ours_stash_zstd "$1" "$bin" --compression zstd --compression-level "$zstd_level"
}
case_ours_stash_jobs1() {
    if [ -n "$no_jobs" ]; then not_measured ours_stash_jobs1 "$1" "$no_jobs"; return; fi
    stash_case ours_stash_jobs1 "$1" "$bin" --jobs 1
}
case_ours_restash() {
    local store=$R/store-re-$1
    cp -al "$base_store" "$store"
    printf 'kiwi-stackbuild bench run %s\n' "$1" >>"$ROOT/etc/motd"
    measure ours_restash "$1" "$bin" --debug --stash-home "$store" stash --root "$ROOT" --container-name bench
    line+="	stored=$(logged_duration "$R/logs/ours_restash.$1.log" stored)"
    line+="	read_base=$(grep -a 'debug: read .* entries of' "$R/logs/ours_restash.$1.log" | sed -n 's/.* in \([0-9.]*[mµun]*s\)$/\1/p' | head -n 1)"
    line+="	layer_bytes=$(top_layer_size "$store" bench:latest)"
    record
    discard "$store"
}
# The store is first brought up to the root as it is now (untimed: the
# re-stash case changes etc/motd), then the same root is stashed onto it again.
case_ours_restash_unchanged() {
    local store=$R/store-same-$1 before after
    cp -al "$base_store" "$store"
    "$bin" --stash-home "$store" stash --root "$ROOT" --container-name bench >"$R/logs/ours_restash_unchanged.$1.setup.log" 2>&1 \
        || { tail -n 30 "$R/logs/ours_restash_unchanged.$1.setup.log" >&2; die "kiwi-stackbuild stash failed"; }
    before=$(layer_count "$store" bench:latest)
    measure ours_restash_unchanged "$1" "$bin" --stash-home "$store" stash --root "$ROOT" --container-name bench
    after=$(layer_count "$store" bench:latest)
    line+="	layers_before=$before	layers_after=$after	new_layers=$((after - before))"
    record
    discard "$store"
}
# restore_case CASE RUN STORE: W2 from STORE up to the hand-over to kiwi-ng.
restore_case() {
    local target=$R/restore-$1-$2
    export BENCH_RSS=$R/logs/$1.$2
    measure "$1" "$2" env KIWI_NG="$W/kiwi-ng-restore" UMOCI="$W/umoci-rss" \
        "$bin" --stash-home "$3" --kiwi-config "$kiwi_yml" rebuild --root bench -- --target-dir "$target"
    line+="	unpacked=$(logged_duration "$R/logs/$1.$2.log" unpacked)"
    line+="	self_rss_kib=$(cat "$BENCH_RSS.self" 2>/dev/null || echo '?')	umoci_rss_kib=$(tail -n 1 "$BENCH_RSS.umoci" 2>/dev/null || echo '?')"
    record
    discard "$target"
}
case_ours_restore() { restore_case ours_restore "$1" "$base_store"; }
case_ours_restore_zstd() {
    if [ -n "$no_zstd" ]; then not_measured ours_restore_zstd "$1" "$no_zstd"; return; fi
    restore_case ours_restore_zstd "$1" "$base_store_zstd"
}
case_ours_w2() {
    local target=$R/w2-ours-$1
    export BENCH_RSS=$R/logs/ours_w2.$1
    measure ours_w2 "$1" env KIWI_NG="$W/kiwi-ng-rss" UMOCI="$W/umoci-rss" \
        "$bin" --stash-home "$base_store" --kiwi-config "$kiwi_yml" --shared-cache-dir "$W/cache" \
        rebuild --root bench -- --target-dir "$target"
    line+="	unpacked=$(logged_duration "$R/logs/ours_w2.$1.log" unpacked)"
    line+="	self_rss_kib=$(cat "$BENCH_RSS.self" 2>/dev/null || echo '?')	umoci_rss_kib=$(tail -n 1 "$BENCH_RSS.umoci" 2>/dev/null || echo '?')"
    record
    discard "$target"
}
# reuse_case CASE RUN STORE: rebuild --reuse of the root's description
# with STORE as the store.
reuse_case() {
    local target=$R/reuse-$1-$2
    measure "$1" "$2" "$bin" --stash-home "$3" --kiwi-config "$kiwi_yml" --shared-cache-dir "$W/cache" \
        rebuild --description "$R/description" --keep-root bench-reuse --reuse -- --target-dir "$target"
    record
    discard "$target"
}
case_ours_build_fresh() {
    if [ -n "$no_reuse" ]; then not_measured ours_build_fresh "$1" "$no_reuse"; return; fi
    reuse_case ours_build_fresh "$1" "$R/store-fresh-$1"
    discard "$R/store-fresh-$1"
}
case_ours_build_reused() {
    if [ -n "$no_reuse" ]; then not_measured ours_build_reused "$1" "$no_reuse"; return; fi
    reuse_case ours_build_reused "$1" "$reuse_store"
    grep -q "skipping prepare" "$R/logs/ours_build_reused.$1.log" \
        || die "ours_build_reused run $1 did not reuse the kept root (log: $R/logs/ours_build_reused.$1.log)"
}
case_kiwi_stash() {
    local d=$R/kiwi/stash-$1
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
    local target=$R/w2-kiwi-$1
    measure kiwi_w2 "$1" env "${kiwi_base_env[@]}" bash -c 'in_kiwi_ns "$@"' _ "$R/kiwi/base/stash" \
        kiwi-ng --config "$kiwi_yml" --shared-cache-dir "$W/cache" system stackbuild --stash bench --target-dir "$target"
    record
    discard "$target"
}
case_floor_tar() {
    measure floor_tar "$1" bash -c 'set -o pipefail; "$@" | cat >/dev/null' _ "${tar_c[@]}"
    record
}
# A tar of the root piped through a compressor into R/floor-RUN.EXT.
floor_compress() {
    local name=$1 run=$2 ext=$3
    shift 3
    local out=$R/floor-$run.$ext
    measure "$name" "$run" bash -c 'set -o pipefail; out=$1; compressor=$2; shift 2; "$@" | $compressor >"$out"' \
        _ "$out" "$*" "${tar_c[@]}"
    line+="	archive_bytes=$(stat -c %s "$out")"
    record
    discard "$out"
}
case_floor_gzip() { floor_compress floor_gzip "$1" tar.gz gzip -1; }
case_floor_pigz() { floor_compress floor_pigz "$1" tar.gz pigz -1 -p "$ncores"; }
case_floor_zstd() { floor_compress floor_zstd "$1" tar.zst zstd "-$zstd_level" -T0 -q; }
case_floor_untar() {
    local dir=$R/untar-$1
    mkdir "$dir"
    measure floor_untar "$1" tar --numeric-owner --xattrs --xattrs-include='*' -xzf "$R/untar-source.tar.gz" -C "$dir"
    record
    discard "$dir"
}
case_floor_unzstd() {
    local dir=$R/unzstd-$1
    mkdir "$dir"
    measure floor_unzstd "$1" bash -c 'set -o pipefail; zstd -dc "$1" | tar --numeric-owner --xattrs --xattrs-include="*" -xf - -C "$2"' \
        _ "$R/untar-source.tar.zst" "$dir"
    record
    discard "$dir"
}

cases=(ours_stash kiwi_stash floor_gzip ours_restash floor_tar ours_w2 floor_untar ours_stash_zstd
       floor_pigz ours_restore ours_stash_stub kiwi_w2 floor_zstd ours_restash_unchanged
       ours_stash_jobs1 floor_unzstd ours_restore_zstd ours_build_fresh ours_build_reused)
# On the big root: KIWI's cases, our full W2 and tar | gzip -1 (one core)
# run in the first --slow-runs-big rounds only; both W2 cases (their kiwi-ng
# system create bzip2s a tbz of 1.5 GB: minutes, the same work on both
# sides) only with --big-w2; the kiwi-ng stub case not at all
# (kiwi-stackbuild starts no kiwi-ng for stash: ours_stash measures the same).
slow_cases=" kiwi_stash kiwi_w2 ours_w2 floor_gzip "
big_skip=" ours_stash_stub ours_build_fresh ours_build_reused $([ -n "$big_w2" ] || echo ours_w2 kiwi_w2) "

# bench_root LABEL: every case on root LABEL, --runs rounds; writes
# W/LABEL/results.tsv and W/LABEL/meta.env.
bench_root() {
    label=$1
    R=$W/$label
    # shellcheck source=/dev/null
    . "$R/root.env"
    results=$R/results.tsv
    : >"$results"
    mkdir -p "$R/logs" "$R/trash"
    tar_c=(tar -C "$ROOT" --numeric-owner --xattrs -cf - .)
    cp -a "$ROOT/etc/motd" "$R/motd.orig"
    motd_saves+=("$R/motd.orig" "$ROOT/etc/motd")

    say "$label root: stashing it once with both tools (gzip, zstd), and the tar.gz and tar.zst for the unpack floors"
    base_store=$R/store-base
    "$bin" --stash-home "$base_store" stash --root "$ROOT" --container-name bench >"$R/logs/base-stash.log" 2>&1 \
        || { cat "$R/logs/base-stash.log" >&2; die "kiwi-stackbuild stash failed"; }
    base_store_zstd=$R/store-base-zstd
    if [ -z "$no_zstd" ]; then
        "$bin" --compression zstd --compression-level "$zstd_level" --stash-home "$base_store_zstd" \
            stash --root "$ROOT" --container-name bench >"$R/logs/base-stash-zstd.log" 2>&1 \
            || { cat "$R/logs/base-stash-zstd.log" >&2; die "kiwi-stackbuild --compression zstd stash failed"; }
    fi
    if [ "$label" != big ] || [[ $big_skip != *" kiwi_w2 "* ]]; then
        mkdir -p "$R/kiwi/base/stash"
        podman_env "$R/kiwi/base/podman"
        kiwi_base_env=("${penv[@]}")
        env "${kiwi_base_env[@]}" bash -c 'in_kiwi_ns "$@"' _ "$R/kiwi/base/stash" \
            kiwi-ng --config "$kiwi_yml" --temp-dir "$W/tmp" system stash --root "$ROOT" --container-name bench \
            >"$R/logs/kiwi-base-stash.log" 2>&1 \
            || { tail -n 30 "$R/logs/kiwi-base-stash.log" >&2; die "kiwi-ng system stash failed"; }
    fi
    reuse_store=$R/store-reuse
    if [ -z "$no_reuse" ] && [[ $label != big ]]; then
        say "$label root: building its description once with rebuild --keep-root --reuse, for ours_build_reused"
        "$bin" --stash-home "$reuse_store" --kiwi-config "$kiwi_yml" --shared-cache-dir "$W/cache" \
            rebuild --description "$R/description" --keep-root bench-reuse --reuse -- --target-dir "$R/reuse-setup" \
            >"$R/logs/reuse-setup.log" 2>&1 \
            || { tail -n 30 "$R/logs/reuse-setup.log" >&2; die "the first rebuild --reuse failed"; }
        discard "$R/reuse-setup"
    fi
    "${tar_c[@]}" | pigz -1 -p "$ncores" >"$R/untar-source.tar.gz"
    "${tar_c[@]}" | zstd "-$zstd_level" -T0 -q >"$R/untar-source.tar.zst"

    local r i c slow_runs=$runs loads=() t0
    [ "$label" != big ] || slow_runs=$(( slow_runs_big < runs ? slow_runs_big : runs ))
    t0=$EPOCHREALTIME
    for ((r = 1; r <= runs; r++)); do
        say "$label root: round $r of $runs (load average $(load))"
        loads+=("$(load)")
        for ((i = 0; i < ${#cases[@]}; i++)); do
            c=${cases[(i + r - 1) % ${#cases[@]}]}
            if [ "$label" = big ]; then
                [[ $big_skip != *" $c "* ]] || continue
                [[ $r -le $slow_runs || $slow_cases != *" $c "* ]] || continue
            fi
            "case_$c" "$r"
            [ "$label" != big ] || empty_trash
        done
        empty_trash
    done
    cat >"$R/meta.env" <<EOF
root=$ROOT
reused=$reused
runs=$runs
slow_runs=$slow_runs
slow_cases=$([ "$slow_runs" = "$runs" ] || echo "$slow_cases" | xargs)
skipped=$([ "$label" != big ] || echo "$big_skip" | xargs)
loads=$(IFS=';'; echo "${loads[*]}")
load_after=$(load)
tree_entries=$tree_entries
tree_bytes=$tree_bytes
prepare_us=$prepare_us
bench_us=$(( ${EPOCHREALTIME/./} - ${t0/./} ))
EOF
    # The root's stashes and archives go now: the next root needs the disk.
    rm -rf "$R/store-base" "$R/store-base-zstd" "$R/store-reuse" "$R/kiwi" "$R/untar-source".*
}

report_args=()
for label in "${labels[@]}"; do
    bench_root "$label"
    report_args+=(--root "$label" "$W/$label/meta.env" "$W/$label/results.tsv")
done
say "load average after: $(load)"

# --- the report ---------------------------------------------------------------
cat >"$W/meta.env" <<EOF
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
runs=$runs
large=${large:-0}
nproc=$ncores
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
kernel=$(uname -r)
work_fs=$fs_kind
commit=$commit
zstd_level=$zstd_level
kiwi_ng=$(kiwi-ng --version | awk '{print $NF}')
umoci=$(umoci --version | awk '{print $NF}')
podman=$(podman --version | awk '{print $NF}')
tar=$(tar --version | awk 'NR == 1 {print $NF}')
gzip=$(gzip --version | awk 'NR == 1 {print $NF}')
pigz=$(pigz --version 2>&1 | awk '{print $NF}')
zstd=$(zstd --version | sed -n 's/.* v\([0-9.]*\).*/\1/p')
EOF
python3 contrib/bench_report.py --meta "$W/meta.env" "${report_args[@]}" --json "$json"
say "JSON written to $json"
