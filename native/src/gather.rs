//! One pass over a run of Kafka messages (confluent-kafka `Message` objects, or anything with the
//! same methods) that reads what the worker's per-field `map`s read — `value()`, `offset()`,
//! `timestamp()`, `key()`, optionally `headers()` — and copies the values, less their framing
//! header, into one buffer. It decides nothing: where a run is cut, tombstones (reported as
//! `None`: the caller takes its record-by-record path), flushes and dead letters stay in Python.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use pyo3::intern;

/// The gathered coordinates of a run, free of Python (so `cargo test` covers it).
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The bodies back to back.
    pub data: Vec<u8>,
    /// End offset of each body, counted from `base` (native-endian i64, as `array('q')` holds).
    pub ends: Vec<u8>,
    /// Kafka offsets (native-endian i64).
    pub offsets: Vec<u8>,
    /// Timestamps in ms, -1 when not available (native-endian i64).
    pub timestamps: Vec<u8>,
    base: i64,
}

impl Joined {
    pub fn new(base: i64, rows: usize) -> Self {
        Self {
            data: Vec::new(),
            ends: Vec::with_capacity(8 * rows),
            offsets: Vec::with_capacity(8 * rows),
            timestamps: Vec::with_capacity(8 * rows),
            base,
        }
    }

    /// Appends one value without its first `strip` bytes (its framing header).
    pub fn push(&mut self, value: &[u8], strip: usize, offset: i64, timestamp: i64) -> Result<(), String> {
        let body = value.get(strip..).ok_or_else(|| {
            format!("a value of {} bytes is shorter than its {strip}-byte header", value.len())
        })?;
        self.data.extend_from_slice(body);
        let end = self.base + self.data.len() as i64;
        self.ends.extend_from_slice(&end.to_ne_bytes());
        self.offsets.extend_from_slice(&offset.to_ne_bytes());
        self.timestamps.extend_from_slice(&timestamp.to_ne_bytes());
        Ok(())
    }
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
    let mut joined = Joined::new(base, n);
    let keys = PyList::empty(py);
    let headers = if want_headers { Some(PyList::empty(py)) } else { None };
    let mut key_bytes = 0usize;
    for i in start..end {
        let msg = msgs.get_item(i)?;
        let value = msg.call_method0(intern!(py, "value"))?;
        if value.is_none() {
            return Ok(None);
        }
        let value = value
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("gather: a message value is not bytes"))?;
        let offset: i64 = msg.call_method0(intern!(py, "offset"))?.extract()?;
        let ts = msg.call_method0(intern!(py, "timestamp"))?;
        let timestamp: i64 = match ts.cast::<PyTuple>() {
            Ok(t) => t.get_borrowed_item(1)?.extract()?,
            Err(_) => ts.get_item(1)?.extract()?,
        };
        joined.push(value.as_bytes(), strip, offset, timestamp).map_err(PyValueError::new_err)?;
        let key = msg.call_method0(intern!(py, "key"))?;
        if !key.is_none() {
            key_bytes += key.len()?;
        }
        keys.append(key)?;
        if let Some(h) = &headers {
            h.append(msg.call_method0(intern!(py, "headers"))?)?;
        }
    }
    Ok(Some((
        PyBytes::new(py, &joined.data),
        PyBytes::new(py, &joined.ends),
        PyBytes::new(py, &joined.offsets),
        PyBytes::new(py, &joined.timestamps),
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
    let mut current: Option<(i64, usize, usize)> = None; // (partition, start, bytes)
    for (i, msg) in msgs.iter().enumerate() {
        if !msg.call_method0(intern!(py, "error"))?.is_none() {
            return Ok(None);
        }
        let partition: i64 = msg.call_method0(intern!(py, "partition"))?.extract()?;
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
        let mut j = Joined::new(100, 2);
        j.push(b"\x00\x00\x00\x00\x07abc", 5, 7, -1).unwrap();
        j.push(b"\x00\x00\x00\x00\x07", 5, 8, 1_700_000_000_000).unwrap();
        j.push(b"\x00\x00\x00\x00\x07de", 5, 9, 0).unwrap();
        assert_eq!(j.data, b"abcde");
        assert_eq!(ints(&j.ends), vec![103, 103, 105]);
        assert_eq!(ints(&j.offsets), vec![7, 8, 9]);
        assert_eq!(ints(&j.timestamps), vec![-1, 1_700_000_000_000, 0]);
    }

    #[test]
    fn raw_values_are_copied_whole() {
        let mut j = Joined::new(0, 1);
        j.push(b"xyz", 0, 1, 2).unwrap();
        assert_eq!(j.data, b"xyz");
        assert_eq!(ints(&j.ends), vec![3]);
    }

    #[test]
    fn a_value_shorter_than_its_header_is_an_error() {
        let mut j = Joined::new(0, 1);
        assert!(j.push(b"\x00\x01", 5, 1, 2).is_err());
        assert!(j.data.is_empty() && j.ends.is_empty());
    }
}
