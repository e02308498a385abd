//! The evictor: one housekeeping thread per policy, like moka's housekeeper.
//!
//! It sees the trees only through `Housekeeper` and waits on three things:
//! - **stop**: a signal only the `Evictor` handle can raise, by being dropped; the thread sees
//!   it at its next wait and exits, and `Drop` joins it. A pass in progress finishes first
//!   (passes are bounded), so no thread outlives its policy.
//! - **wake**: raised by requests that push a tree over its budget, without blocking. A wake
//!   raised while the thread sleeps or runs a pass stays pending until its next wait, so it is
//!   never lost; raising it again while pending changes nothing.
//! - **tick**: the wait's timeout, `eviction_interval_secs`.
//!
//! With std these are crossbeam channels and a `select!`: stop is a zero-capacity channel whose
//! only `Sender` the handle owns (dropping it disconnects), wake is `bounded(1)` fed by
//! `try_send`. crossbeam-channel cannot run under loom, so under `router_loom` the same
//! semantics come from a loom `Mutex<(stopped, woken)>` and `Condvar`, which the loom suite
//! model-checks (loom's timed wait never times out, so models see stop and wake only).
//!
//! On a wake or a tick the evictor pins a guard (the anchor), opens a paced pass on every tree
//! over its budget, and sleeps again while requests run the passes in pieces
//! (`tree/paced.rs`): its own run is short, so it never holds up a decision for a whole pass.
//! The piece that completes a pass closes it without a wake (a wake is a futex syscall and an
//! IPI inside that request: 16-24 us in the median on the KVM guests we measure on). The
//! evictor finds the passes closed when the next request to push a tree over its budget wakes
//! it, or at `PACED_DEADLINE`; it closes what is still open, finishing passes no request
//! carried (no traffic) itself, and unpins. That wait may take a wake meant for the next pass,
//! so after each run it looks at the trees and runs again at once if one is over its budget
//! (`needs_pass`). On stop it closes the passes as they stand. With whole passes (a builder
//! option) it opens and finishes them in one run.
//!
//! Routing never waits for the evictor: passes change the trees with the same lock-free
//! operations requests use, and requests only `try_lock` a pass. What passes unlink is freed
//! once the epoch says no reader holds it (`tree/reclaim.rs`): a few entries per piece, and
//! what is left by the evictor on a tick; with whole passes, by the evictor before and after
//! each run.

use crate::constants::PACED_DEADLINE;
use crate::sync::thread;
use crossbeam_epoch::{self as epoch, Guard};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the evictor can ask of the policy.
pub(crate) trait Housekeeper: Send + Sync + 'static {
    /// Opens a paced pass on every tree over its budget; returns whether it opened any.
    ///
    /// # Safety
    /// `anchor` must stay pinned until `close_passes` returns, and `close_passes` must be
    /// called before it unpins.
    unsafe fn open_passes(&self, anchor: &Guard) -> bool;
    /// Whether requests run the passes in pieces; if not, the evictor runs them whole.
    fn passes_in_requests(&self) -> bool;
    /// Whether every pass opened is complete.
    fn passes_done(&self) -> bool;
    /// Closes the passes (finishing their work in this thread first if `finish`).
    fn close_passes(&self, anchor: &Guard, finish: bool);
    /// Frees what closed passes unlinked whose grace period has passed, in this thread.
    fn free_unlinked(&self);
    /// Whether any tree is over its budget (called with no pass open; the wake flags of trees
    /// within it are cleared).
    fn needs_pass(&self) -> bool;
}

/// One run of the evictor: open the passes, leave them to the requests until they are done or
/// the deadline passes (or run them whole here), close them. Returns `false` if a stop came
/// meanwhile.
fn run_passes(target: &dyn Housekeeper, mailbox: &Mailbox, event: Event) -> bool {
    let in_requests = target.passes_in_requests();
    // Pieces free what earlier passes unlinked, a few entries each; the rest is freed here on a
    // tick. Whole passes free it here, before and after each run.
    if !in_requests || event == Event::Tick {
        target.free_unlinked();
    }
    let anchor = epoch::pin();
    let mut stopped = false;
    // SAFETY: `anchor` stays pinned until after `close_passes` below returns.
    if unsafe { target.open_passes(&anchor) } {
        let deadline = Deadline::after(PACED_DEADLINE);
        while in_requests && !target.passes_done() {
            let Some(left) = deadline.left() else {
                break;
            };
            match mailbox.wait(left) {
                Event::Stop => {
                    stopped = true;
                    break;
                }
                Event::Tick => break,
                // A tree over its budget (its pass may have been closed by its last piece
                // already): look again.
                Event::Wake => {}
            }
        }
        target.close_passes(&anchor, !stopped);
    }
    drop(anchor);
    if !in_requests {
        target.free_unlinked();
    }
    !stopped
}

/// When the evictor stops leaving an open pass to the requests. Under loom there is none:
/// timed waits never time out there, and a model must not depend on the real clock.
struct Deadline(#[cfg(not(router_loom))] std::time::Instant);

impl Deadline {
    fn after(_wait: Duration) -> Self {
        Self(
            #[cfg(not(router_loom))]
            {
                std::time::Instant::now() + _wait
            },
        )
    }

    /// Time left, if any.
    fn left(&self) -> Option<Duration> {
        #[cfg(not(router_loom))]
        {
            let left = self.0.saturating_duration_since(std::time::Instant::now());
            (!left.is_zero()).then_some(left)
        }
        #[cfg(router_loom)]
        Some(Duration::MAX)
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
    use std::time::Duration;

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
    }

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.state.lock().unwrap().stopped = true;
            self.0.changed.notify_one();
        }
    }
}

pub(crate) use signal::{Mailbox, Waker};

/// The running thread; dropping this stops and joins it.
pub(crate) struct Evictor {
    stop: Option<signal::StopOnDrop>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Evictor {
    /// A waker and the mailbox it feeds, made before the policy state that holds the waker.
    pub(crate) fn channel() -> (Waker, Mailbox) {
        signal::wake_channel()
    }

    pub(crate) fn spawn(
        target: Arc<dyn Housekeeper>,
        interval: Duration,
        mut mailbox: Mailbox,
    ) -> std::io::Result<Self> {
        let stop = mailbox.stopper();
        let handle = thread::Builder::new()
            .name("router-evictor".into())
            .spawn(move || {
                let mut event = mailbox.wait(interval);
                while event != Event::Stop && run_passes(&*target, &mailbox, event) {
                    // The wait in `run_passes` may have taken a wake meant for the next pass
                    // (the last piece had closed this one already): a tree over its budget
                    // gets that pass now.
                    event = if target.needs_pass() {
                        Event::Wake
                    } else {
                        mailbox.wait(interval)
                    };
                }
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

    /// Counts runs; opens no pass.
    struct Count(AtomicUsize);
    impl Housekeeper for Count {
        unsafe fn open_passes(&self, _anchor: &Guard) -> bool {
            self.0.fetch_add(1, Ordering::SeqCst);
            false
        }
        fn passes_in_requests(&self) -> bool {
            true
        }
        fn passes_done(&self) -> bool {
            true
        }
        fn close_passes(&self, _anchor: &Guard, _finish: bool) {}
        fn free_unlinked(&self) {}
        fn needs_pass(&self) -> bool {
            false
        }
    }

    #[test]
    fn wakes_early_and_stops_on_drop() {
        let target = Arc::new(Count(AtomicUsize::new(0)));
        let (waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_secs(3600), mailbox).unwrap();
        waker.wake();
        let deadline = Instant::now() + Duration::from_secs(5);
        while target.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(target.0.load(Ordering::SeqCst), 1, "the wake ran one pass");
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
        let target = Arc::new(Count(AtomicUsize::new(0)));
        let (_waker, mailbox) = Evictor::channel();
        let evictor = Evictor::spawn(target.clone(), Duration::from_millis(5), mailbox).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while target.0.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(evictor);
        assert!(target.0.load(Ordering::SeqCst) >= 3);
    }
}
