//! The scheduling priority of the threads that fill the tables behind the engine.
//!
//! With the engine in front (`serve --engine`) no caller waits for the SQLite writer, its WAL
//! syncer, the checkpointer or the projection: an answer leaves once its command log record is
//! synced. Yet at the default priority their batches, a few milliseconds of CPU each, hold a
//! core while a caller's request waits for its turn to be parsed, decided or answered; on two
//! cores that wait was most of the reserve p99 at a quarter of the peak (BENCHMARKS.md, "Tail
//! at about half the peak"). So the engine lowers them to nice [`BACKGROUND_NICE`]: the
//! scheduler lets the hot path's threads run first and still gives the tables a share of the
//! CPU when every core is busy, so the projection keeps up (its lag at peak is measured in
//! BENCHMARKS.md). Without the engine the writer is the hot path and keeps the default.
//!
//! Linux keeps a nice value per thread, so this touches only the store's own threads, and
//! only to lower them: a thread already at a higher nice value (a server started with
//! `nice -n 19`) keeps it. Raising a nice value needs no privilege; where the system refuses it anyway (a sandbox), a warning
//! says so and the threads keep running at the default.

use std::sync::Mutex;

/// The nice value of the threads behind the engine (0 is the default, 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

#[cfg(target_os = "linux")]
type ThreadId = rustix::process::Pid;
#[cfg(not(target_os = "linux"))]
type ThreadId = ();

/// The store's background threads, and the nice value they should run at once lowered.
#[derive(Default)]
pub(crate) struct Background(Mutex<Registry>);

#[derive(Default)]
struct Registry {
    threads: Vec<ThreadId>,
    nice: Option<i32>,
}

impl Background {
    /// Registers the calling thread (each background thread calls this as it starts); it takes
    /// the lowered priority at once if the store was lowered before it started.
    pub(crate) fn enter(&self) {
        let me = current();
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nice) = r.nice {
            set(me, nice);
        }
        r.threads.push(me);
    }

    /// Lowers every registered thread, and those registering later, to `nice`.
    pub(crate) fn lower(&self, nice: i32) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        r.nice = Some(nice);
        for &t in &r.threads {
            set(t, nice);
        }
    }
}

#[cfg(target_os = "linux")]
fn current() -> ThreadId {
    rustix::thread::gettid()
}

#[cfg(not(target_os = "linux"))]
fn current() -> ThreadId {}

/// Lowers `thread` to `nice`, never raising it: a server started with `nice -n 19` keeps 19.
#[cfg(target_os = "linux")]
fn set(thread: ThreadId, nice: i32) {
    if rustix::process::getpriority_process(Some(thread)).is_ok_and(|now| now >= nice) {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(Some(thread), nice) {
        tracing::warn!(
            error = %e,
            nice,
            "cannot lower the priority of a thread behind the engine; it runs at the default"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_: ThreadId, _: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of a thread, from `/proc/self/task/TID/stat` (field 19).
    fn nice_of(tid: ThreadId) -> i32 {
        let stat =
            std::fs::read_to_string(format!("/proc/self/task/{}/stat", tid.as_raw_nonzero()))
                .expect("the thread's stat");
        let after_name = &stat[stat.rfind(')').expect("a stat line") + 2..];
        after_name
            .split(' ')
            .nth(16)
            .expect("field 19")
            .parse()
            .expect("a number")
    }

    #[test]
    fn threads_take_the_lowered_priority_before_and_after_they_start() {
        // The tests may run niced themselves (`nice cargo test`): lowering never raises.
        let base = nice_of(current());
        let lowered = base.max(BACKGROUND_NICE);
        let bg = std::sync::Arc::new(Background::default());
        let (early_tx, early_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let b = bg.clone();
        let early = std::thread::spawn(move || {
            b.enter();
            early_tx.send(current()).unwrap();
            let _ = go_rx.recv();
        });
        let early_tid = early_rx.recv().unwrap();
        assert_eq!(nice_of(early_tid), base);
        bg.lower(BACKGROUND_NICE);
        assert_eq!(nice_of(early_tid), lowered, "a thread registered before");
        let b = bg.clone();
        let late = std::thread::spawn(move || {
            b.enter();
            nice_of(current())
        });
        assert_eq!(late.join().unwrap(), lowered, "a thread registered after");
        assert_eq!(
            nice_of(current()),
            base,
            "the caller's own thread is untouched"
        );
        go_tx.send(()).unwrap();
        early.join().unwrap();
    }
}
