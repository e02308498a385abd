//! Tunables, each with the reason for its value.

/// Default number of shards (independent sub-roots) per tree. Texts are sent to a shard by their
/// first char, so requests with different first chars never touch the same root array; 32 roots
/// cost about 3 KiB per tree and leave collisions rare for the few dozen distinct first chars
/// real prompts start with.
pub(crate) const DEFAULT_SHARDS: usize = 32;

/// Upper bound on shards: beyond this the roots' memory outgrows any contention they could save.
pub(crate) const MAX_SHARDS: usize = 4096;

/// Distinct tenants one tree can intern. A tenant id must fit the 15-bit field of a tenant slot
/// (see `tree/tenants.rs`); 16,384 is far above any fleet a router fronts.
#[cfg(not(router_loom))]
pub(crate) const MAX_TENANTS: usize = 1 << 14;
/// Under loom every atomic is a modelled object: keep the registry tiny.
#[cfg(router_loom)]
pub(crate) const MAX_TENANTS: usize = 16;

/// Tenants per lazily allocated registry chunk: a tree that serves 8 workers allocates one
/// chunk of 64 entries, not the whole 16,384.
#[cfg(not(router_loom))]
pub(crate) const TENANT_CHUNK: usize = 64;
#[cfg(router_loom)]
pub(crate) const TENANT_CHUNK: usize = 8;

/// Tenant slots a new node gets beyond the tenants it starts with. A leaf is usually created for
/// one tenant; one spare slot lets a second tenant join without rebuilding the node.
pub(crate) const MIN_TENANT_SLOTS: usize = 2;

/// Tenant slots kept inside the node itself; nodes that need more get a heap array instead.
/// Three is a fresh leaf's capacity (`1 + MIN_TENANT_SLOTS`): of the slot arrays a cold
/// Mooncake replay builds, 96% fit (94% with 64 workers), and a node with three inline slots is
/// 104 bytes, less than the 80-byte node plus separate 24-byte array it replaces once glibc's
/// chunk headers are counted (112 vs 96 + 32).
pub(crate) const INLINE_SLOTS: usize = 3;

/// Steps of a descent remembered on the stack so the insert that follows a match can skip the
/// byte comparisons. Deeper paths still work; the steps past this are compared again.
/// 64 steps of 16 bytes is 1 KiB of stack; Mooncake-shaped prompts branch far less often.
pub(crate) const PATH_CAPACITY: usize = 64;

/// Child arrays up to this length are scanned linearly; longer ones are binary-searched.
pub(crate) const LINEAR_CHILD_SCAN: usize = 8;

/// Eviction passes a single `evict` call makes when concurrent splits keep it from reaching the
/// budget in one pass (a node it picked was replaced under it).
pub(crate) const EVICTION_PASSES: usize = 4;

/// An eviction pass trims a tree over its budget to `budget - budget / 4`. A pass walks the
/// whole tree, whatever it frees, so freeing a quarter of the budget per pass amortises the walk:
/// with `budget / 16` the evictor made 2.5x as many passes for the same freed chars on the
/// latency bench (Mooncake, a quarter-size budget, 2 saturated cores), and routing p99 while
/// evicting was 2-3x higher. At rest the tree stays between 3/4 of its budget and the budget;
/// while inserts outrun the pass it overshoots (see
/// `PACED_SCALE_HEADROOMS`). The budget is a memory ceiling, not a target.
pub(crate) const EVICTION_HEADROOM_DIVISOR: usize = 4;

/// Cells of a striped counter (the policy's counters, each worker's processed count). Threads
/// pick a cell by a hash of their id, so two routing threads share one with probability 1/8;
/// a cell is 128 bytes, so a counter is 1 KiB.
#[cfg(not(router_loom))]
pub(crate) const STRIPES: usize = 8;
/// Under loom every cell is a modelled atomic (and every worker has a counter): keep them few.
#[cfg(router_loom)]
pub(crate) const STRIPES: usize = 2;

/// Workers `select_worker` resolves into a stack array (8 bytes each, 512 bytes, zeroed per
/// request): fleets up to this size route without allocating; larger ones spill to one `Vec`
/// per request.
pub(crate) const INLINE_WORKERS: usize = 64;

/// Work in one piece of a paced eviction pass (`tree/paced.rs`), the piece a request runs after
/// its decision while a pass is open. A unit is about 100 ns: a node walked costs 1 (measured in
/// requests' pieces on the latency bench, Mooncake with a quarter budget on 2 saturated cores,
/// at 60-130 ns: the nodes are in no cache of that core), a candidate taken `PACED_POP_WORK`
/// (about 200 ns: a detach, often an unlink), and the linear steps that order the candidates
/// one per `PACED_LINEAR_ITEMS` items. So a piece is about 1 us. With 16 units, p99 while
/// evicting was 13-18 us against 12-13 with 8 (p99.9 a little lower, 64-80 us against 82-87;
/// a whole pass in the evictor thread: 141-159), so 8 (BENCHMARKS.md section 3).
#[cfg(not(router_loom))]
pub(crate) const PACED_PIECE_WORK: usize = 8;
/// Under loom a pass over a tree of three nodes must still take several pieces.
#[cfg(router_loom)]
pub(crate) const PACED_PIECE_WORK: usize = 2;

/// A paced piece grows by `PACED_PIECE_WORK` for every this many headrooms (budget minus
/// target) the tree is over its target. Pieces stay small while the pass's length lets the tree
/// overshoot (on the latency bench, 2 saturated cores replaying at a
/// million requests a second, the tree peaks at 1.2-3.7x its budget with pieces and 1.0-4.0x
/// with whole passes in the evictor), and grow when inserts outrun them: a stream of new
/// 10 KB prompts at that rate outgrew a budget of 200 K chars 200-fold with fixed pieces.
pub(crate) const PACED_SCALE_HEADROOMS: usize = 2;

/// Entries (nodes and child arrays) that earlier passes unlinked a paced piece frees, besides its
/// work: about 1 us. A pass on the latency bench unlinks a few hundred of each and runs in a
/// couple of hundred pieces, so pieces free what passes unlink.
pub(crate) const PACED_FREE_ENTRIES: usize = 8;

/// Fewest eviction candidates a whole pass sorts at once (see `maintain::LruQueue`). A pass
/// usually takes a few hundred; batches grow from a little above what the previous pass took,
/// and 64 keeps a pass on a small tree from sorting a handful at a time.
pub(crate) const MIN_LRU_BATCH: usize = 64;

/// Work units per candidate taken in a paced piece (see `PACED_PIECE_WORK`).
pub(crate) const PACED_POP_WORK: usize = 2;

/// Items per work unit in the linear steps of a paced pass: subtree ends, sealing the
/// candidates' keys, building their heap (a few nanoseconds an item).
pub(crate) const PACED_LINEAR_ITEMS: usize = 32;

/// How often the evictor looks at the paced passes while requests keep opening them. A pass it
/// finds open at two looks in a row (no traffic runs it: a pass takes a couple of hundred
/// pieces, which requests at the latency bench's rate, a million a second, run in a fraction of
/// a millisecond) it finishes itself, so a tree comes under its budget, and the anchor stops
/// holding crossbeam-epoch's default collector back, within two of these of the last request.
/// Each look is a timer wake-up that preempts a request where routing keeps every core busy:
/// at 5 ms the latency bench's 2-thread replays saw about twice as many preemptions with
/// eviction as without (a getrusage probe), and 50 ms against 5 ms cut the evictor's CPU from
/// 1.4 to 0.3 ms per 240 ms of replay and cold 2-thread p99.9 while evicting by about 5% (four
/// alternating runs).
pub(crate) const PACED_WATCH: std::time::Duration = std::time::Duration::from_millis(50);
