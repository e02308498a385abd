#!/usr/bin/env python3
"""Turns criterion's estimates (target/criterion) into the ratio tables of BENCHMARKS.md.

    cargo bench --bench routing && python3 benches/report.py routing
    cargo bench --bench tree && python3 benches/report.py tree
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def median_ns(*parts):
    path = ROOT.joinpath(*parts, "new", "estimates.json")
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


def routing():
    for workload in ["shared-prefix", "mooncake"]:
        groups = sorted(ROOT.glob(f"routing_{workload}_*"))
        for g in groups:
            print(f"\n{g.name.replace('_', '/')} (median time of one full replay)\n")
            print("| threads | floor (ms) | ours (ms) | baseline (ms) | ours / floor | baseline / ours | ours scaling vs 1t |")
            print("|---|---|---|---|---|---|---|")
            ours1 = median_ns(g.name, "ours_1t")
            for t in [1, 2, 4, 8]:
                fl = median_ns(g.name, f"floor_{t}t") or median_ns(g.name, "floor")
                ours = median_ns(g.name, f"ours_{t}t")
                base = median_ns(g.name, f"baseline_{t}t")
                if None in (fl, ours):
                    continue
                b = f"{base / 1e6:.1f}" if base else "-"
                bo = f"{base / ours:.0f}x" if base else "-"
                print(f"| {t} | {fl / 1e6:.2f} | {ours / 1e6:.2f} | {b} | {ours / fl:.1f}x | {bo} | {ours1 / ours:.2f}x |")
            scaling(g.name)


def scaling(group):
    """Throughput vs 1 thread: the floor, ours, one router per thread, and a warm router."""
    names = ["floor", "ours", "ours-own", "ours-warm"]
    one = {n: median_ns(group, f"{n}_1t") for n in names}
    if None in one.values():
        return
    print(f"\nScaling vs 1 thread ({group.replace('_', '/')}; ours-own: a router per thread, "
          "nothing shared; ours-warm: the workload already cached)\n")
    print("| threads | floor | ours | ours-own | ours-warm | ours-warm 1t / floor 1t |")
    print("|---|---|---|---|---|---|")
    for t in [1, 2, 4, 8]:
        now = {n: median_ns(group, f"{n}_{t}t") for n in names}
        if None in now.values():
            continue
        cells = " | ".join(f"{one[n] / now[n]:.2f}x" for n in names)
        print(f"| {t} | {cells} | {one['ours-warm'] / one['floor']:.1f}x |")


def tree():
    print("| prompt | floor (ns) | match (ns) | match / floor | match ns/KB | insert (ns) | insert / floor |")
    print("|---|---|---|---|---|---|---|")
    sizes = {"1KB": 1 << 10, "64KB": 64 << 10, "1MB": 1 << 20}
    for size in ["1KB", "64KB", "1MB"]:
        for kind in ["ascii", "utf8", "tokens", "tokens16"]:
            g = f"long_{size}_{kind}"
            fl, m, i = (median_ns(g, f) for f in ("floor", "match", "insert_new"))
            if None in (fl, m, i):
                continue
            per_kb = m / (sizes[size] / 1024)
            print(f"| {size} {kind} | {fl:.0f} | {m:.0f} | {m / fl:.2f}x | {per_kb:.1f} | {i:.0f} | {i / fl:.2f}x |")


def mix():
    print("| mix (match/insert) | threads | ours (ns/op) | baseline (ns/op) | baseline / ours | ours scaling vs 1t |")
    print("|---|---|---|---|---|---|")
    for m in ["70-30", "50-50"]:
        ours1 = median_ns(f"mix_{m}", "ours_1t")
        for t in [1, 2]:
            o, b = median_ns(f"mix_{m}", f"ours_{t}t"), median_ns(f"mix_{m}", f"baseline_{t}t")
            if None in (o, b, ours1):
                continue
            print(f"| {m} | {t} | {o:.0f} | {b:.0f} | {b / o:.0f}x | {ours1 / o:.2f}x |")


if __name__ == "__main__":
    tree_and_mix = lambda: (tree(), print(), mix())
    {"routing": routing, "tree": tree_and_mix}[sys.argv[1] if len(sys.argv) > 1 else "routing"]()
