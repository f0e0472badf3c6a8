//! One pass over a run of Kafka messages (confluent-kafka `Message` objects, or anything with the
//! same methods) that reads what the worker's per-field `map`s read — `value()`, `offset()`,
//! `timestamp()`, `key()`, optionally `headers()` — and copies the values, less their framing
//! header, into one buffer. It decides nothing: where a run is cut, tombstones (reported as
//! `None`: the caller takes its record-by-record path), flushes and dead letters stay in Python.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::ffi;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// The bytes of `value` after its `strip`-byte framing header; an error names a value too short.
pub fn body(value: &[u8], strip: usize) -> Result<&[u8], String> {
    value
        .get(strip..)
        .ok_or_else(|| format!("a value of {} bytes is shorter than its {strip}-byte header", value.len()))
}

/// Copies `bodies` back to back into `out` (exactly their total length) and returns each one's
/// end offset counted from `base`, as native-endian int64s (what `array('q')` holds).
pub fn join(out: &mut [u8], bodies: &[&[u8]], base: i64) -> Vec<u8> {
    let mut ends = Vec::with_capacity(8 * bodies.len());
    let mut at = 0;
    for b in bodies {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
        ends.extend_from_slice(&(base + at as i64).to_ne_bytes());
    }
    ends
}

/// What `gather` hands back: (data, ends, offsets, timestamps, keys, key bytes, headers).
type Gathered<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyList>,
    usize,
    Option<Bound<'py, PyList>>,
);

/// Calls the argument-less methods `names` of objects, with the C function behind each method
/// looked up once per run instead of once per call.
///
/// For an object of the type the first one had, whose method is a C method taking no arguments
/// (confluent-kafka's `Message`), the C function is called directly, as the interpreter's own
/// specialised call does; anything else (a test double, a subclass) goes through an ordinary
/// method call. The calls and their results are the same either way: only the lookup is saved.
struct Methods<'py, const N: usize> {
    py: Python<'py>,
    names: [Bound<'py, PyString>; N],
    /// The type the direct calls hold for, and the descriptors kept alive while they are used.
    ty: *mut ffi::PyTypeObject,
    direct: [Option<ffi::PyCFunction>; N],
    _descriptors: Vec<Bound<'py, PyAny>>,
}

impl<'py, const N: usize> Methods<'py, N> {
    fn new(py: Python<'py>, names: [&str; N], first: Option<&Bound<'py, PyAny>>) -> Self {
        let names = names.map(|n| PyString::intern(py, n));
        let mut direct = [None; N];
        let mut descriptors = Vec::new();
        let mut ty = std::ptr::null_mut();
        if let Some(first) = first {
            let t = first.get_type();
            for (slot, name) in direct.iter_mut().zip(&names) {
                if let Ok(d) = t.getattr(name) {
                    *slot = no_args_c_function(&d);
                    descriptors.push(d);
                }
            }
            ty = t.as_type_ptr();
        }
        Self { py, names, ty, direct, _descriptors: descriptors }
    }

    /// `obj.<names[i]>()`.
    fn call(&self, obj: &Bound<'py, PyAny>, i: usize) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `obj` is a live object; the C function was taken from a method descriptor of
        // exactly `obj`'s type (kept alive in `_descriptors`) whose flags say METH_NOARGS, so
        // it is called as CPython calls it: (self, NULL), returning a new reference or NULL.
        unsafe {
            if let Some(f) = self.direct[i] {
                if ffi::Py_TYPE(obj.as_ptr()) == self.ty {
                    return Bound::from_owned_ptr_or_err(self.py, f(obj.as_ptr(), std::ptr::null_mut()));
                }
            }
        }
        obj.call_method0(&self.names[i])
    }
}

/// The C function of `descr` when it is a method descriptor of a C method taking no arguments.
fn no_args_c_function(descr: &Bound<'_, PyAny>) -> Option<ffi::PyCFunction> {
    // SAFETY: the type check makes `descr` a PyMethodDescrObject, whose `d_method` points to the
    // method's static PyMethodDef; `ml_meth` holds a PyCFunction when the flags are METH_NOARGS.
    unsafe {
        if ffi::Py_TYPE(descr.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type) {
            return None;
        }
        let def = (*(descr.as_ptr() as *mut ffi::PyMethodDescrObject)).d_method;
        if def.is_null() || (*def).ml_flags != ffi::METH_NOARGS {
            return None;
        }
        Some((*def).ml_meth.PyCFunction)
    }
}

const VALUE: usize = 0;
const OFFSET: usize = 1;
const TIMESTAMP: usize = 2;
const KEY: usize = 3;
const HEADERS: usize = 4;

/// `gather(msgs, start, end, strip, base, want_headers)`: messages `msgs[start:end]` as one
/// buffer of bodies (each value less `strip` bytes), their end offsets counted from `base`,
/// offsets, timestamps (the ms of `timestamp()`: -1 when not available), keys, total key bytes
/// and headers (None unless `want_headers`). The four buffers hold native int64s (`array('q')`).
/// Returns None when a value is None (a tombstone): the caller goes record by record.
#[pyfunction]
#[pyo3(signature = (msgs, start, end, strip, base, want_headers))]
pub fn gather<'py>(
    py: Python<'py>,
    msgs: &Bound<'py, PyList>,
    start: usize,
    end: usize,
    strip: usize,
    base: i64,
    want_headers: bool,
) -> PyResult<Option<Gathered<'py>>> {
    if start > end || end > msgs.len() {
        return Err(PyValueError::new_err(format!(
            "gather: run {start}..{end} is not within the {} messages",
            msgs.len()
        )));
    }
    let n = end - start;
    let first = if n > 0 { Some(msgs.get_item(start)?) } else { None };
    let m = Methods::new(py, ["value", "offset", "timestamp", "key", "headers"], first.as_ref());
    // First pass: every value, kept (not copied) until the total size is known, so the bodies
    // are copied once, straight into the bytes object handed back.
    let mut values = Vec::with_capacity(n);
    for i in start..end {
        let value = m.call(&msgs.get_item(i)?, VALUE)?;
        if value.is_none() {
            return Ok(None);
        }
        let value = value
            .cast_into::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("gather: a message value is not bytes"))?;
        body(value.as_bytes(), strip).map_err(PyValueError::new_err)?;
        values.push(value);
    }
    let bodies: Vec<&[u8]> = values.iter().map(|v| &v.as_bytes()[strip..]).collect();
    let total: usize = bodies.iter().map(|b| b.len()).sum();
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new bytes object of n uninitialised
    // bytes (or NULL with an exception set), which may be written until it is shared; `join`
    // fills all n of them before the object is handed out. (PyBytes::new_with would zero them
    // first: one more pass over every body.)
    let (data, ends) = unsafe {
        let ptr = ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as ffi::Py_ssize_t);
        let data = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let buf = std::slice::from_raw_parts_mut(ffi::PyBytes_AsString(ptr) as *mut u8, total);
        let ends = join(buf, &bodies, base);
        (data, ends)
    };
    drop(bodies);
    drop(values);
    let mut offsets = Vec::with_capacity(8 * n);
    let mut timestamps = Vec::with_capacity(8 * n);
    let keys = PyList::empty(py);
    let headers = if want_headers { Some(PyList::empty(py)) } else { None };
    let mut key_bytes = 0usize;
    for i in start..end {
        let msg = msgs.get_item(i)?;
        let offset: i64 = m.call(&msg, OFFSET)?.extract()?;
        let ts = m.call(&msg, TIMESTAMP)?;
        let timestamp: i64 = match ts.cast::<PyTuple>() {
            Ok(t) => t.get_borrowed_item(1)?.extract()?,
            Err(_) => ts.get_item(1)?.extract()?,
        };
        offsets.extend_from_slice(&offset.to_ne_bytes());
        timestamps.extend_from_slice(&timestamp.to_ne_bytes());
        let key = m.call(&msg, KEY)?;
        if !key.is_none() {
            key_bytes += key.len()?;
        }
        keys.append(key)?;
        if let Some(h) = &headers {
            h.append(m.call(&msg, HEADERS)?)?;
        }
    }
    Ok(Some((
        data,
        PyBytes::new(py, &ends),
        PyBytes::new(py, &offsets),
        PyBytes::new(py, &timestamps),
        keys,
        key_bytes,
        headers,
    )))
}

/// `partition_runs(msgs) -> list[(partition, start, end, value bytes)] | None`: a consumed batch
/// of one topic cut where `partition()` changes, with the bytes (`len(msg)`) of each run. None
/// when any message carries an `error()`: the caller's slow path sorts those out.
#[pyfunction]
pub fn partition_runs<'py>(py: Python<'py>, msgs: &Bound<'py, PyList>) -> PyResult<Option<Bound<'py, PyList>>> {
    let out = PyList::empty(py);
    let first = if msgs.is_empty() { None } else { Some(msgs.get_item(0)?) };
    const ERROR: usize = 0;
    const PARTITION: usize = 1;
    let m = Methods::new(py, ["error", "partition"], first.as_ref());
    let mut current: Option<(i64, usize, usize)> = None; // (partition, start, bytes)
    for (i, msg) in msgs.iter().enumerate() {
        if !m.call(&msg, ERROR)?.is_none() {
            return Ok(None);
        }
        let partition: i64 = m.call(&msg, PARTITION)?.extract()?;
        let size = msg.len()?;
        current = match current {
            Some((p, s, b)) if p == partition => Some((p, s, b + size)),
            Some((p, s, b)) => {
                out.append((p, s, i, b))?;
                Some((partition, i, size))
            }
            None => Some((partition, i, size)),
        };
    }
    if let Some((p, s, b)) = current {
        out.append((p, s, msgs.len(), b))?;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(b: &[u8]) -> Vec<i64> {
        b.chunks_exact(8).map(|c| i64::from_ne_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn strips_headers_and_counts_ends_from_base() {
        let values: [&[u8]; 3] = [b"\x00\x00\x00\x00\x07abc", b"\x00\x00\x00\x00\x07", b"\x00\x00\x00\x00\x07de"];
        let bodies: Vec<&[u8]> = values.iter().map(|v| body(v, 5).unwrap()).collect();
        let mut out = vec![0u8; 5];
        let ends = join(&mut out, &bodies, 100);
        assert_eq!(out, b"abcde");
        assert_eq!(ints(&ends), vec![103, 103, 105]);
    }

    #[test]
    fn raw_values_are_copied_whole() {
        let mut out = vec![0u8; 3];
        let ends = join(&mut out, &[body(b"xyz", 0).unwrap()], 0);
        assert_eq!(out, b"xyz");
        assert_eq!(ints(&ends), vec![3]);
    }

    #[test]
    fn a_value_shorter_than_its_header_is_an_error() {
        assert_eq!(body(b"\x00\x01", 5).unwrap_err(), "a value of 2 bytes is shorter than its 5-byte header");
        assert_eq!(body(b"\x00\x01\x02\x03\x04", 5).unwrap(), b"");
    }
}
