//! The evictor: one housekeeping thread per policy, like moka's housekeeper.
//!
//! Requests keep their trees within budget themselves: the request whose insert takes a tree
//! over its budget evicts what brings it back under, at a cost proportional to what it evicts
//! (`tree/evict.rs`). So this thread is not on any request's path and nothing wakes it. It sees
//! the trees only through `Housekeeper` and waits on two things:
//! - **stop**: a signal only the `Evictor` handle can raise, by being dropped; the thread sees
//!   it at its next wait and exits, and `Drop` joins it. Work in progress finishes first (an
//!   eviction is bounded by what it frees), so no thread outlives its policy.
//! - **tick**: the wait's timeout, `eviction_interval_secs`. A tick trims any tree still over
//!   budget (one that stopped receiving requests right after crossing it, or whose last
//!   eviction found everything being replaced), and collects what evictions retired, so an
//!   idle router gives its memory back.
//!
//! With std the stop signal is a zero-capacity crossbeam channel whose only `Sender` the handle
//! owns (dropping it disconnects) and the wait a `recv_timeout`. crossbeam-channel cannot run
//! under loom, so under `router_loom` the same semantics come from a loom `Mutex<bool>` and
//! `Condvar`, which the loom suite model-checks (loom's timed wait never times out, so models
//! see stop only). No atomics of ours: the channel (or the mutex) orders the stop.

use crate::sync::thread;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What the evictor can ask of the policy.
pub(crate) trait Housekeeper: Send + Sync + 'static {
    /// Trims every tree over its budget and frees what evictions retired, in this thread.
    fn tick(&self);
}

#[cfg(not(router_loom))]
mod signal {
    use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
    use std::time::Duration;

    /// The evictor thread's end.
    #[derive(Debug)]
    pub(crate) struct Mailbox(Receiver<()>);
    /// Raises stop when dropped.
    #[derive(Debug)]
    pub(crate) struct StopOnDrop(#[allow(dead_code)] Sender<()>);

    pub(crate) fn stop_channel() -> (StopOnDrop, Mailbox) {
        let (tx, rx) = bounded(0);
        (StopOnDrop(tx), Mailbox(rx))
    }

    impl Mailbox {
        /// Waits up to `timeout`; returns whether stop was raised.
        pub(crate) fn stopped_within(&self, timeout: Duration) -> bool {
            !matches!(self.0.recv_timeout(timeout), Err(RecvTimeoutError::Timeout))
        }
    }
}

#[cfg(router_loom)]
mod signal {
    use crate::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct Inner {
        stopped: Mutex<bool>,
        changed: Condvar,
    }

    #[derive(Debug)]
    pub(crate) struct Mailbox(Arc<Inner>);
    #[derive(Debug)]
    pub(crate) struct StopOnDrop(Arc<Inner>);

    pub(crate) fn stop_channel() -> (StopOnDrop, Mailbox) {
        let inner = Arc::new(Inner::default());
        (StopOnDrop(inner.clone()), Mailbox(inner))
    }

    impl Mailbox {
        pub(crate) fn stopped_within(&self, timeout: Duration) -> bool {
            let mut stopped = self.0.stopped.lock().unwrap();
            while !*stopped {
                let (next, result) = self.0.changed.wait_timeout(stopped, timeout).unwrap();
                if result.timed_out() {
                    return false;
                }
                stopped = next;
            }
            true
        }
    }

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            *self.0.stopped.lock().unwrap() = true;
            self.0.changed.notify_one();
        }
    }
}

/// The running thread; dropping this stops and joins it.
pub(crate) struct Evictor {
    stop: Option<signal::StopOnDrop>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Evictor {
    pub(crate) fn spawn(target: Arc<dyn Housekeeper>, interval: Duration) -> std::io::Result<Self> {
        let (stop, mailbox) = signal::stop_channel();
        let handle = thread::Builder::new()
            .name("router-evictor".into())
            .spawn(move || {
                while !mailbox.stopped_within(interval) {
                    target.tick();
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
            // A panic inside an eviction already printed its message; there is nothing to add.
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

    #[derive(Default)]
    struct Fake {
        ticks: AtomicUsize,
    }
    impl Housekeeper for Fake {
        fn tick(&self) {
            self.ticks.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn ticks_until_dropped_then_stops_promptly() {
        let target = Arc::new(Fake::default());
        let evictor = Evictor::spawn(target.clone(), Duration::from_millis(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while target.ticks.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(target.ticks.load(Ordering::SeqCst) >= 3);
        let slow = Evictor::spawn(target.clone(), Duration::from_secs(3600)).unwrap();
        let start = Instant::now();
        drop(slow);
        drop(evictor);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "drop joined promptly, mid-wait"
        );
    }
}
