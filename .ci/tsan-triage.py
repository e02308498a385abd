#!/usr/bin/env python3
"""Reads a ThreadSanitizer log and sorts each report into a known false-positive class or
'unexplained'. Exits 1 if any report is unexplained: those must be read by a person.

std is not instrumented (its thread join, futex-based Once and Mutex, and the fence in
Arc::drop are invisible to TSan), and crossbeam-epoch synchronises through SeqCst fences,
which TSan does not model. Each class below names the synchronisation TSan could not see."""
import re
import sys

# The KV index's writer paths: each runs with its shard's writer Mutex held.
SHARD_LOCKED = tuple(f"index::table::Shard>::{f}" for f in ("update", "clear_worker", "rebuild", "live", "bytes"))

CLASSES = [
    ("free after join: Tree's or the policy's drop frees nodes and tables after the threads "
     "that read them were joined (std's join is invisible)",
     lambda w, p, b: "free_all" in w or "free_nodes" in w
     or "drop_in_place::<cache_aware_router::tree::Tree>" in w
     or "drop_in_place::<cache_aware_router::tree::KeyedTree<" in w),
    ("thread stack reused after join (std's join is invisible)",
     lambda w, p, b: "Location is stack of thread" in b),
    ("std/test-harness internals on both sides (Arc::drop fence, thread packets, test events)",
     lambda w, p, b: "cache_aware_router" not in w + p),
    ("std's Arc::drop / Weak::drop freeing after the last reference (its Acquire fence is "
     "invisible)",
     lambda w, p, b: re.search(r"<alloc::sync::(Arc|Weak)<.*> as core::ops::drop::Drop>::drop"
                               r"|Arc<.*>>::drop_slow", w) is not None),
    ("OnceLock/DashMap set under std's Once/locks, read after a join or through the lock",
     lambda w, p, b: ("once_lock" in w or "dashmap" in w + p or "RawTableInner" in w)),
    ("KV index shard state (entry counts) read and written by two writers, each holding the "
     "shard's std Mutex (its futex is invisible)",
     lambda w, p, b: any(f in w for f in SHARD_LOCKED) and any(f in p for f in SHARD_LOCKED)),
    ("crossbeam-epoch internals and epoch-deferred frees (fence-based)",
     lambda w, p, b: "crossbeam_epoch::internal" in w + p or "crossbeam_epoch::sync" in w + p),
    ("crossbeam-channel internals (its wakers and select; fence- and std-lock-based)",
     lambda w, p, b: "crossbeam_channel::" in w and "crossbeam_channel::" in p),
    ("epoch-deferred free racing a pinned reader (the epoch's SeqCst fences are invisible)",
     lambda w, p, b: "crossbeam_epoch::deferred" in w or "Global>::collect" in w),
]


def frames(section):
    return "\n".join(m.group(1) for m in re.finditer(r"#\d+ (.*?) /", section))


def main(path):
    log = open(path, encoding="utf-8", errors="replace").read()
    reports = log.split("WARNING: ThreadSanitizer")[1:]
    counts, unexplained = {}, []
    for r in reports:
        body = r.split("==================")[0]
        parts = re.split(r"\n  (?=Previous )", body, maxsplit=1)
        first, previous = frames(parts[0]), frames(parts[1]) if len(parts) > 1 else ""
        for name, match in CLASSES:
            if match(first, previous, body):
                counts[name] = counts.get(name, 0) + 1
                break
        else:
            unexplained.append(body)
    print(f"{len(reports)} ThreadSanitizer reports")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4} {name}")
    print(f"  {len(unexplained):4} unexplained")
    for body in unexplained[:5]:
        print("----- unexplained report -----")
        print(body[:4000])
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
