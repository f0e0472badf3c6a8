//! `consumer._native`: decodes a chunk of unframed Avro bodies (one writer schema, concatenated,
//! with end offsets) straight into Arrow record batches of the exact `typemap.arrow_schema`
//! types, handed to pyarrow through the Arrow C data interface. Bad bodies are reported by
//! index with a fastavro-compatible reason and left out of the batches. One thing besides:
//! `exit_after`, a process exit that still works while a stuck thread holds the GIL
//! (`exit_timer`).

pub mod convert;
pub mod exit_timer;
pub mod gather;
pub mod logical;
pub mod schema;
pub mod validate;

use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::RecordBatch;
use arrow_avro::reader::{Decoder as AvroDecoder, DecoderMode, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, SchemaStore};
use arrow_pyarrow::{PyArrowType, ToPyArrow};
use arrow_schema::{Schema, SchemaRef};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::schema::Node;

/// Rows per arrow-avro batch before a flush.
const BATCH_ROWS: usize = 1 << 16;
/// Body bytes per arrow-avro batch: string/binary data of one column stays below i32 offsets.
pub const BATCH_BYTES: usize = 1 << 30;

pyo3::create_exception!(_native, UnsupportedSchema, pyo3::exceptions::PyValueError);

/// The decoding core, free of Python: used by the extension and by `cargo test`.
pub struct Core {
    node: Node,
    /// Leading top-level fields the structural walk reads ([`validate::walked_fields`]).
    walked: usize,
    /// Whether the schema holds a decimal: its batches are checked for values beyond their
    /// precision ([`convert::decimals_fit`]).
    decimals: bool,
    emitted: String,
    target: SchemaRef,
    inner: Option<AvroDecoder>,
    /// Body bytes per batch before a new one starts (tests lower it).
    pub batch_bytes: usize,
}

/// Bad records: (index in the chunk, reason).
pub type Bad = Vec<(usize, String)>;

fn bounds(ends: &[i64], raw_len: usize, n: usize) -> Result<Vec<(usize, usize)>, String> {
    if n > ends.len() {
        return Err(format!("n={n} but only {} end offsets", ends.len()));
    }
    let mut out = Vec::with_capacity(n);
    let mut start = 0usize;
    for &end in &ends[..n] {
        if end < start as i64 || end as u64 > raw_len as u64 {
            return Err(format!("end offset {end} out of order or past the buffer ({raw_len} bytes)"));
        }
        out.push((start, end as usize));
        start = end as usize;
    }
    Ok(out)
}

impl Core {
    pub fn new(schema_json: &str, target: SchemaRef) -> Result<Self, String> {
        let node = schema::parse(schema_json).map_err(|e| e.to_string())?;
        let emitted = schema::emit(&node).to_string();
        let walked = validate::walked_fields(&node);
        let decimals = schema::has_decimal(&node);
        let mut core = Self { node, walked, decimals, emitted, target, inner: None, batch_bytes: BATCH_BYTES };
        core.inner = Some(core.build().map_err(|e| format!("unsupported by the native decoder: {e}"))?);
        // Self-check: an empty batch must convert to exactly the target schema.
        let (batches, _) = core.decode(&[], &[], 0)?;
        if batches.len() != 1 || batches[0].schema() != core.target {
            return Err("unsupported by the native decoder: converted schema differs".into());
        }
        Ok(core)
    }

    fn build(&self) -> Result<AvroDecoder, String> {
        let mut store = SchemaStore::new();
        let fp = store.register(AvroSchema::new(self.emitted.clone())).map_err(|e| e.to_string())?;
        ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_active_fingerprint(fp)
            .with_decoder_mode(DecoderMode::UnframedDatum)
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    fn decoder(&mut self) -> Result<&mut AvroDecoder, String> {
        if self.inner.is_none() {
            self.inner = Some(self.build()?);
        }
        Ok(self.inner.as_mut().expect("just built"))
    }

    /// Decodes the bodies at `rows` in one go (they passed validation); any error leaves the
    /// decoder discarded so the next call starts clean.
    fn decode_rows(&mut self, raw: &[u8], spans: &[(usize, usize)], rows: &[usize]) -> Result<Vec<RecordBatch>, String> {
        let mut out = Vec::new();
        let limit = self.batch_bytes;
        let res = (|| {
            let mut decoded = Vec::new();
            let mut bytes = 0usize;
            for &i in rows {
                let (s, e) = spans[i];
                let d = self.decoder()?;
                if d.batch_is_full() || (bytes > 0 && bytes + (e - s) > limit) {
                    if let Some(b) = d.flush().map_err(|x| x.to_string())? {
                        decoded.push(b);
                    }
                    bytes = 0;
                }
                let d = self.decoder()?;
                let used = d.decode(&raw[s..e]).map_err(|x| x.to_string())?;
                if used != e - s {
                    return Err(format!("{} trailing bytes after the record (wrong schema?)", e - s - used));
                }
                bytes += e - s;
            }
            if let Some(b) = self.decoder()?.flush().map_err(|x| x.to_string())? {
                decoded.push(b);
            }
            for b in &decoded {
                let batch = convert::batch(&self.node, b, &self.target)?;
                if self.decimals && !batch.columns().iter().all(|c| convert::decimals_fit(c.as_ref())) {
                    return Err("a decimal beyond its precision".into());
                }
                out.push(batch);
            }
            Ok(())
        })();
        if res.is_err() {
            self.inner = None;
        }
        res.map(|()| out)
    }

    /// Decodes `n` bodies of `raw` (body i ends at `ends[i]`): (batches of the good rows, bad).
    pub fn decode(&mut self, raw: &[u8], ends: &[i64], n: usize) -> Result<(Vec<RecordBatch>, Bad), String> {
        let spans = bounds(ends, raw.len(), n)?;
        let mut bad: Bad = Vec::new();
        let mut good: Vec<usize> = Vec::with_capacity(n);
        for (i, &(s, e)) in spans.iter().enumerate() {
            match validate::structure_prefix(&self.node, self.walked, &raw[s..e]) {
                Ok(()) => good.push(i),
                // The walk skips UTF-8; the full check names the first fault, as fastavro does
                // (a bad string before a bad branch index is the string).
                Err(reason) => {
                    let first = validate::validate(&self.node, &raw[s..e]).err().unwrap_or(reason);
                    bad.push((i, validate::dead_letter_reason(&first)));
                }
            }
        }
        let batches = match self.decode_rows(raw, &spans, &good) {
            Ok(b) => b,
            Err(_) => {
                // Some body the structural walk let through still fails in arrow-avro (which
                // reports batch errors without a record number): find them one by one, with
                // fastavro's reason where the full check (UTF-8 included) has one.
                let mut still_good = Vec::with_capacity(good.len());
                for &i in &good {
                    let (s, e) = spans[i];
                    if let Err(reason) = validate::validate(&self.node, &raw[s..e]) {
                        bad.push((i, validate::dead_letter_reason(&reason)));
                        continue;
                    }
                    match self.decode_rows(raw, &spans, &[i]) {
                        Ok(_) => still_good.push(i),
                        Err(reason) => bad.push((i, format!("malformed Avro: {reason}"))),
                    }
                }
                bad.sort_by_key(|b| b.0);
                self.decode_rows(raw, &spans, &still_good)?
            }
        };
        let batches = if batches.is_empty() { vec![RecordBatch::new_empty(self.target.clone())] } else { batches };
        Ok((batches, bad))
    }
}

/// The bytes allocated for a batch's buffers: their capacities, not their lengths (arrow-rs's
/// `get_array_memory_size`). arrow-avro's builders start at 1,024 values a column and grow by
/// doubling, so a decoded column holds up to twice its length (several times over for a chunk of a
/// few rows); pyarrow sees only lengths (`get_total_buffer_size`), and the memory budget must count
/// what is really held.
pub fn held_bytes(batch: &RecordBatch) -> usize {
    batch.get_array_memory_size()
}

/// A decoder for one writer schema (built once, reused for every chunk).
#[pyclass(module = "consumer._native")]
struct Decoder {
    core: Core,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The bytes of a contiguous Python buffer (bytes, bytearray, memoryview, array).
fn contiguous_bytes(buf: &PyUntypedBuffer) -> PyResult<&[u8]> {
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err("buffer must be C-contiguous"));
    }
    let len = buf.len_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: the buffer is contiguous and `len` bytes long; the slice borrows `buf`, which keeps
    // the exporter's memory alive and unresizable (a bytearray with an export cannot resize).
    Ok(unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, len) })
}

#[pymethods]
impl Decoder {
    /// `Decoder(writer_schema_json, target_schema)`; raises `UnsupportedSchema` when the schema
    /// cannot be decoded natively (recursive types, a non-record top level, …).
    #[new]
    #[pyo3(signature = (schema_json, target, batch_bytes = BATCH_BYTES))]
    fn new(schema_json: &str, target: PyArrowType<Schema>, batch_bytes: usize) -> PyResult<Self> {
        let target = std::sync::Arc::new(target.0);
        match catch_unwind(AssertUnwindSafe(|| Core::new(schema_json, target))) {
            Ok(Ok(mut core)) => {
                core.batch_bytes = batch_bytes.max(1);
                Ok(Self { core })
            }
            Ok(Err(msg)) => Err(UnsupportedSchema::new_err(msg)),
            Err(p) => Err(UnsupportedSchema::new_err(format!(
                "unsupported by the native decoder (panic): {}",
                panic_message(p)
            ))),
        }
    }

    /// `decode(raw, ends, n) -> (list[pa.RecordBatch], list[(index, reason)], held bytes)`: the
    /// bytes the batches' buffers hold ([`held_bytes`]), which is what they cost in memory.
    fn decode<'py>(
        &mut self,
        py: Python<'py>,
        raw: &Bound<'py, PyAny>,
        ends: &Bound<'py, PyAny>,
        n: usize,
    ) -> PyResult<(Bound<'py, PyList>, Bad, usize)> {
        let raw_buf = PyUntypedBuffer::get(raw)?;
        let ends_buf = PyUntypedBuffer::get(ends)?;
        if ends_buf.item_size() != 8 {
            return Err(PyValueError::new_err("ends must hold 8-byte integers (array('q'))"));
        }
        let raw_s = contiguous_bytes(&raw_buf)?;
        // Copied (at most a chunk of offsets): no alignment assumption on the exporter's memory.
        let ends_v: Vec<i64> = contiguous_bytes(&ends_buf)?
            .chunks_exact(8)
            .map(|c| i64::from_ne_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let core = &mut self.core;
        let res = py.detach(|| catch_unwind(AssertUnwindSafe(|| core.decode(raw_s, &ends_v, n))));
        let (batches, bad) = match res {
            Ok(Ok(x)) => x,
            Ok(Err(msg)) => return Err(PyRuntimeError::new_err(format!("native decode failed: {msg}"))),
            Err(p) => {
                self.core.inner = None;
                return Err(PyRuntimeError::new_err(format!("native decoder panicked: {}", panic_message(p))));
            }
        };
        let held = batches.iter().map(held_bytes).sum();
        let list = PyList::empty(py);
        for b in batches {
            list.append(b.to_pyarrow(py)?)?;
        }
        Ok((list, bad, held))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add_function(wrap_pyfunction!(gather::gather, m)?)?;
    m.add_function(wrap_pyfunction!(gather::partition_runs, m)?)?;
    m.add_class::<exit_timer::ExitTimer>()?;
    m.add_function(wrap_pyfunction!(exit_timer::exit_after, m)?)?;
    m.add("UnsupportedSchema", m.py().get_type::<UnsupportedSchema>())?;
    m.add("BATCH_BYTES", BATCH_BYTES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field, TimeUnit};
    use std::sync::Arc;

    fn core() -> Core {
        let target = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, false),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        ]));
        Core::new(
            r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"},
               {"name":"t","type":["null",{"type":"long","logicalType":"timestamp-millis"}]}]}"#,
            target,
        )
        .unwrap()
    }

    #[test]
    fn good_and_bad_bodies() {
        let mut c = core();
        // "ab", ts 1 | trailing byte | "c", null | truncated
        let bodies: [&[u8]; 4] = [b"\x04ab\x02\x02", b"\x02a\x00\x00", b"\x02c\x00", b"\x06ab"];
        let mut raw = Vec::new();
        let mut ends = Vec::new();
        for b in bodies {
            raw.extend_from_slice(b);
            ends.push(raw.len() as i64);
        }
        let (batches, bad) = c.decode(&raw, &ends, 4).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].num_rows(), 2);
        assert_eq!(bad[0], (1, "malformed Avro: 1 trailing bytes after the record (wrong schema?)".to_string()));
        assert_eq!(bad[1].0, 3);
    }

    #[test]
    fn batches_split_by_body_bytes() {
        let mut c = core();
        c.batch_bytes = 10;
        let body: &[u8] = b"\x04ab\x02\x02"; // 5 bytes
        let raw = body.repeat(5);
        let ends: Vec<i64> = (1..=5).map(|i| 5 * i).collect();
        let (batches, bad) = c.decode(&raw, &ends, 5).unwrap();
        assert!(bad.is_empty());
        assert_eq!(batches.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(), vec![2, 2, 1]);
    }

    #[test]
    fn held_bytes_count_capacity_beyond_length() {
        let mut c = core();
        let body: &[u8] = b"\x04ab\x02\x02";
        let (batches, _) = c.decode(body, &[5], 1).unwrap();
        let held = held_bytes(&batches[0]);
        let len: usize = batches[0].columns().iter().map(|a| a.get_buffer_memory_size()).sum();
        // one row in builders sized for 1,024: far more held than the row's few bytes
        assert!(held >= 1024, "{held}");
        assert!(held >= len, "{held} < {len}");
    }

    #[test]
    fn bad_end_offsets_are_an_error() {
        let mut c = core();
        assert!(c.decode(b"\x02a\x00", &[5], 1).is_err());
    }
}
