#!/usr/bin/env python3
"""Statistics, tables and JSON for contrib/bench.sh (python3 stdlib only).

Reads the run records bench.sh wrote (one line per run: case, run number,
then key=value fields) and the machine facts (key=value lines), prints
Markdown tables (measurements, ratios, targets) and writes the same data as
JSON. Times are wall-clock seconds; the table shows median, min and max over
the runs; peak RSS is GNU time's %M (KiB) shown in MB (10^6 bytes); ratios
are of medians.
"""

import argparse
import json
import re
import statistics
import sys

# case: (label, what was run)
CASES = {
    "ours_stash": ("kiwi-stackbuild stash, empty store",
                   "kiwi-stackbuild --stash-home EMPTY stash --root ROOT --container-name bench"),
    "ours_stash_stub": ("kiwi-stackbuild stash, `kiwi-ng --version` stubbed",
                        "KIWI_NG=stub kiwi-stackbuild --stash-home EMPTY stash --root ROOT --container-name bench"),
    "ours_restash": ("kiwi-stackbuild re-stash, one file changed",
                     "append to ROOT/etc/motd; kiwi-stackbuild --stash-home COPY_OF_BASE stash --root ROOT --container-name bench"),
    "ours_restore": ("kiwi-stackbuild restore (W2's unpack step)",
                     "the `unpacked ... in X` log line of kiwi-stackbuild rebuild --root bench"),
    "ours_w2": ("kiwi-stackbuild rebuild --root (W2)",
                "kiwi-stackbuild --kiwi-config K --shared-cache-dir C rebuild --root bench -- --target-dir T"),
    "kiwi_stash": ("kiwi-ng system stash",
                   "kiwi-ng --config K --temp-dir TMP system stash --root ROOT --container-name bench"),
    "kiwi_w2": ("kiwi-ng system stackbuild (W2)",
                "kiwi-ng --config K --shared-cache-dir C system stackbuild --stash bench --target-dir T"),
    "floor_tar": ("floor: tar | cat", "tar -C ROOT --numeric-owner --xattrs -cf - . | cat >/dev/null"),
    "floor_gzip": ("floor: tar | gzip -1", "tar -C ROOT --numeric-owner --xattrs -cf - . | gzip -1 > FILE"),
    "floor_zstd": ("floor: tar | zstd -T0", "tar -C ROOT --numeric-owner --xattrs -cf - . | zstd -T0 -q > FILE"),
    "floor_untar": ("floor: tar -xzf (gzip -1 archive)",
                    "tar --numeric-owner --xattrs --xattrs-include='*' -xzf FILE.tar.gz -C EMPTY_DIR"),
}
ORDER = ["ours_stash", "ours_stash_stub", "kiwi_stash", "floor_tar", "floor_gzip", "floor_zstd",
         "ours_restash", "ours_restore", "floor_untar", "ours_w2", "kiwi_w2"]
RSS_LIMIT_KIB = 30e6 / 1024  # 30 MB = 30 * 10^6 bytes

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
    """{case: [ {run, wall_s, rss_kib, ...}, ... ]}, with the restore runs
    derived from the W2 runs."""
    runs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue
            rec = {"run": int(fields[1])}
            for kv in fields[2:]:
                key, _, value = kv.partition("=")
                rec[key] = value
            out = {"run": rec["run"], "wall_s": int(rec["wall_us"]) / 1e6, "rss_kib": number(rec.get("rss_kib"))}
            for key, value in rec.items():
                if key in ("run", "wall_us", "rss_kib"):
                    continue
                d = rust_duration(value)
                out[key + "_s" if d is not None else key] = d if d is not None else number(value)
            runs.setdefault(fields[0], []).append(out)
    for r in runs.get("ours_w2", []):
        rss = [x for x in (r.get("self_rss_kib"), r.get("umoci_rss_kib")) if x is not None]
        runs.setdefault("ours_restore", []).append({
            "run": r["run"], "wall_s": r.get("unpacked_s"),
            "rss_kib": max(rss) if rss else None,
            "self_rss_kib": r.get("self_rss_kib"), "umoci_rss_kib": r.get("umoci_rss_kib"),
        })
    return runs


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs):
    out = {}
    for case, rs in runs.items():
        label, command = CASES.get(case, (case, ""))
        entry = {"label": label, "command": command,
                 "wall_s": stats([r["wall_s"] for r in rs]),
                 "peak_rss_kib": stats([r["rss_kib"] for r in rs]),
                 "runs": rs}
        for key in ("layer_bytes", "archive_bytes", "stored_s", "read_base_s", "self_rss_kib", "umoci_rss_kib"):
            s = stats([r.get(key) for r in rs])
            if s:
                entry[key] = s
        out[case] = entry
    return out


def med(summary, case, key="wall_s"):
    s = summary.get(case, {}).get(key)
    return s["median"] if s else None


def peak(summary, case, key="peak_rss_kib"):
    s = summary.get(case, {}).get(key)
    return s["max"] if s else None


def ratio(a, b):
    return a / b if a is not None and b else None


def mb(kib):
    return f"{kib * 1024 / 1e6:.1f} MB" if kib is not None else "–"


def size(n):
    if n is None:
        return "–"
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def secs(s):
    return f"{s:.2f} s" if s is not None else "–"


def fmt_ratio(r):
    return f"{r:.2f}" if r is not None else "–"


def ratios(summary, meta):
    tree = number(meta.get("tree_bytes"))
    layer = med(summary, "ours_stash", "layer_bytes")
    delta = med(summary, "ours_restash", "layer_bytes")
    rows = [
        ("stash / KIWI system stash", ratio(med(summary, "ours_stash"), med(summary, "kiwi_stash"))),
        ("stash / tar | gzip -1", ratio(med(summary, "ours_stash"), med(summary, "floor_gzip"))),
        ("stash / tar | zstd -T0", ratio(med(summary, "ours_stash"), med(summary, "floor_zstd"))),
        ("stash / tar | cat", ratio(med(summary, "ours_stash"), med(summary, "floor_tar"))),
        ("stash (kiwi-ng stubbed) / tar | gzip -1", ratio(med(summary, "ours_stash_stub"), med(summary, "floor_gzip"))),
        ("restore / tar -xzf", ratio(med(summary, "ours_restore"), med(summary, "floor_untar"))),
        ("re-stash / stash", ratio(med(summary, "ours_restash"), med(summary, "ours_stash"))),
        ("re-stash layer / tree (du --apparent-size)", ratio(delta, tree)),
        ("re-stash layer / full stash layer", ratio(delta, layer)),
        ("stash layer / tar | gzip -1 archive", ratio(layer, med(summary, "floor_gzip", "archive_bytes"))),
        ("W2: kiwi-stackbuild / KIWI stackbuild", ratio(med(summary, "ours_w2"), med(summary, "kiwi_w2"))),
    ]
    return [{"name": n, "value": v} for n, v in rows]


def targets(summary, meta):
    r = {x["name"]: x["value"] for x in ratios(summary, meta)}
    stash_rss_self = peak(summary, "ours_stash_stub")
    stash_rss_tree = peak(summary, "ours_stash")
    restore_rss = peak(summary, "ours_restore")

    def check(ok):
        return None if ok is None else bool(ok)

    def le(v, limit):
        return check(v <= limit) if v is not None else None

    def lt(v, limit):
        return check(v < limit) if v is not None else None

    delta_ratio = r["re-stash layer / tree (du --apparent-size)"]
    restash_ratio = r["re-stash / stash"]
    both = None if restash_ratio is None or delta_ratio is None else (restash_ratio <= 0.3 and delta_ratio < 0.01)
    rows = [
        ("stash ≥5x faster than KIWI's system stash (ratio ≤ 0.20)",
         f"{fmt_ratio(r['stash / KIWI system stash'])} ({secs(med(summary, 'ours_stash'))} vs {secs(med(summary, 'kiwi_stash'))})",
         le(r["stash / KIWI system stash"], 0.2)),
        ("stash ≤ 1.3x tar | gzip -1",
         f"{fmt_ratio(r['stash / tar | gzip -1'])} ({secs(med(summary, 'ours_stash'))} vs {secs(med(summary, 'floor_gzip'))})",
         le(r["stash / tar | gzip -1"], 1.3)),
        ("restore ≤ 1.5x tar -xzf",
         f"{fmt_ratio(r['restore / tar -xzf'])} ({secs(med(summary, 'ours_restore'))} vs {secs(med(summary, 'floor_untar'))})",
         le(r["restore / tar -xzf"], 1.5)),
        ("re-stash ≤ 0.3x full stash, layer < 1% of the tree",
         f"{fmt_ratio(restash_ratio)} ({secs(med(summary, 'ours_restash'))}), layer "
         f"{size(med(summary, 'ours_restash', 'layer_bytes'))} = "
         + (f"{delta_ratio * 100:.4f}%" if delta_ratio is not None else "–"),
         check(both)),
        ("W2 faster than KIWI's stackbuild",
         f"{fmt_ratio(r['W2: kiwi-stackbuild / KIWI stackbuild'])} ({secs(med(summary, 'ours_w2'))} vs {secs(med(summary, 'kiwi_w2'))})",
         lt(r["W2: kiwi-stackbuild / KIWI stackbuild"], 1.0)),
        ("peak RSS ≤ 30 MB: stash, the kiwi-stackbuild process", mb(stash_rss_self),
         le(stash_rss_self, RSS_LIMIT_KIB)),
        ("peak RSS ≤ 30 MB: stash with its `kiwi-ng --version` child", mb(stash_rss_tree),
         le(stash_rss_tree, RSS_LIMIT_KIB)),
        ("peak RSS ≤ 30 MB: restore (kiwi-stackbuild and umoci)", mb(restore_rss),
         le(restore_rss, RSS_LIMIT_KIB)),
    ]
    return [{"target": t, "measured": m, "met": ok} for t, m, ok in rows]


def cell(text):
    """Text for a Markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def table(summary, meta):
    lines = [
        f"| Measurement ({meta.get('runs')} runs) | median | min | max | peak RSS | output |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in ORDER:
        e = summary.get(case)
        if not e or not e["wall_s"]:
            continue
        w = e["wall_s"]
        rss = e["peak_rss_kib"]["max"] if e["peak_rss_kib"] else None
        out = e.get("layer_bytes") or e.get("archive_bytes")
        lines.append(f"| {cell(e['label'])} | {secs(w['median'])} | {secs(w['min'])} | {secs(w['max'])} "
                     f"| {mb(rss)} | {size(out['median']) if out else ''} |")
    lines += ["", "Peak RSS is GNU time's %M: the largest process of the command's tree (kiwi-ng's Python "
              "where kiwi-ng runs). Restore: the larger of kiwi-stackbuild's VmHWM when it hands over to "
              "kiwi-ng and umoci's %M. Output: the stash layer, KIWI's oci-archive, the floor archives."]
    return "\n".join(lines)


def ratio_table(rows):
    lines = ["| Ratio (of medians) | value |", "|---|---:|"]
    for x in rows:
        v = x["value"]
        shown = fmt_ratio(v) if v is None or v >= 0.01 else f"{v:.2e}"
        lines.append(f"| {cell(x['name'])} | {shown} |")
    return "\n".join(lines)


def target_table(rows):
    word = {True: "met", False: "**missed**", None: "not measured"}
    lines = ["| Target | measured | |", "|---|---|---|"]
    lines += [f"| {cell(t['target'])} | {cell(t['measured'])} | {word[t['met']]} |" for t in rows]
    return "\n".join(lines)


def machine_line(meta):
    loads = meta.get("loads", "").replace(";", " | ")
    return (f"{meta.get('date')}: {meta.get('nproc')} CPUs ({meta.get('cpu')}), "
            f"{int(meta.get('mem_kib', 0)) / 1024 / 1024:.1f} GiB RAM, disk type unknown, kernel {meta.get('kernel')}; "
            f"kiwi-ng {meta.get('kiwi_ng')}, umoci {meta.get('umoci')}, podman {meta.get('podman')}, "
            f"tar {meta.get('tar')}, gzip {meta.get('gzip')}, zstd {meta.get('zstd')}; "
            f"kiwi-stackbuild {meta.get('commit')}. Root: {meta.get('tree_entries')} entries, "
            f"{size(number(meta.get('tree_bytes')))}. Load average (1/5/15 min) at the start of each round: {loads}; "
            f"after: {meta.get('load_after')}.")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meta", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--json", required=True)
    a = p.parse_args()
    meta = read_meta(a.meta)
    summary = summarise(read_runs(a.results))
    rows = ratios(summary, meta)
    goals = targets(summary, meta)
    print()
    print(machine_line(meta))
    print()
    print(table(summary, meta))
    print()
    print(ratio_table(rows))
    print()
    print(target_table(goals))
    doc = {"machine": meta, "cases": summary, "ratios": rows, "targets": goals,
           "notes": {"wall_s": "wall-clock seconds; median/min/max over the runs",
                     "peak_rss_kib": "GNU time %M in KiB; for ours_restore the larger of kiwi-stackbuild's "
                                     "VmHWM when it starts kiwi-ng and umoci's %M",
                     "ratios": "of medians"}}
    with open(a.json, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
