//! A process exit on a timer, from a thread that never needs the GIL.
//!
//! Why this exists: librdkafka can block forever inside `consumer.close()` when a rebalance
//! reaches the member there, and confluent-kafka calls into librdkafka from its rebalance
//! callback *holding the GIL*. Then no Python thread runs again, so no Python timer, signal
//! handler or `os._exit` can end the process. This timer can. Python decides when to arm it, with
//! which exit status and which line to print; this only waits, writes and exits.

use pyo3::prelude::*;
use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

extern "C" {
    /// POSIX `_exit`: ends the process at once, running no exit handler (a handler could need
    /// the lock the stuck thread holds).
    fn _exit(status: std::os::raw::c_int) -> !;
}

/// Runs `fire` after `after` unless the returned sender is dropped (or sent to) first.
fn spawn(after: Duration, fire: impl FnOnce() + Send + 'static) -> Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("exit-timer".into())
        .spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                fire();
            }
        })
        .expect("spawn the exit timer thread");
    tx
}

/// An armed exit; `cancel()` disarms it.
#[pyclass(module = "consumer._native")]
pub struct ExitTimer {
    armed: Mutex<Option<Sender<()>>>,
}

#[pymethods]
impl ExitTimer {
    /// Disarm: the process is not ended. Calling it again does nothing.
    fn cancel(&self) {
        if let Ok(mut armed) = self.armed.lock() {
            armed.take();
        }
    }
}

/// After `seconds`, write `message` to stderr and end the process with `status`, unless
/// cancelled first.
#[pyfunction]
pub fn exit_after(seconds: f64, status: i32, message: Vec<u8>) -> PyResult<ExitTimer> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(pyo3::exceptions::PyValueError::new_err("seconds must be finite and >= 0"));
    }
    let tx = spawn(Duration::from_secs_f64(seconds), move || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&message);
        let _ = err.flush();
        // SAFETY: `_exit` takes an int and never returns; nothing after it runs.
        unsafe { _exit(status) }
    });
    Ok(ExitTimer { armed: Mutex::new(Some(tx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn fires_after_the_delay() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let _armed = spawn(Duration::from_millis(20), move || f.store(true, Ordering::SeqCst));
        thread::sleep(Duration::from_millis(500));
        assert!(fired.load(Ordering::SeqCst));
    }

    #[test]
    fn a_dropped_sender_disarms_it() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        drop(spawn(Duration::from_millis(100), move || f.store(true, Ordering::SeqCst)));
        thread::sleep(Duration::from_millis(400));
        assert!(!fired.load(Ordering::SeqCst));
    }
}
