//! A process exit on a timer, from a thread that never needs the GIL.
//!
//! Why this exists: librdkafka can block forever inside `consumer.close()` when a rebalance
//! reaches the member there, and confluent-kafka calls into librdkafka from its rebalance
//! callback *holding the GIL*. Then no Python thread runs again, so no Python timer, signal
//! handler or `os._exit` can end the process. This timer can. Python decides when to arm it, with
//! which exit status and which line to print; this only waits, writes and exits.

use pyo3::prelude::*;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

extern "C" {
    /// POSIX `_exit`: ends the process at once, running no exit handler (a handler could need
    /// the lock the stuck thread holds).
    fn _exit(status: std::os::raw::c_int) -> !;
}

/// Whether the timer was cancelled, and the wake-up for its thread.
#[derive(Default)]
struct Arming {
    cancelled: Mutex<bool>,
    wake: Condvar,
}

impl Arming {
    fn cancel(&self) {
        if let Ok(mut cancelled) = self.cancelled.lock() {
            *cancelled = true;
        }
        self.wake.notify_all();
    }
}

/// Runs `fire` after `after` unless cancelled first. Only `cancel` disarms: dropping every handle
/// leaves the timer armed (an armed last resort must not depend on a Python object staying alive).
fn spawn(after: Duration, fire: impl FnOnce() + Send + 'static) -> Arc<Arming> {
    let arming = Arc::new(Arming::default());
    let waits = arming.clone();
    thread::Builder::new()
        .name("exit-timer".into())
        .spawn(move || {
            let Ok(cancelled) = waits.cancelled.lock() else { return };
            let Ok((cancelled, _)) = waits.wake.wait_timeout_while(cancelled, after, |c| !*c) else {
                return;
            };
            if !*cancelled {
                drop(cancelled);
                fire();
            }
        })
        .expect("spawn the exit timer thread");
    arming
}

/// An armed exit; `cancel()` disarms it (dropping it does not).
#[pyclass(module = "consumer._native")]
pub struct ExitTimer {
    arming: Arc<Arming>,
}

#[pymethods]
impl ExitTimer {
    /// Disarm: the process is not ended. Calling it again does nothing.
    fn cancel(&self) {
        self.arming.cancel();
    }
}

/// After `seconds`, write `message` to stderr and end the process with `status`, unless
/// cancelled first.
#[pyfunction]
pub fn exit_after(seconds: f64, status: i32, message: Vec<u8>) -> PyResult<ExitTimer> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(pyo3::exceptions::PyValueError::new_err("seconds must be finite and >= 0"));
    }
    let arming = spawn(Duration::from_secs_f64(seconds), move || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&message);
        let _ = err.flush();
        // SAFETY: `_exit` takes an int and never returns; nothing after it runs.
        unsafe { _exit(status) }
    });
    Ok(ExitTimer { arming })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn fires_after_the_delay() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let _armed = spawn(Duration::from_millis(20), move || f.store(true, Ordering::SeqCst));
        thread::sleep(Duration::from_millis(500));
        assert!(fired.load(Ordering::SeqCst));
    }

    #[test]
    fn cancel_disarms_it() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let arming = spawn(Duration::from_millis(100), move || f.store(true, Ordering::SeqCst));
        arming.cancel();
        arming.cancel();
        thread::sleep(Duration::from_millis(400));
        assert!(!fired.load(Ordering::SeqCst));
    }

    #[test]
    fn dropping_the_handle_keeps_it_armed() {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        drop(spawn(Duration::from_millis(50), move || f.store(true, Ordering::SeqCst)));
        thread::sleep(Duration::from_millis(500));
        assert!(fired.load(Ordering::SeqCst));
    }
}
