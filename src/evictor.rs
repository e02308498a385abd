//! The evictor: one housekeeping thread per policy, like moka's housekeeper.
//!
//! It sees the trees only through `Housekeeper::run_pass` and waits on three things:
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
//! Routing never waits for the evictor: passes change the trees with the same lock-free
//! operations requests use, and the evictor frees what its passes unlink itself, before and
//! after each pass, once the epoch says no reader holds it (`tree/reclaim.rs`).

use crate::sync::thread;
use crate::tree::EvictionScratch;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the evictor can ask of the policy.
pub(crate) trait Housekeeper: Send + Sync + 'static {
    /// One pass, in buffers the evictor thread keeps for its whole life.
    fn run_pass(&self, scratch: &mut EvictionScratch);
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
                let mut scratch = EvictionScratch::default();
                loop {
                    match mailbox.wait(interval) {
                        Event::Stop => return,
                        Event::Wake | Event::Tick => target.run_pass(&mut scratch),
                    }
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

    struct Count(AtomicUsize);
    impl Housekeeper for Count {
        fn run_pass(&self, _scratch: &mut EvictionScratch) {
            self.0.fetch_add(1, Ordering::SeqCst);
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
