//! The evictor: one housekeeping thread per policy, like moka's housekeeper.
//!
//! It sees the trees only through `Housekeeper` and waits on three things:
//! - **stop**: a signal only the `Evictor` handle can raise, by being dropped; the thread sees
//!   it at its next wait and exits, and `Drop` joins it. A pass in progress finishes first
//!   (passes are bounded), so no thread outlives its policy.
//! - **wake**: raised by requests without blocking. A wake raised while the thread sleeps or
//!   runs stays pending until its next wait, so it is never lost; raising it again while
//!   pending changes nothing.
//! - **tick**: the wait's timeout, `eviction_interval_secs`.
//!
//! With std these are crossbeam channels and a `select!`: stop is a zero-capacity channel whose
//! only `Sender` the handle owns (dropping it disconnects), wake is `bounded(1)` fed by
//! `try_send`. crossbeam-channel cannot run under loom, so under `router_loom` the same
//! semantics come from a loom `Mutex<(stopped, woken)>` and `Condvar`, which the loom suite
//! model-checks (loom's timed wait never times out, so models see stop and wake only, and the
//! watch's short waits only poll).
//!
//! **Passes in requests** (the default). Requests open each tree's pass when they push it over
//! its budget and run it in pieces (`tree/paced.rs`); no thread is woken per pass. The evictor
//! is their watchdog: while passes keep being opened it looks every `PACED_WATCH` (a timer, no
//! request pays for it), finishing any pass it finds open at two looks in a row (without
//! traffic no request runs it), and running a whole pass, under the tree's pass lock so no
//! request sees it, on a tree over budget with no pass open or opened since its last look.
//! After a look that finds no pass opened since the previous one it sleeps until a request
//! wakes it, or the tick.
//!
//! That wake is a Dekker handshake on `sleeping`, and it covers more than the requests that
//! open a pass: a request can leave a tree over budget with no pass open and none coming (its
//! `try_lock` lost to a look or to a piece that then closed the pass with the request's chars
//! unseen, and no request follows). So every request that finds its tree over budget, whether
//! it opened a pass or not, issues a `SeqCst` fence after its insert (and its opening) and
//! wakes the evictor if `sleeping` is up (the first to see it lowers it with a swap, so one
//! request wakes it and the rest send nothing); the evictor raises `sleeping`, issues a
//! `SeqCst` fence and looks once more before it sleeps. The fences order the two
//! store-then-load pairs (the request's insert, then `sleeping`; `sleeping`, then the look's
//! reads of the pass and the tree's size), so at least one side sees the other's store: either
//! the last look sees the open pass or the tree over budget (and acts on it instead of
//! sleeping), or the request wakes the evictor. A wake that arrives while the evictor watches
//! (a stale `sleeping`) is consumed by its wait between looks and changes nothing: a look
//! brought forward would finish a pass opened microseconds before as one no request runs
//! (measured: 10-18 of 170 passes in 40 cold replays, before the waits ignored wakes). Loom
//! model 12 found the gap this closes (`loom-tests/tests/policy.rs`). The fence costs the
//! requests that find a tree over budget a few nanoseconds each.
//!
//! On a tick it runs a whole pass on every tree over budget with no pass open, and frees what
//! passes unlinked; on stop it closes open passes as they stand. So this thread opens no pass:
//! the anchor moves between threads only from the request that opened a pass to the thread
//! that closes it (loom models 10 to 13).
//!
//! **Whole passes** (a builder option): the request that first finds a tree over budget wakes
//! the evictor, which runs a whole pass on every tree over budget.
//!
//! Routing never waits for the evictor: passes change the trees with the same lock-free
//! operations requests use, and requests only `try_lock` a pass. What passes unlink is freed
//! once the epoch says no reader holds it (`tree/reclaim.rs`): a few entries per piece, and
//! what is left by the evictor on a tick; with whole passes, by the evictor after each run.

use crate::constants::PACED_WATCH;
use crate::sync::{self, fence, thread, AtomicBool, Ordering};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the evictor can ask of the policy.
pub(crate) trait Housekeeper: Send + Sync + 'static {
    /// Whether requests open the passes and run them in pieces; if not, the evictor runs them
    /// whole.
    fn passes_in_requests(&self) -> bool;
    /// Runs a whole pass, in this thread, on every tree over its budget that has no pass open.
    fn evict_whole(&self);
    /// One look at every tree's paced pass: finishes those already open at the previous look,
    /// runs a whole pass on trees over budget with none open or opened since; returns whether
    /// any was opened since then.
    fn watch_passes(&self) -> bool;
    /// Closes the open paced passes as they stand.
    fn close_passes(&self);
    /// Frees what closed passes unlinked whose grace period has passed, in this thread.
    fn free_unlinked(&self);
}

/// Watches the passes requests open: a look every `PACED_WATCH` while they keep being opened,
/// then a sleep until a request opens one, the tick, or stop. Returns what ended the sleep.
fn watch(target: &dyn Housekeeper, mailbox: &Mailbox, interval: Duration) -> Event {
    loop {
        while target.watch_passes() {
            if mailbox.signal.wait_briefly(PACED_WATCH) == Event::Stop {
                return Event::Stop;
            }
        }
        mailbox.sleeping.store(true, Ordering::Relaxed);
        // Dekker with `Waker::over_budget`: after this fence, either this look sees the pass a
        // request opened or the tree it left over budget, or that request sees `sleeping` and
        // wakes this wait.
        fence(Ordering::SeqCst);
        let event = (!target.watch_passes()).then(|| mailbox.signal.wait(interval));
        mailbox.sleeping.store(false, Ordering::Relaxed);
        if let Some(event) = event {
            return event;
        }
    }
}

/// What ended a wait.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Stop,
    Wake,
    Tick,
}

#[cfg(not(router_loom))]
mod signal {
    use super::Event;
    use crossbeam_channel::{bounded, select, Receiver, Sender};
    use std::time::{Duration, Instant};

    #[derive(Clone, Debug)]
    pub(crate) struct Waker(Sender<()>);
    /// The evictor thread's end: stop and wake receivers.
    #[derive(Debug)]
    pub(crate) struct Mailbox {
        wake: Receiver<()>,
        stop: Option<Receiver<()>>,
    }
    /// Raises stop when dropped.
    #[derive(Debug)]
    pub(crate) struct StopOnDrop(#[allow(dead_code)] Sender<()>);

    pub(crate) fn wake_channel() -> (Waker, Mailbox) {
        let (tx, rx) = bounded(1);
        (
            Waker(tx),
            Mailbox {
                wake: rx,
                stop: None,
            },
        )
    }

    impl Waker {
        pub(crate) fn wake(&self) {
            // Full: a wake is already pending. Disconnected: the evictor is gone. Either way
            // there is nothing to add, and a request must not block here.
            let _ = self.0.try_send(());
        }
    }

    impl Mailbox {
        pub(crate) fn stopper(&mut self) -> StopOnDrop {
            let (tx, rx) = bounded(0);
            self.stop = Some(rx);
            StopOnDrop(tx)
        }

        pub(crate) fn wait(&self, timeout: Duration) -> Event {
            let stop = self
                .stop
                .as_ref()
                .expect("stopper() is called before the thread starts");
            select! {
                recv(stop) -> _ => Event::Stop,
                recv(self.wake) -> msg => if msg.is_ok() { Event::Wake } else { Event::Stop },
                default(timeout) => Event::Tick,
            }
        }

        /// The watch's wait between two looks: all of `timeout` unless stopped (under loom a
        /// poll). A wake meanwhile is consumed and changes nothing: the watch is looking
        /// already, and a look brought forward would take a pass opened microseconds before
        /// for one that no request runs.
        pub(crate) fn wait_briefly(&self, timeout: Duration) -> Event {
            let deadline = Instant::now() + timeout;
            loop {
                match self.wait(deadline.saturating_duration_since(Instant::now())) {
                    Event::Stop => return Event::Stop,
                    Event::Wake if Instant::now() < deadline => {}
                    Event::Wake | Event::Tick => return Event::Tick,
                }
            }
        }
    }
}

#[cfg(router_loom)]
mod signal {
    use super::Event;
    use crate::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct State {
        stopped: bool,
        woken: bool,
    }

    #[derive(Debug, Default)]
    struct Inner {
        state: Mutex<State>,
        changed: Condvar,
    }

    #[derive(Clone, Debug)]
    pub(crate) struct Waker(Arc<Inner>);
    #[derive(Debug)]
    pub(crate) struct Mailbox(Arc<Inner>);
    #[derive(Debug)]
    pub(crate) struct StopOnDrop(Arc<Inner>);

    pub(crate) fn wake_channel() -> (Waker, Mailbox) {
        let inner = Arc::new(Inner::default());
        (Waker(inner.clone()), Mailbox(inner))
    }

    impl Waker {
        pub(crate) fn wake(&self) {
            self.0.state.lock().unwrap().woken = true;
            self.0.changed.notify_one();
        }
    }

    impl Mailbox {
        pub(crate) fn stopper(&mut self) -> StopOnDrop {
            StopOnDrop(self.0.clone())
        }

        pub(crate) fn wait(&self, timeout: Duration) -> Event {
            let mut state = self.0.state.lock().unwrap();
            loop {
                if state.stopped {
                    return Event::Stop;
                }
                if state.woken {
                    state.woken = false;
                    return Event::Wake;
                }
                let (next, result) = self.0.changed.wait_timeout(state, timeout).unwrap();
                if result.timed_out() {
                    return Event::Tick;
                }
                state = next;
            }
        }

        /// A poll of stop and wake: loom's timed waits never time out, and a model's watch
        /// must go on looking.
        pub(crate) fn wait_briefly(&self, _timeout: Duration) -> Event {
            crate::sync::thread::yield_now();
            let mut state = self.0.state.lock().unwrap();
            if state.stopped {
                Event::Stop
            } else if std::mem::take(&mut state.woken) {
                Event::Wake
            } else {
                Event::Tick
            }
        }
    }

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().stopped = true;
            self.0.changed.notify_one();
        }
    }
}

/// Requests' end of the wake-up.
#[derive(Clone, Debug)]
pub(crate) struct Waker {
    signal: signal::Waker,
    /// Up while the evictor sleeps with no pass watched (see the module's design note).
    sleeping: sync::Arc<AtomicBool>,
}

/// The evictor thread's end.
#[derive(Debug)]
pub(crate) struct Mailbox {
    signal: signal::Mailbox,
    sleeping: sync::Arc<AtomicBool>,
}

impl Waker {
    /// Wakes the evictor (whole passes: a tree crossed its budget).
    pub(crate) fn wake(&self) {
        self.signal.wake();
    }

    /// Whether the evictor sleeps unwatching (for tests that need it asleep).
    #[cfg(all(test, not(router_loom)))]
    pub(crate) fn evictor_sleeps(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Tells the evictor a request found its tree over budget (and opened a pass, or did not):
    /// wakes it if it sleeps unwatching. Called after the request's insert and its opening.
    pub(crate) fn over_budget(&self) {
        // Dekker with `watch`'s sleep: see the module's design note.
        fence(Ordering::SeqCst);
        // Lowered by the one request that wakes the evictor, so the requests behind it (every
        // one that finds the tree over budget until the evictor runs) send nothing more.
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            self.signal.wake();
        }
    }
}

/// The running thread; dropping this stops and joins it.
pub(crate) struct Evictor {
    stop: Option<signal::StopOnDrop>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Evictor {
    /// A waker and the mailbox it feeds, made before the policy state that holds the waker.
    pub(crate) fn channel() -> (Waker, Mailbox) {
        let (waker, mailbox) = signal::wake_channel();
        let sleeping = sync::Arc::new(AtomicBool::new(false));
        (
            Waker {
                signal: waker,
                sleeping: sleeping.clone(),
            },
            Mailbox {
                signal: mailbox,
                sleeping,
            },
        )
    }

    pub(crate) fn spawn(
        target: Arc<dyn Housekeeper>,
        interval: Duration,
        mut mailbox: Mailbox,
    ) -> std::io::Result<Self> {
        let stop = mailbox.signal.stopper();
        let handle = thread::Builder::new()
            .name("router-evictor".into())
            .spawn(move || {
                let in_requests = target.passes_in_requests();
                loop {
                    let event = if in_requests {
                        watch(&*target, &mailbox, interval)
                    } else {
                        mailbox.signal.wait(interval)
                    };
                    match event {
                        Event::Stop => break,
                        Event::Wake if in_requests => {}
                        // Whole passes on every wake and tick; with passes in requests, a tick
                        // runs here what no request started (a tree over budget with no pass
                        // open), and passes requests opened stay theirs.
                        Event::Wake | Event::Tick => {
                            target.evict_whole();
                            target.free_unlinked();
                        }
                    }
                }
                target.close_passes();
            })?;
        Ok(Self {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Evictor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            // A panic inside a pass already printed its message; there is nothing to add.
            let _ = handle.join();
        }
    }
}

impl fmt::Debug for Evictor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Evictor")
            .field("running", &self.handle.is_some())
            .finish()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;
    use crate::sync::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Counts whole runs (whole mode), or watches a pretend pass (paced mode): a look finds
    /// it open if `open` is set, and finishes it.
    #[derive(Default)]
    struct Fake {
        paced: bool,
        runs: AtomicUsize,
        looks: AtomicUsize,
        open: AtomicBool,
        /// Every look finds a pass opened since the previous one.
        busy: bool,
    }
    impl Housekeeper for Fake {
        fn passes_in_requests(&self) -> bool {
            self.paced
        }
        fn evict_whole(&self) {
            self.runs.fetch_add(1, Ordering::SeqCst);
        }
        fn watch_passes(&self) -> bool {
            self.looks.fetch_add(1, Ordering::SeqCst);
            if self.busy {
                return true;
            }
            if self.open.swap(false, Ordering::SeqCst) {
                self.runs.fetch_add(1, Ordering::SeqCst);
                true
            } else {
                false
            }
        }
        fn close_passes(&self) {}
        fn free_unlinked(&self) {}
    }

    fn wait_for(what: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn wakes_early_and_stops_on_drop() {
        let target = Arc::new(Fake::default());
        let (waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_secs(3600), mailbox).unwrap();
        waker.wake();
        wait_for(|| target.runs.load(Ordering::SeqCst) > 0);
        assert_eq!(
            target.runs.load(Ordering::SeqCst),
            1,
            "the wake ran one pass"
        );
        let start = Instant::now();
        drop(evictor);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "drop joined promptly"
        );
        waker.wake(); // after shutdown: harmless
    }

    #[test]
    fn ticks_without_wakes() {
        let target = Arc::new(Fake::default());
        let (_waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_millis(5), mailbox).unwrap();
        wait_for(|| target.runs.load(Ordering::SeqCst) >= 3);
        drop(evictor);
        assert!(target.runs.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn a_pass_opened_while_the_watch_sleeps_wakes_it() {
        let target = Arc::new(Fake {
            paced: true,
            ..Fake::default()
        });
        let (waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_secs(3600), mailbox).unwrap();
        // The first look finds nothing opened, and the watch sleeps.
        wait_for(|| waker.sleeping.load(Ordering::SeqCst));
        assert!(
            waker.sleeping.load(Ordering::SeqCst),
            "the watch never slept"
        );
        let looks = target.looks.load(Ordering::SeqCst);
        for opened in 1..=3 {
            target.open.store(true, Ordering::SeqCst);
            waker.over_budget();
            wait_for(|| target.runs.load(Ordering::SeqCst) == opened);
            assert_eq!(
                target.runs.load(Ordering::SeqCst),
                opened,
                "the watch finished the pass"
            );
            wait_for(|| waker.sleeping.load(Ordering::SeqCst));
        }
        assert!(target.looks.load(Ordering::SeqCst) > looks);
        drop(evictor);
    }

    #[test]
    fn wakes_while_watching_do_not_bring_looks_forward() {
        let target = Arc::new(Fake {
            paced: true,
            busy: true,
            ..Fake::default()
        });
        let (waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_secs(3600), mailbox).unwrap();
        let start = Instant::now();
        while start.elapsed() < 3 * PACED_WATCH {
            waker.wake();
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(evictor);
        let looks = target.looks.load(Ordering::SeqCst);
        // One at the start and one per `PACED_WATCH` (a slow machine may add one more).
        assert!(
            (2..=5).contains(&looks),
            "{looks} looks in 3 watch intervals"
        );
    }
}
