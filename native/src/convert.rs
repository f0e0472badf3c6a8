//! arrow-avro's arrays → the exact Arrow types of `typemap.arrow_schema` (docs/types.md):
//! general unions become a struct of optional branches, enums get their real symbols,
//! string uuids become 16 bytes, timestamps get tz "UTC", and every field takes the target's
//! name, nullability and metadata (the `arrow.uuid` extension travels as field metadata).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{ArrowPrimitiveType, Decimal128Type, Decimal256Type, Int32Type};
use arrow_array::{
    make_array, Array, ArrayRef, BooleanArray, DictionaryArray, FixedSizeBinaryArray, ListArray,
    MapArray, NullArray, PrimitiveArray, RecordBatch, StringArray, StructArray,
};
use arrow_buffer::{ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_data::transform::MutableArrayData;
use arrow_data::ArrayData;
use arrow_schema::{DataType, SchemaRef};

use crate::logical::Kind;
use crate::schema::Node;
use crate::validate::parse_uuid;

type R<T> = Result<T, String>;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// Converts a batch decoded from the top-level record `node` into `target`.
pub fn batch(node: &Node, decoded: &RecordBatch, target: &SchemaRef) -> R<RecordBatch> {
    let Node::Record(fields) = node else { return Err("top level is not a record".into()) };
    if decoded.num_columns() != fields.len() || target.fields().len() != fields.len() {
        return Err("column count differs from the writer schema".into());
    }
    let cols = fields
        .iter()
        .zip(decoded.columns())
        .zip(target.fields())
        .map(|(((_, n), col), f)| array(n, col, f.data_type()))
        .collect::<R<Vec<_>>>()?;
    let opts = arrow_array::RecordBatchOptions::new().with_row_count(Some(decoded.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), cols, &opts).map_err(e)
}

/// Whether every decimal of `array` (at any depth) has at most its column's precision in digits.
/// arrow-avro stores a decimal of up to 16 (or 32) bytes whatever its precision, and Parquet
/// would then hold a wrong number (a fixed width for the precision, too narrow for the value):
/// a batch where one does not fit is decoded again record by record, and the full check
/// (`validate::decimal_overflow`) names it.
pub fn decimals_fit(array: &dyn Array) -> bool {
    match array.data_type() {
        DataType::Decimal128(p, _) => array.as_primitive::<Decimal128Type>().validate_decimal_precision(*p).is_ok(),
        DataType::Decimal256(p, _) => array.as_primitive::<Decimal256Type>().validate_decimal_precision(*p).is_ok(),
        DataType::Struct(_) => array.as_struct().columns().iter().all(|c| decimals_fit(c.as_ref())),
        DataType::List(_) => decimals_fit(array.as_list::<i32>().values().as_ref()),
        DataType::LargeList(_) => decimals_fit(array.as_list::<i64>().values().as_ref()),
        DataType::Map(_, _) => decimals_fit(array.as_map().entries()),
        DataType::Union(fields, _) => {
            let u = array.as_union();
            fields.iter().all(|(id, _)| decimals_fit(u.child(id).as_ref()))
        }
        _ => true,
    }
}

/// The rows of a dense union's child `j` spread over the union's length, null elsewhere.
///
/// Primitive, boolean and string children (a metric value's `long`, `double`, `boolean`,
/// `string`) are spread row by row into new buffers; branches of a busy union alternate every
/// row or two, where copying runs with `MutableArrayData` cost a call per run and per buffer.
/// Any other child is copied in runs of consecutive rows (a dense union's child rows are in row
/// order).
fn spread(child: &ArrayRef, type_ids: &[i8], offsets: &[i32], j: i8) -> R<ArrayRef> {
    let rows = Rows { type_ids, offsets, j };
    let child = child.as_ref();
    Ok(arrow_array::downcast_primitive_array!(
        child => Arc::new(spread_primitive(child, &rows)),
        DataType::Boolean => Arc::new(spread_boolean(child.as_boolean(), &rows)),
        DataType::Utf8 => Arc::new(spread_utf8(child.as_string::<i32>(), &rows)?),
        _ => spread_runs(child, &rows)?,
    ))
}

/// Where a dense union's child `j` has its rows: row `i` is the child's row `offsets[i]` when
/// `type_ids[i] == j`.
struct Rows<'a> {
    type_ids: &'a [i8],
    offsets: &'a [i32],
    j: i8,
}

impl Rows<'_> {
    /// For every union row: the child's row, or None where another branch holds the row.
    fn each(&self) -> impl Iterator<Item = Option<usize>> + '_ {
        self.type_ids
            .iter()
            .zip(self.offsets)
            .map(move |(&t, &o)| (t == self.j).then_some(o as usize))
    }

    /// A bitmap over the union's rows: set where this branch holds the row and `f` holds for the
    /// child's row. Built a word at a time (`collect_bool`), not bit by bit.
    fn bits(&self, f: impl Fn(usize) -> bool) -> BooleanBuffer {
        let (type_ids, offsets, j) = (self.type_ids, self.offsets, self.j);
        BooleanBuffer::collect_bool(type_ids.len(), |i| type_ids[i] == j && f(offsets[i] as usize))
    }

    /// Which union rows hold a valid value of `child`: the spread array's validity.
    fn valid(&self, child: &dyn Array) -> NullBuffer {
        NullBuffer::new(match child.logical_nulls() {
            None => type_id_is(self.type_ids, self.j),
            Some(nulls) => self.bits(|o| nulls.is_valid(o)),
        })
    }
}

/// A bitmap of the rows whose type id is `j`, built a 64-bit word at a time from fixed-size
/// chunks: about 8 instructions per row under callgrind, against about 30 appending bit by bit
/// (`NullBuffer::from_iter`).
fn type_id_is(type_ids: &[i8], j: i8) -> BooleanBuffer {
    fn word(ids: &[i8], j: i8) -> u64 {
        ids.iter().enumerate().fold(0u64, |w, (b, &t)| w | (u64::from(t == j) << b))
    }
    let chunks = type_ids.chunks_exact(64);
    let rest = word(chunks.remainder(), j);
    let mut words: Vec<u64> = chunks
        .map(|c| {
            let c: &[i8; 64] = c.try_into().expect("chunks_exact(64)");
            word(c, j)
        })
        .collect();
    words.push(rest);
    BooleanBuffer::new(Buffer::from_vec(words), 0, type_ids.len())
}

fn spread_primitive<T: ArrowPrimitiveType>(child: &PrimitiveArray<T>, rows: &Rows) -> PrimitiveArray<T> {
    let values = child.values();
    let mut out = vec![T::Native::default(); rows.type_ids.len()];
    for ((slot, &t), &o) in out.iter_mut().zip(rows.type_ids).zip(rows.offsets) {
        if t == rows.j {
            *slot = values[o as usize];
        }
    }
    PrimitiveArray::<T>::new(out.into(), Some(rows.valid(child))).with_data_type(child.data_type().clone())
}

fn spread_boolean(child: &BooleanArray, rows: &Rows) -> BooleanArray {
    let values = child.values();
    BooleanArray::new(rows.bits(|o| values.value(o)), Some(rows.valid(child)))
}

fn spread_utf8(child: &StringArray, rows: &Rows) -> R<StringArray> {
    let n = rows.type_ids.len();
    let mut ends = Vec::with_capacity(n + 1);
    ends.push(0i32);
    let mut bytes = Vec::with_capacity(child.value_data().len());
    for row in rows.each() {
        if let Some(o) = row {
            bytes.extend_from_slice(child.value(o).as_bytes());
        }
        ends.push(i32::try_from(bytes.len()).map_err(e)?);
    }
    // Whole values of a valid string array, copied in order: still valid UTF-8 on boundaries.
    let offsets = OffsetBuffer::new(ScalarBuffer::from(ends));
    // SAFETY: see above; the offsets are monotonic and end at `bytes.len()`.
    Ok(unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(bytes), Some(rows.valid(child))) })
}

fn spread_runs(child: &dyn Array, rows: &Rows) -> R<ArrayRef> {
    let (type_ids, offsets, j) = (rows.type_ids, rows.offsets, rows.j);
    let data = child.to_data();
    let mut out = MutableArrayData::new(vec![&data], true, type_ids.len());
    let mut i = 0;
    while i < type_ids.len() {
        let mine = type_ids[i] == j;
        let start = i;
        i += 1;
        if mine {
            while i < type_ids.len() && type_ids[i] == j && offsets[i] == offsets[i - 1] + 1 {
                i += 1;
            }
            let first = offsets[start] as usize;
            out.try_extend(0, first, first + (i - start)).map_err(e)?;
        } else {
            while i < type_ids.len() && type_ids[i] != j {
                i += 1;
            }
            out.try_extend_nulls(i - start).map_err(e)?;
        }
    }
    Ok(make_array(out.freeze()))
}

pub fn array(node: &Node, arr: &ArrayRef, target: &DataType) -> R<ArrayRef> {
    match node {
        Node::Record(fields) => {
            let DataType::Struct(tf) = target else { return Err(format!("record → {target}")) };
            let s = arr.as_struct_opt().ok_or("record is not a struct array")?;
            let cols = fields
                .iter()
                .zip(s.columns())
                .zip(tf.iter())
                .map(|(((_, n), c), f)| array(n, c, f.data_type()))
                .collect::<R<Vec<_>>>()?;
            if cols.len() != tf.len() {
                return Err("record field count differs".into());
            }
            Ok(Arc::new(StructArray::try_new_with_length(tf.clone(), cols, s.nulls().cloned(), s.len()).map_err(e)?))
        }
        Node::Array(items) => {
            let DataType::List(tf) = target else { return Err(format!("array → {target}")) };
            let l = arr.as_list_opt::<i32>().ok_or("array is not a list array")?;
            let values = array(items, l.values(), tf.data_type())?;
            Ok(Arc::new(
                ListArray::try_new(tf.clone(), l.offsets().clone(), values, l.nulls().cloned()).map_err(e)?,
            ))
        }
        Node::Map(values) => {
            let DataType::Map(entries_field, sorted) = target else {
                return Err(format!("map → {target}"));
            };
            let DataType::Struct(ef) = entries_field.data_type() else {
                return Err("map entries are not a struct".into());
            };
            let m = arr.as_map_opt().ok_or("map is not a map array")?;
            let vals = array(values, m.values(), ef[1].data_type())?;
            let keys = m.keys().clone();
            let entries = StructArray::try_new(ef.clone(), vec![keys, vals], None).map_err(e)?;
            Ok(Arc::new(
                MapArray::try_new(entries_field.clone(), m.offsets().clone(), entries, m.nulls().cloned(), *sorted)
                    .map_err(e)?,
            ))
        }
        Node::Union(branches) => union(branches, arr, target),
        Node::Enum(symbols) => {
            let d = arr.as_dictionary_opt::<Int32Type>().ok_or("enum is not a dictionary<int32>")?;
            let dict = Arc::new(arrow_array::StringArray::from(symbols.clone()));
            let keys = d.keys().clone();
            if symbols.is_empty() {
                // no symbol can be valid; only placeholders under null parents get here
                return Ok(arrow_array::new_null_array(target, arr.len()));
            }
            Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(keys, dict).map_err(e)?))
        }
        Node::Uuid => {
            let s = arr.as_string_opt::<i32>().ok_or("uuid is not a string array")?;
            let mut buf = vec![0u8; 16 * s.len()];
            for i in 0..s.len() {
                if s.is_valid(i) {
                    // Bodies were validated, so real values parse; a placeholder under a null
                    // parent ("") stays zero bytes.
                    if let Ok(b) = parse_uuid(s.value(i)) {
                        buf[16 * i..16 * i + 16].copy_from_slice(&b);
                    }
                }
            }
            let out = FixedSizeBinaryArray::try_new(16, Buffer::from_vec(buf), s.nulls().cloned()).map_err(e)?;
            if target == out.data_type() {
                Ok(Arc::new(out))
            } else {
                Err(format!("uuid → {target}"))
            }
        }
        Node::Null => Ok(Arc::new(NullArray::new(arr.len()))),
        Node::Int(Some(lt)) | Node::Long(Some(lt)) => match Kind::of(lt) {
            Some(k) => leaf(&conform(k, arr)?, target),
            None => leaf(arr, target),
        },
        _ => leaf(arr, target),
    }
}

/// Raw dates, times or timestamps as the reference path reads them ([`crate::logical`]): an
/// error for a value fastavro rejects (the decoder then checks the batch record by record and
/// names it), fastavro's time of day for one before midnight. Every real value lies inside
/// [`Kind::identity`] and passes through untouched after one comparison.
fn conform(k: Kind, arr: &ArrayRef) -> R<ArrayRef> {
    let data = arr.to_data();
    match data.data_type() {
        DataType::Date32 | DataType::Time32(_) => conform_values::<i32>(k, data),
        DataType::Time64(_) | DataType::Timestamp(_, _) => conform_values::<i64>(k, data),
        other => Err(format!("{other} for a date, time or timestamp")),
    }
}

fn conform_values<T>(k: Kind, data: ArrayData) -> R<ArrayRef>
where
    T: ArrowNativeType + Into<i64> + TryFrom<i64>,
{
    let (lo, hi) = k.identity();
    let values: &[T] = &data.buffer::<T>(0)[..data.len()];
    let outside = |i: usize| {
        let v: i64 = values[i].into();
        (v < lo || v > hi) && data.is_valid(i)
    };
    if !(0..data.len()).any(outside) {
        return Ok(make_array(data));
    }
    let mut out = values.to_vec();
    for (i, slot) in out.iter_mut().enumerate() {
        if outside(i) {
            let v = k.read(values[i].into())?;
            *slot = T::try_from(v).map_err(|_| format!("{v} does not fit its column"))?;
        }
    }
    let conformed = ArrayData::builder(data.data_type().clone())
        .len(data.len())
        .add_buffer(Buffer::from_vec(out))
        .nulls(data.nulls().cloned())
        .build()
        .map_err(e)?;
    Ok(make_array(conformed))
}

/// Same layout, other type parameters (timestamp time zone): reinterpret the buffers.
fn leaf(arr: &ArrayRef, target: &DataType) -> R<ArrayRef> {
    if arr.data_type() == target {
        return Ok(arr.clone());
    }
    let same_layout = matches!(
        (arr.data_type(), target),
        (DataType::Timestamp(a, _), DataType::Timestamp(b, _)) if a == b
    );
    if !same_layout {
        return Err(format!("cannot convert {} to {target}", arr.data_type()));
    }
    let data = arr.to_data().into_builder().data_type(target.clone()).build().map_err(e)?;
    Ok(make_array(data))
}

fn union(branches: &[Node], arr: &ArrayRef, target: &DataType) -> R<ArrayRef> {
    let non_null: Vec<usize> = (0..branches.len()).filter(|&i| branches[i] != Node::Null).collect();
    let Some(u) = arr.as_union_opt() else {
        // ["null", T] / [T, "null"]: arrow-avro already gives T with nulls.
        if branches.len() == 2 && non_null.len() == 1 {
            return array(&branches[non_null[0]], arr, target);
        }
        return Err(format!("union came back as {}", arr.data_type()));
    };
    let n = u.len();
    if non_null.is_empty() {
        return Ok(Arc::new(NullArray::new(n)));
    }
    let type_ids: &[i8] = u.type_ids();
    let offsets: &[i32] = u.offsets().ok_or("union is not dense")?;
    let convert_branch = |j: usize, t: &DataType| -> R<ArrayRef> {
        let child = array(&branches[j], u.child(j as i8), t)?;
        spread(&child, type_ids, offsets, j as i8)
    };
    let null_branch = branches.iter().position(|b| *b == Node::Null);
    let DataType::Struct(tf) = target else {
        // A one-branch union [T] (or ["null", T] written as a real union): T itself.
        if non_null.len() == 1 {
            return convert_branch(non_null[0], target);
        }
        return Err(format!("union → {target}"));
    };
    if tf.len() != non_null.len() {
        if non_null.len() == 1 {
            return convert_branch(non_null[0], target);
        }
        return Err("union branch count differs from the struct".into());
    }
    let cols = non_null
        .iter()
        .zip(tf.iter())
        .map(|(&j, f)| convert_branch(j, f.data_type()))
        .collect::<R<Vec<_>>>()?;
    let nulls = null_branch.map(|nb| NullBuffer::new(!&type_id_is(type_ids, nb as i8)));
    Ok(Arc::new(StructArray::try_new_with_length(tf.clone(), cols, nulls, n).map_err(e)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray, UnionArray};
    use arrow_buffer::ScalarBuffer;
    use arrow_schema::{Field, Fields, UnionFields};

    #[test]
    fn dense_union_becomes_struct_of_branches() {
        // ["null", "long", "string"] with rows: 7, null, "x", 8
        let fields = UnionFields::try_new(
            vec![0, 1, 2],
            vec![
                Field::new("null", DataType::Null, true),
                Field::new("long", DataType::Int64, false),
                Field::new("string", DataType::Utf8, false),
            ],
        )
        .unwrap();
        let children: Vec<ArrayRef> = vec![
            Arc::new(NullArray::new(1)),
            Arc::new(Int64Array::from(vec![7, 8])),
            Arc::new(StringArray::from(vec!["x"])),
        ];
        let u = UnionArray::try_new(
            fields,
            ScalarBuffer::from(vec![1i8, 0, 2, 1]),
            Some(ScalarBuffer::from(vec![0i32, 0, 0, 1])),
            children,
        )
        .unwrap();
        let target = DataType::Struct(Fields::from(vec![
            Field::new("long", DataType::Int64, true),
            Field::new("string", DataType::Utf8, true),
        ]));
        let node = Node::Union(vec![Node::Null, Node::Long(None), Node::String]);
        let out = array(&node, &(Arc::new(u) as ArrayRef), &target).unwrap();
        let s = out.as_struct();
        assert_eq!(s.len(), 4);
        assert!(s.is_null(1) && s.is_valid(0));
        let longs = s.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(longs.iter().collect::<Vec<_>>(), vec![Some(7), None, None, Some(8)]);
        let strs = s.column(1).as_string::<i32>();
        assert_eq!(strs.iter().collect::<Vec<_>>(), vec![None, None, Some("x"), None]);
    }

    #[test]
    fn string_uuid_becomes_16_bytes() {
        let arr: ArrayRef = Arc::new(StringArray::from(vec![Some("00000000-0000-0000-0000-000000000001"), None]));
        let out = array(&Node::Uuid, &arr, &DataType::FixedSizeBinary(16)).unwrap();
        let f = out.as_fixed_size_binary();
        assert_eq!(f.value(0)[15], 1);
        assert!(f.is_null(1));
    }

    #[test]
    fn each_spread_equals_copying_runs() {
        use arrow_array::{BooleanArray, Float64Array, Int64Array, TimestampMicrosecondArray};
        // Union rows over 3 branches, in an order with runs and alternations; child rows in order.
        let type_ids: Vec<i8> = vec![0, 0, 1, 2, 0, 1, 1, 1, 2, 0, 2, 2, 0];
        let mut counts = [0i32; 3];
        let offsets: Vec<i32> = type_ids
            .iter()
            .map(|&t| {
                counts[t as usize] += 1;
                counts[t as usize] - 1
            })
            .collect();
        let long: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4), Some(5)]));
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1), Some(2), None, Some(4), Some(5), Some(6)]).with_timezone("UTC"),
        );
        let dbl: ArrayRef = Arc::new(Float64Array::from(vec![1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]).slice(2, 4));
        let b: ArrayRef = Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true)]));
        let st: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some(""), None, Some("dé"), Some("xyz")]).slice(1, 4));
        for (child, j) in [(long, 0i8), (ts, 1), (dbl, 2), (b, 2), (st, 2)] {
            let rows = Rows { type_ids: &type_ids, offsets: &offsets, j };
            let want = spread_runs(child.as_ref(), &rows).unwrap();
            let got = spread(&child, &type_ids, &offsets, j).unwrap();
            got.to_data().validate_full().unwrap();
            assert_eq!(got.data_type(), child.data_type());
            assert_eq!(&got, &want, "{}", child.data_type());
        }
    }

    #[test]
    fn type_id_bitmaps_match_row_by_row_across_word_boundaries() {
        for n in [0usize, 1, 63, 64, 65, 127, 128, 129, 1000] {
            let type_ids: Vec<i8> = (0..n).map(|i| ((i * 7 + i / 5) % 4) as i8).collect();
            for j in 0..4i8 {
                let got = type_id_is(&type_ids, j);
                assert_eq!(got.len(), n);
                let want: Vec<bool> = type_ids.iter().map(|&t| t == j).collect();
                assert_eq!(got.iter().collect::<Vec<_>>(), want, "n={n} j={j}");
            }
        }
    }
}
