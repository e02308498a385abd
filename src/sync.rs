//! The one switch between std and loom.
//!
//! Every atomic, `Arc`, mutex, thread and lazily-initialised cell the engine uses comes from here.
//! Under `--cfg router_loom` they are loom's model-checked types, so the loom suite in
//! `loom-tests/` explores the same code that ships; otherwise they are std's. crossbeam-epoch
//! makes the same switch itself under `--cfg crossbeam_loom` (with its `loom` feature), which is
//! why the loom suite sets both cfgs. No other file imports `std::sync::atomic` directly.

#[cfg(not(router_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(router_loom))]
pub(crate) use std::sync::{Arc, Mutex};
#[cfg(not(router_loom))]
pub(crate) use std::thread;

#[cfg(router_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(router_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(router_loom)]
pub(crate) use loom::sync::{Condvar, Mutex};
#[cfg(router_loom)]
pub(crate) use loom::thread;
