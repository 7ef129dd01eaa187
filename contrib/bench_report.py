#!/usr/bin/env python3
"""Statistics, tables and JSON for contrib/bench.sh (python3 stdlib only).

Reads, for each root the benchmark ran on, the run records bench.sh wrote
(one line per run: case, run number, then key=value fields; a case the
binary cannot run has `not_measured=REASON` instead) and the root's facts,
plus the machine facts (key=value lines), prints Markdown tables per root
(measurements, CPU per GB, ratios, targets) and writes the same data as
JSON. Times are wall-clock seconds; the table shows median, min and max over
the runs; peak RSS is GNU time's %M (KiB) shown in MB (10^6 bytes); CPU is
GNU time's user+sys of the command and its children; ratios are of medians.
"""

import argparse
import json
import re
import statistics
import sys

# case: (label, what was run); {zl} is the zstd level of the run.
CASES = {
    "ours_stash": ("kiwi-stackbuild stash, empty store (gzip, all cores)",
                   "kiwi-stackbuild --stash-home EMPTY stash --root ROOT --container-name bench"),
    "ours_stash_stub": ("kiwi-stackbuild stash, `kiwi-ng --version` stubbed",
                        "KIWI_NG=stub kiwi-stackbuild --stash-home EMPTY stash --root ROOT --container-name bench"),
    "ours_stash_jobs1": ("kiwi-stackbuild stash --jobs 1 (gzip, one core)",
                         "kiwi-stackbuild --jobs 1 --stash-home EMPTY stash --root ROOT --container-name bench"),
    "ours_stash_zstd": ("kiwi-stackbuild stash --compression zstd --compression-level {zl}",
                        "kiwi-stackbuild --compression zstd --compression-level {zl} --stash-home EMPTY stash "
                        "--root ROOT --container-name bench"),
    "ours_restash": ("kiwi-stackbuild re-stash, one file changed",
                     "append to ROOT/etc/motd; kiwi-stackbuild --stash-home COPY_OF_BASE stash --root ROOT --container-name bench"),
    "ours_restash_unchanged": ("kiwi-stackbuild re-stash, nothing changed",
                               "kiwi-stackbuild --stash-home STORE_OF_ROOT stash --root ROOT --container-name bench"),
    "ours_restore": ("kiwi-stackbuild restore, gzip stash (W2's unpack step)",
                     "the `unpacked ... in X` log line of kiwi-stackbuild rebuild --root bench (kiwi-ng create stubbed)"),
    "ours_restore_zstd": ("kiwi-stackbuild restore, zstd stash (W2's unpack step)",
                          "the `unpacked ... in X` log line of kiwi-stackbuild rebuild --root bench from a zstd stash "
                          "(kiwi-ng create stubbed)"),
    "ours_w2": ("kiwi-stackbuild rebuild --root (W2)",
                "kiwi-stackbuild --kiwi-config K --shared-cache-dir C rebuild --root bench -- --target-dir T"),
    "ours_build_fresh": ("kiwi-stackbuild rebuild --reuse, nothing kept yet (a whole build)",
                         "kiwi-stackbuild --stash-home EMPTY rebuild --description D --keep-root bench-reuse --reuse "
                         "-- --target-dir T"),
    "ours_build_reused": ("kiwi-stackbuild rebuild --reuse, inputs unchanged (W2, no prepare)",
                          "kiwi-stackbuild --stash-home STORE_OF_IT rebuild --description D --keep-root bench-reuse "
                          "--reuse -- --target-dir T"),
    "kiwi_stash": ("kiwi-ng system stash",
                   "kiwi-ng --config K --temp-dir TMP system stash --root ROOT --container-name bench"),
    "kiwi_w2": ("kiwi-ng system stackbuild (W2)",
                "kiwi-ng --config K --shared-cache-dir C system stackbuild --stash bench --target-dir T"),
    "floor_tar": ("floor: tar | cat", "tar -C ROOT --numeric-owner --xattrs -cf - . | cat >/dev/null"),
    "floor_gzip": ("floor: tar | gzip -1", "tar -C ROOT --numeric-owner --xattrs -cf - . | gzip -1 > FILE"),
    "floor_pigz": ("floor: tar | pigz -1 -p NCORES",
                   "tar -C ROOT --numeric-owner --xattrs -cf - . | pigz -1 -p NCORES > FILE"),
    "floor_zstd": ("floor: tar | zstd -{zl} -T0",
                   "tar -C ROOT --numeric-owner --xattrs -cf - . | zstd -{zl} -T0 -q > FILE"),
    "floor_untar": ("floor: tar -xzf (pigz -1 archive)",
                    "tar --numeric-owner --xattrs --xattrs-include='*' -xzf FILE.tar.gz -C EMPTY_DIR"),
    "floor_unzstd": ("floor: zstd -dc | tar -x (zstd archive)",
                     "zstd -dc FILE.tar.zst | tar --numeric-owner --xattrs --xattrs-include='*' -xf - -C EMPTY_DIR"),
}
ORDER = ["ours_stash", "ours_stash_stub", "ours_stash_jobs1", "ours_stash_zstd", "kiwi_stash", "floor_tar",
         "floor_gzip", "floor_pigz", "floor_zstd", "ours_restash", "ours_restash_unchanged", "ours_restore",
         "floor_untar", "ours_restore_zstd", "floor_unzstd", "ours_w2", "kiwi_w2", "ours_build_fresh",
         "ours_build_reused"]
# Restore cases: the time is the `unpacked` log line, the RSS the larger of
# kiwi-stackbuild's VmHWM at the hand-over to kiwi-ng and umoci's %M.
RESTORE = ("ours_restore", "ours_restore_zstd")
# Peak RSS limits (10^6 bytes) by root; a root not named here has the first.
RSS_LIMIT_MB = {"fixture": 30, "big": 64}
CPU_CASES = ["ours_stash", "ours_stash_jobs1", "ours_stash_zstd", "floor_gzip", "floor_pigz", "floor_zstd"]

UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def rust_duration(text):
    """Seconds of a Rust `{:.2?}` Duration (`1.88s`, `936.65ms`), or None."""
    m = re.fullmatch(r"([0-9.]+)(s|ms|µs|us|ns)", text or "")
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key:
                meta[key] = value
    return meta


def read_runs(path):
    """({case: [ {run, wall_s, rss_kib, cpu_s, ...}, ... ]}, {case: reason
    it was not measured})."""
    runs, skipped = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                continue
            rec = dict(kv.partition("=")[::2] for kv in fields[2:])
            if "not_measured" in rec:
                skipped[fields[0]] = rec["not_measured"]
                continue
            out = {"run": int(fields[1]), "wall_s": int(rec["wall_us"]) / 1e6,
                   "rss_kib": number(rec.get("rss_kib")), "cpu_s": number(rec.get("cpu_s"))}
            for key, value in rec.items():
                if key in ("wall_us", "rss_kib", "cpu_s"):
                    continue
                d = rust_duration(value)
                out[key + "_s" if d is not None else key] = d if d is not None else number(value)
            if fields[0] in RESTORE:
                rss = [x for x in (out.get("self_rss_kib"), out.get("umoci_rss_kib")) if x is not None]
                out["command_wall_s"], out["wall_s"] = out["wall_s"], out.get("unpacked_s")
                out["rss_kib"] = max(rss) if rss else None
            runs.setdefault(fields[0], []).append(out)
    return runs, skipped


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def labels(case, meta):
    label, command = CASES.get(case, (case, ""))
    zl = meta.get("zstd_level", "3")
    return label.format(zl=zl), command.format(zl=zl)


def summarise(runs, skipped, meta):
    out = {}
    for case, rs in runs.items():
        label, command = labels(case, meta)
        entry = {"label": label, "command": command,
                 "wall_s": stats([r["wall_s"] for r in rs]),
                 "peak_rss_kib": stats([r["rss_kib"] for r in rs]),
                 "cpu_s": stats([r["cpu_s"] for r in rs]),
                 "runs": rs}
        for key in ("layer_bytes", "archive_bytes", "stored_s", "read_base_s", "self_rss_kib", "umoci_rss_kib",
                    "command_wall_s", "new_layers", "layers_after"):
            s = stats([r.get(key) for r in rs])
            if s:
                entry[key] = s
        out[case] = entry
    for case, reason in skipped.items():
        label, command = labels(case, meta)
        out.setdefault(case, {"label": label, "command": command, "wall_s": None})["not_measured"] = reason
    return out


def med(summary, case, key="wall_s"):
    s = summary.get(case, {}).get(key)
    return s["median"] if s else None


def peak(summary, case, key="peak_rss_kib"):
    s = summary.get(case, {}).get(key)
    return s["max"] if s else None


def ratio(a, b):
    return a / b if a is not None and b else None


def minus(a, b):
    return a - b if a is not None and b is not None else None


def mb(kib):
    return f"{kib * 1024 / 1e6:.1f} MB" if kib is not None else "–"


def size(n):
    if n is None:
        return "–"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def secs(s):
    return f"{s:.2f} s" if s is not None else "–"


def fmt_ratio(r):
    return f"{r:.2f}" if r is not None else "–"


def cpu_per_gb(summary, meta):
    gb = (number(meta.get("tree_bytes")) or 0) / 1e9
    rows = []
    for case in CPU_CASES:
        c = med(summary, case, "cpu_s")
        rows.append({"case": case, "label": summary.get(case, {}).get("label", labels(case, meta)[0]),
                     "cpu_s": c, "cpu_s_per_gb": c / gb if c is not None and gb else None,
                     "not_measured": summary.get(case, {}).get("not_measured")})
    return rows


def ratios(summary, meta):
    tree = number(meta.get("tree_bytes"))
    layer = med(summary, "ours_stash", "layer_bytes")
    delta = med(summary, "ours_restash", "layer_bytes")
    tar = med(summary, "floor_tar")
    rows = [
        ("stash / KIWI system stash", ratio(med(summary, "ours_stash"), med(summary, "kiwi_stash"))),
        ("stash / tar | gzip -1", ratio(med(summary, "ours_stash"), med(summary, "floor_gzip"))),
        ("stash / tar | pigz -1", ratio(med(summary, "ours_stash"), med(summary, "floor_pigz"))),
        ("stash (zstd) / tar | zstd -T0", ratio(med(summary, "ours_stash_zstd"), med(summary, "floor_zstd"))),
        ("stash / tar | cat", ratio(med(summary, "ours_stash"), tar)),
        ("stash (kiwi-ng stubbed) / tar | gzip -1", ratio(med(summary, "ours_stash_stub"), med(summary, "floor_gzip"))),
        ("stash --jobs 1 / stash (all cores)", ratio(med(summary, "ours_stash_jobs1"), med(summary, "ours_stash"))),
        ("stash --jobs 1 / stash (all cores), beyond tar | cat (the compression part)",
         ratio(minus(med(summary, "ours_stash_jobs1"), tar), minus(med(summary, "ours_stash"), tar))),
        ("restore / tar -xzf", ratio(med(summary, "ours_restore"), med(summary, "floor_untar"))),
        ("restore (zstd) / zstd -dc | tar -x", ratio(med(summary, "ours_restore_zstd"), med(summary, "floor_unzstd"))),
        ("re-stash / stash", ratio(med(summary, "ours_restash"), med(summary, "ours_stash"))),
        ("re-stash, nothing changed / stash", ratio(med(summary, "ours_restash_unchanged"), med(summary, "ours_stash"))),
        ("re-stash layer / tree (du --apparent-size)", ratio(delta, tree)),
        ("re-stash layer / full stash layer", ratio(delta, layer)),
        ("stash layer / tar | gzip -1 archive", ratio(layer, med(summary, "floor_gzip", "archive_bytes"))),
        ("stash layer (zstd) / tar | zstd archive",
         ratio(med(summary, "ours_stash_zstd", "layer_bytes"), med(summary, "floor_zstd", "archive_bytes"))),
        ("W2: kiwi-stackbuild / KIWI stackbuild", ratio(med(summary, "ours_w2"), med(summary, "kiwi_w2"))),
        ("rebuild --reuse: reused / fresh", ratio(med(summary, "ours_build_reused"), med(summary, "ours_build_fresh"))),
    ]
    return [{"name": n, "value": v} for n, v in rows]


def targets(summary, meta, label, nproc):
    r = {x["name"]: x["value"] for x in ratios(summary, meta)}
    limit_mb = RSS_LIMIT_MB.get(label, next(iter(RSS_LIMIT_MB.values())))
    limit_kib = limit_mb * 1e6 / 1024

    def check(ok):
        return None if ok is None else bool(ok)

    def le(v, limit):
        return check(v <= limit) if v is not None else None

    def lt(v, limit):
        return check(v < limit) if v is not None else None

    def why_not(*cases):
        """'not measured (REASON)' when one of cases was not measured, else None."""
        for c in cases:
            reason = summary.get(c, {}).get("not_measured")
            if reason:
                return f"not measured ({reason})"
        return None

    def vs(name, a, b):
        return why_not(a, b) or f"{fmt_ratio(r[name])} ({secs(med(summary, a))} vs {secs(med(summary, b))})"

    def cpu_vs(what, ours, floor, floor_name):
        """The target row: CPU seconds per GB of tree of `ours` at most `floor`'s."""
        a, b = med(summary, ours, "cpu_s"), med(summary, floor, "cpu_s")
        gb = number(meta.get("tree_bytes")) / 1e9 if number(meta.get("tree_bytes")) else None
        per = (lambda c: f"{c / gb:.2f}" if c is not None and gb else "–")
        measured = why_not(ours, floor) or f"{per(a)} vs {per(b)} s per GB"
        return (f"CPU per GB of tree: {what} ≤ {floor_name}'s", measured,
                le(a / b, 1.0) if a is not None and b else None)

    delta_ratio = r["re-stash layer / tree (du --apparent-size)"]
    restash_ratio = r["re-stash / stash"]
    both = None if restash_ratio is None or delta_ratio is None else (restash_ratio <= 0.3 and delta_ratio < 0.01)
    same_ratio = r["re-stash, nothing changed / stash"]
    new_layers = peak(summary, "ours_restash_unchanged", "new_layers")
    same_ok = None if same_ratio is None or new_layers is None else (same_ratio <= 0.05 and new_layers == 0)
    scaling = r["stash --jobs 1 / stash (all cores), beyond tar | cat (the compression part)"]
    rows = [
        ("stash ≥5x faster than KIWI's system stash (ratio ≤ 0.20)",
         vs("stash / KIWI system stash", "ours_stash", "kiwi_stash"), le(r["stash / KIWI system stash"], 0.2)),
        ("stash (gzip) ≤ 1.0x tar | pigz -1", vs("stash / tar | pigz -1", "ours_stash", "floor_pigz"),
         le(r["stash / tar | pigz -1"], 1.0)),
        ("stash (zstd) ≤ 1.2x tar | zstd -T0 at the same level",
         vs("stash (zstd) / tar | zstd -T0", "ours_stash_zstd", "floor_zstd"),
         le(r["stash (zstd) / tar | zstd -T0"], 1.2)),
        cpu_vs("stash (gzip)", "ours_stash", "floor_pigz", "tar | pigz -1"),
        cpu_vs("stash (zstd)", "ours_stash_zstd", "floor_zstd", "tar | zstd -T0"),
        ("stash ≤ 1.3x tar | gzip -1", vs("stash / tar | gzip -1", "ours_stash", "floor_gzip"),
         le(r["stash / tar | gzip -1"], 1.3)),
        (f"stash --jobs 1 / all {nproc} cores (report): the compression part's scaling",
         why_not("ours_stash_jobs1") or
         f"{fmt_ratio(scaling)} ({secs(med(summary, 'ours_stash_jobs1'))} vs {secs(med(summary, 'ours_stash'))}, "
         f"less {secs(med(summary, 'floor_tar'))} of tar | cat; whole: "
         f"{fmt_ratio(r['stash --jobs 1 / stash (all cores)'])})",
         "report" if scaling is not None else None),
        ("restore (gzip) ≤ 0.7x tar -xzf", vs("restore / tar -xzf", "ours_restore", "floor_untar"),
         le(r["restore / tar -xzf"], 0.7)),
        ("restore (zstd) ≤ 1.0x zstd -dc | tar -x",
         vs("restore (zstd) / zstd -dc | tar -x", "ours_restore_zstd", "floor_unzstd"),
         le(r["restore (zstd) / zstd -dc | tar -x"], 1.0)),
        ("re-stash ≤ 0.3x full stash, layer < 1% of the tree",
         f"{fmt_ratio(restash_ratio)} ({secs(med(summary, 'ours_restash'))}), layer "
         f"{size(med(summary, 'ours_restash', 'layer_bytes'))} = "
         + (f"{delta_ratio * 100:.4f}%" if delta_ratio is not None else "–"),
         check(both)),
        ("re-stash with nothing changed ≤ 0.05x full stash, no new layer",
         f"{fmt_ratio(same_ratio)} ({secs(med(summary, 'ours_restash_unchanged'))}), new layers: "
         + (f"{new_layers:.0f}" if new_layers is not None else "–"),
         check(same_ok)),
        ("W2 faster than KIWI's stackbuild",
         vs("W2: kiwi-stackbuild / KIWI stackbuild", "ours_w2", "kiwi_w2"),
         lt(r["W2: kiwi-stackbuild / KIWI stackbuild"], 1.0)),
    ]
    if "ours_build_fresh" in summary:
        rows.append(("rebuild --reuse with unchanged inputs ≤ 1/3 of a fresh build",
                     vs("rebuild --reuse: reused / fresh", "ours_build_reused", "ours_build_fresh"),
                     le(r["rebuild --reuse: reused / fresh"], 1 / 3)))
    for case, what in (("ours_stash", "stash (gzip)"), ("ours_stash_zstd", "stash (zstd)"),
                       ("ours_restash", "re-stash, one file changed"),
                       ("ours_restash_unchanged", "re-stash, nothing changed"),
                       ("ours_restore", "restore (kiwi-stackbuild and umoci)")):
        if case in summary:
            rows.append((f"peak RSS ≤ {limit_mb} MB: {what}", why_not(case) or mb(peak(summary, case)),
                         le(peak(summary, case), limit_kib)))
    return [{"target": t, "measured": m, "met": ok} for t, m, ok in rows]


def cell(text):
    """Text for a Markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def table(summary, meta):
    skipped = meta.get("skipped", "").split()
    slow = [c for c in meta.get("slow_cases", "").split() if c not in skipped]
    head = f"| Measurement ({meta.get('runs')} runs" + (
        f"; {', '.join(slow)}: {meta.get('slow_runs')}" if slow else "") + ") | median | min | max | peak RSS | output |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for case in ORDER:
        e = summary.get(case)
        if not e:
            continue
        if e.get("not_measured"):
            lines.append(f"| {cell(e['label'])} | not measured ({cell(e['not_measured'])}) | | | | |")
            continue
        if not e["wall_s"]:
            continue
        w = e["wall_s"]
        rss = e["peak_rss_kib"]["max"] if e["peak_rss_kib"] else None
        out = e.get("layer_bytes") or e.get("archive_bytes")
        lines.append(f"| {cell(e['label'])} | {secs(w['median'])} | {secs(w['min'])} | {secs(w['max'])} "
                     f"| {mb(rss)} | {size(out['median']) if out else ''} |")
    if skipped:
        lines += ["", f"Not run on this root: {', '.join(skipped)}."]
    lines += ["", "Peak RSS is GNU time's %M: the largest process of the command's tree (kiwi-ng's Python "
              "where kiwi-ng runs). Restore: the larger of kiwi-stackbuild's VmHWM when it hands over to "
              "kiwi-ng and umoci's %M. Output: the stash layer, KIWI's oci-archive, the floor archives."]
    return "\n".join(lines)


def cpu_table(rows, meta):
    lines = [f"| CPU (user+sys, median) | s | s per GB of tree ({size(number(meta.get('tree_bytes')))}) |",
             "|---|---:|---:|"]
    for x in rows:
        if x["not_measured"]:
            lines.append(f"| {cell(x['label'])} | not measured ({cell(x['not_measured'])}) | |")
        else:
            per = f"{x['cpu_s_per_gb']:.2f}" if x["cpu_s_per_gb"] is not None else "–"
            lines.append(f"| {cell(x['label'])} | {secs(x['cpu_s'])} | {per} |")
    return "\n".join(lines)


def ratio_table(rows):
    lines = ["| Ratio (of medians) | value |", "|---|---:|"]
    for x in rows:
        v = x["value"]
        shown = fmt_ratio(v) if v is None or v >= 0.01 else f"{v:.2e}"
        lines.append(f"| {cell(x['name'])} | {shown} |")
    return "\n".join(lines)


def target_table(rows):
    word = {True: "met", False: "**missed**", None: "not measured", "report": "reported"}
    lines = ["| Target | measured | |", "|---|---|---|"]
    lines += [f"| {cell(t['target'])} | {cell(t['measured'])} | {word[t['met']]} |" for t in rows]
    return "\n".join(lines)


def machine_line(meta):
    return (f"{meta.get('date')}: {meta.get('nproc')} CPUs ({meta.get('cpu')}), "
            f"{int(meta.get('mem_kib', 0)) / 1024 / 1024:.1f} GiB RAM, kernel {meta.get('kernel')}, "
            f"the work dir on {meta.get('work_fs', 'the file system of its parent')}; "
            f"kiwi-ng {meta.get('kiwi_ng')}, umoci {meta.get('umoci')}, podman {meta.get('podman')}, "
            f"tar {meta.get('tar')}, gzip {meta.get('gzip')}, pigz {meta.get('pigz')}, zstd {meta.get('zstd')} "
            f"(level {meta.get('zstd_level')}); kiwi-stackbuild {meta.get('commit')}.")


def root_line(label, meta):
    loads = meta.get("loads", "").replace(";", " | ")
    return (f"Root `{label}`: {meta.get('tree_entries')} entries, {size(number(meta.get('tree_bytes')))} "
            f"(du --apparent-size), prepared in {number(meta.get('prepare_us') or 0) / 1e6:.0f} s"
            + (" (an earlier run's, from --root-cache)" if meta.get("reused") == "1" else "")
            + f"; its rounds took {number(meta.get('bench_us') or 0) / 1e6:.0f} s (setup not counted). "
            f"Load average (1/5/15 min) at the start of each round: {loads}; after: {meta.get('load_after')}.")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meta", help="the machine facts")
    p.add_argument("--root", nargs=3, action="append", metavar=("LABEL", "META", "RESULTS"),
                   help="a root: its label, its facts and its run records")
    p.add_argument("--json", required=True)
    p.add_argument("--from-json", metavar="FILE",
                   help="print the tables again from the runs in FILE, a JSON this script wrote")
    a = p.parse_args()
    if a.from_json:
        with open(a.from_json, encoding="utf-8") as f:
            old = json.load(f)
        machine = old["machine"]
        roots = [(label, r["root"], r["cases"]) for label, r in old["roots"].items()]
    elif a.meta and a.root:
        machine = read_meta(a.meta)
        roots = [(label, read_meta(m), summarise(*read_runs(results), {**machine, **read_meta(m)}))
                 for label, m, results in a.root]
    else:
        p.error("give --meta and --root, or --from-json")
    doc = {"machine": machine, "roots": {},
           "notes": {"wall_s": "wall-clock seconds; median/min/max over the runs",
                     "peak_rss_kib": "GNU time %M in KiB; for the restore cases the larger of kiwi-stackbuild's "
                                     "VmHWM when it starts kiwi-ng and umoci's %M",
                     "cpu_s": "GNU time user+sys seconds of the command and its children",
                     "ratios": "of medians"}}
    print()
    print(machine_line(machine))
    for label, root, summary in roots:
        meta = {**machine, **root}
        rows = ratios(summary, meta)
        goals = targets(summary, meta, label, machine.get("nproc"))
        cpu = cpu_per_gb(summary, meta)
        print()
        print(f"### Root `{label}`")
        print()
        print(root_line(label, meta))
        for text in (table(summary, meta), cpu_table(cpu, meta), ratio_table(rows), target_table(goals)):
            print()
            print(text)
        doc["roots"][label] = {"root": root, "cases": summary, "cpu_per_gb": cpu,
                               "ratios": rows, "targets": goals}
    with open(a.json, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
