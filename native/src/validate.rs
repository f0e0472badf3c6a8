//! Walks one Avro body exactly as the writer schema says, without building anything, and says
//! why it is malformed. arrow-avro reports errors of a batch without a record number, accepts
//! trailing bytes and decodes an invalid branch index of a `["null", T]` union as a value, so
//! the hot path walks every body before arrow-avro sees it — as far as the last field holding
//! something arrow-avro would accept wrongly ([`structure_prefix`]); a batch that still fails is
//! checked record by record with the full [`validate`]. Reasons follow fastavro's wording (the
//! reference path) so dead letters read the same whichever decoder ran; a date, time or timestamp
//! fastavro cannot convert to a Python object is a fault here too ([`crate::logical`]).

use crate::logical::Kind;
use crate::schema::Node;

fn in_range(v: i64, (lo, hi): (i64, i64)) -> bool {
    lo <= v && v <= hi
}

pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// A negative index the full check let through as fastavro does (see [`index`]): reported
    /// only if nothing else is wrong with the body.
    wrapped: bool,
    /// A varint longer than 10 bytes (Avro's longest long), read wrapped as fastavro reads it
    /// (see `long_slow`): reported only if nothing else is wrong with the body.
    overlong: bool,
    /// The first decimal whose value its column cannot hold ([`decimal_overflow`]): fastavro reads
    /// it, and the conversion to Arrow refuses it, so it is reported only if the body is sound.
    decimal: Option<String>,
}

fn eof(msg: &str) -> String {
    format!("EOFError: {msg}")
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, wrapped: false, overlong: false, decimal: None }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Zig-zag varint; fastavro reads until a byte without the high bit (no length limit; past
    /// 64 bits, see `long_slow`).
    #[inline]
    fn long(&mut self) -> Result<i64, String> {
        match self.buf.get(self.pos) {
            None => Err(eof("")),
            Some(&b) if b & 0x80 == 0 => {
                // one byte (lengths, counts, indices and small values): the common case
                self.pos += 1;
                Ok(i64::from(b >> 1) ^ -i64::from(b & 1))
            }
            Some(_) => self.long_slow(),
        }
    }

    #[cold]
    fn long_slow(&mut self) -> Result<i64, String> {
        let mut acc: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err("IndexError: string index out of range".into());
            };
            self.pos += 1;
            // fastavro's C `n |= (b & 0x7F) << shift` on a uint64: past 64 bits the shift count
            // wraps (x86 takes it modulo 64), so an overlong varint reads as the same number
            // there, and whatever fails after it fails the same way on both paths
            acc |= u64::from(b & 0x7f).wrapping_shl(shift);
            self.overlong |= shift > 63;
            shift = shift.wrapping_add(7);
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok(((acc >> 1) as i64) ^ -((acc & 1) as i64))
    }

    #[inline]
    fn take(&mut self, n: i64) -> Result<&'a [u8], String> {
        let rem = self.remaining();
        if n < 0 || n as u64 > rem as u64 {
            return Err(eof(&format!("Expected {n} bytes, read {rem}")));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn fixed_width(&mut self, n: usize, what: &str) -> Result<(), String> {
        if self.remaining() < n {
            return Err(eof(&format!("cannot read {what} from <_io.BytesIO object>")));
        }
        self.pos += n;
        Ok(())
    }

    /// A string's bytes, checked as UTF-8 only when `UTF8` (see [`structure`]).
    fn string_bytes<const UTF8: bool>(&mut self) -> Result<&'a [u8], String> {
        let n = self.long()?;
        let bytes = self.take(n)?;
        if UTF8 {
            std::str::from_utf8(bytes).map_err(|e| utf8_reason(bytes, &e))?;
        }
        Ok(bytes)
    }

    /// A `uuid` string: the canonical forms are pure ASCII hex (valid UTF-8 by construction), so
    /// only the odd forms pay the UTF-8 check and the slow parse.
    fn uuid(&mut self) -> Result<(), String> {
        let n = self.long()?;
        let bytes = self.take(n)?;
        if parse_canonical_uuid(bytes).is_some() {
            return Ok(());
        }
        let s = std::str::from_utf8(bytes).map_err(|e| utf8_reason(bytes, &e))?;
        parse_uuid_slow(s).map(|_| ())
    }
}

/// Python's `UnicodeDecodeError` text for the first invalid sequence.
pub fn utf8_reason(bytes: &[u8], e: &std::str::Utf8Error) -> String {
    let pos = e.valid_up_to();
    let head = "UnicodeDecodeError: 'utf-8' codec can't decode";
    match e.error_len() {
        Some(1) => {
            let b = bytes[pos];
            let start_ok = matches!(b, 0xc2..=0xf4);
            let why = if start_ok { "invalid continuation byte" } else { "invalid start byte" };
            format!("{head} byte 0x{b:02x} in position {pos}: {why}")
        }
        Some(k) => format!(
            "{head} bytes in position {pos}-{}: invalid continuation byte",
            pos + k - 1
        ),
        None => {
            let last = bytes.len() - 1;
            if last == pos {
                format!("{head} byte 0x{:02x} in position {pos}: unexpected end of data", bytes[pos])
            } else {
                format!("{head} bytes in position {pos}-{last}: unexpected end of data")
            }
        }
    }
}

const BAD_UUID: &str = "ValueError: badly formed hexadecimal UUID string";

/// `uuid.UUID(s)`: removes "urn:" / "uuid:", strips braces and hyphens, needs 32 characters
/// that `int(..., 16)` accepts (ASCII whitespace, a sign, "0x" and single underscores included).
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    if let Some(b) = parse_canonical_uuid(s.as_bytes()) {
        return Ok(b);
    }
    parse_uuid_slow(s)
}

/// Hex digit values, 0xff for anything else.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Parses pairs of hex digits into `out`; false if any is not a hex digit.
fn hex_pairs(src: &[u8], out: &mut [u8]) -> bool {
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        let (h, l) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= (h | l) & 0xf0;
        *o = (h << 4) | (l & 0x0f);
    }
    bad == 0
}

/// The common forms without allocating: 8-4-4-4-12 hyphenated or 32 hex digits.
fn parse_canonical_uuid(s: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let ok = match s.len() {
        36 => {
            s[8] == b'-'
                && s[13] == b'-'
                && s[18] == b'-'
                && s[23] == b'-'
                && hex_pairs(&s[0..8], &mut out[0..4])
                && hex_pairs(&s[9..13], &mut out[4..6])
                && hex_pairs(&s[14..18], &mut out[6..8])
                && hex_pairs(&s[19..23], &mut out[8..10])
                && hex_pairs(&s[24..36], &mut out[10..16])
        }
        32 => hex_pairs(s, &mut out),
        _ => false,
    };
    ok.then_some(out)
}

/// Python's `repr()` of a string, as its error messages quote one: single quotes unless the
/// text holds one and no double quote; backslash escapes for quotes, `\\`, `\t`, `\n`, `\r`,
/// and `\xNN` / `\uNNNN` / `\UNNNNNNNN` for control characters and spaces other than ' '
/// (Python also escapes a few unassigned or format characters this does not know).
pub fn py_repr(t: &str) -> String {
    let quote = if t.contains('\'') && !t.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(t.len() + 2);
    out.push(quote);
    for c in t.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let v = c as u32;
                if v < 0x100 {
                    out.push_str(&format!("\\x{v:02x}"));
                } else if v < 0x10000 {
                    out.push_str(&format!("\\u{v:04x}"));
                } else {
                    out.push_str(&format!("\\U{v:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn parse_uuid_slow(s: &str) -> Result<[u8; 16], String> {
    let t = s.replace("urn:", "").replace("uuid:", "");
    let t = t.trim_matches(|c| c == '{' || c == '}').replace('-', "");
    if t.chars().count() != 32 {
        return Err(BAD_UUID.into());
    }
    let invalid = || format!("ValueError: invalid literal for int() with base 16: {}", py_repr(&t));
    let mut d = t.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\u{0b}');
    let mut negative = false;
    if let Some(rest) = d.strip_prefix('-') {
        negative = true;
        d = rest;
    } else if let Some(rest) = d.strip_prefix('+') {
        d = rest;
    }
    let mut prefixed = false;
    if let Some(rest) = d.strip_prefix("0x").or_else(|| d.strip_prefix("0X")) {
        d = rest;
        prefixed = true;
    }
    let mut v: u128 = 0;
    let mut digits = 0usize;
    let mut prev_underscore = !prefixed; // "0x_1" is allowed, "_1" is not
    for c in d.chars() {
        if c == '_' {
            if prev_underscore {
                return Err(invalid());
            }
            prev_underscore = true;
            continue;
        }
        let x = c.to_digit(16).ok_or_else(invalid)?;
        v = (v << 4) | u128::from(x); // at most 32 hex digits: never overflows
        digits += 1;
        prev_underscore = false;
    }
    if digits == 0 || (prev_underscore && d.ends_with('_')) {
        return Err(invalid());
    }
    if negative && v != 0 {
        return Err("ValueError: int is out of range (need a 128-bit value)".into());
    }
    Ok(v.to_be_bytes())
}

/// Checks that `body` is exactly one value of `node`; `Err(reason)` without the
/// "malformed Avro: " prefix.
pub fn validate(node: &Node, body: &[u8]) -> Result<(), String> {
    check::<true>(node, body)
}

/// [`validate`] without the UTF-8 check of plain strings and map keys: the hot path's walk.
///
/// arrow-avro builds every string column with `StringArray::try_new`, which checks the whole
/// column as UTF-8 at once (and that every value starts on a character boundary), so a body with
/// invalid UTF-8 that passes here still fails its batch; the decoder then runs [`validate`] on
/// the batch's rows to name it with fastavro's reason. Checking each string here as well would
/// read every string byte twice on the hot path. Uuid strings are still parsed (and checked)
/// here: their conversion cannot tell a bad value from a placeholder under a null parent.
pub fn structure(node: &Node, body: &[u8]) -> Result<(), String> {
    check::<false>(node, body)
}

/// Whether the hot path's walk must read `node` before arrow-avro decodes it: it holds what
/// arrow-avro accepts without an error (the branch index of a nullable union, a uuid string; see
/// [`structure`]), or an array whose items can take no bytes, where a corrupt count would make
/// the decoder loop without reading. Everything else arrow-avro checks itself (lengths, the end
/// of the body, the branch index of any other union, UTF-8 and enum indices when its batch is
/// finished; the conversion checks dates, times and timestamps), and a batch that fails is
/// checked again record by record with [`validate`].
pub fn must_walk(node: &Node) -> bool {
    match node {
        Node::Uuid => true,
        Node::Union(branches) => nullable_pair(branches) || branches.iter().any(must_walk),
        Node::Record(fields) => fields.iter().any(|(_, f)| must_walk(f)),
        Node::Array(items) => must_walk(items) || min_bytes(items) == 0,
        Node::Map(values) => must_walk(values),
        _ => false,
    }
}

/// A union of `null` and one other type. arrow-avro decodes it as a nullable column and reads
/// its branch index as "null or not": an index out of range silently becomes a value. Any other
/// union it decodes as a union, and it rejects an index out of range (or negative) itself.
fn nullable_pair(branches: &[Node]) -> bool {
    branches.len() == 2 && branches.iter().any(|b| matches!(b, Node::Null))
}

/// The fewest bytes a value of `node` takes.
fn min_bytes(node: &Node) -> usize {
    match node {
        Node::Null => 0,
        Node::Float => 4,
        Node::Double => 8,
        Node::Fixed(size, _) => *size,
        Node::Record(fields) => fields.iter().map(|(_, f)| min_bytes(f)).sum(),
        _ => 1, // a varint: a number, a length, a count, an index
    }
}

/// How many leading fields of a top-level record the hot path walks: up to the last one that
/// [`must_walk`]. On `page_view` that stops before the attributes map, most of the body.
pub fn walked_fields(node: &Node) -> usize {
    match node {
        Node::Record(fields) => fields.iter().rposition(|(_, f)| must_walk(f)).map_or(0, |i| i + 1),
        _ => 1,
    }
}

/// [`structure`] over the first `fields` fields of a top-level record ([`walked_fields`]). When
/// it stops before the end, the rest of the body, and that nothing follows it, are left to
/// arrow-avro (the decoder compares the bytes it used with the body's length).
pub fn structure_prefix(node: &Node, fields: usize, body: &[u8]) -> Result<(), String> {
    match node {
        Node::Record(all) if fields < all.len() => {
            let mut c = Cursor::new(body);
            for (_, f) in &all[..fields] {
                walk::<false>(f, &mut c)?;
            }
            Ok(())
        }
        _ => structure(node, body),
    }
}

fn check<const UTF8: bool>(node: &Node, body: &[u8]) -> Result<(), String> {
    let mut c = Cursor::new(body);
    walk::<UTF8>(node, &mut c)?;
    let rest = c.remaining();
    if rest != 0 {
        return Err(format!("{rest} trailing bytes after the record (wrong schema?)"));
    }
    if c.wrapped {
        return Err(OUT_OF_RANGE.into());
    }
    if c.overlong {
        return Err(OVERLONG.into());
    }
    if let Some(reason) = c.decimal {
        return Err(reason);
    }
    Ok(())
}

/// How a reason of [`validate`] reads in a dead letter: a fault of the bytes is malformed Avro; a
/// decimal its column cannot hold is what the reference path says of a value Arrow refuses.
pub fn dead_letter_reason(reason: &str) -> String {
    if reason.starts_with(UNREPRESENTABLE) {
        reason.to_string()
    } else {
        format!("malformed Avro: {reason}")
    }
}

/// The reference path's words for a value Arrow refuses (`consumer/arena.py`).
pub const UNREPRESENTABLE: &str = "value not representable in the column types: ";

/// Why the decimal of unscaled big-endian two's complement `bytes` does not fit a column of
/// `precision` and `scale`; None when it fits: at most `precision` digits.
///
/// Beyond that arrow-avro stores it anyway (or fails on more than 16 bytes), and Parquet would hold
/// a wrong number. fastavro reads it rounded to `precision` significant digits and pyarrow refuses
/// it, in words that change with the size of the value; both paths give this reason instead
/// (`consumer.typemap.decimal_refusal_reason`).
pub fn decimal_overflow(bytes: &[u8], precision: u8, scale: i8) -> Option<String> {
    if decimal_digits(&magnitude(bytes)).len() <= usize::from(precision) {
        return None;
    }
    Some(format!(
        "{UNREPRESENTABLE}a decimal with more than {precision} digits does not fit decimal({precision}, {scale})"
    ))
}

/// The magnitude of a big-endian two's complement integer, big-endian.
fn magnitude(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        for b in out.iter_mut() {
            *b = !*b;
        }
        for b in out.iter_mut().rev() {
            let (v, overflow) = b.overflowing_add(1);
            *b = v;
            if !overflow {
                break;
            }
        }
    }
    out
}

/// The decimal digits of a big-endian unsigned integer, most significant first (none for zero).
fn decimal_digits(be: &[u8]) -> Vec<u8> {
    let be = &be[be.iter().position(|&b| b != 0).unwrap_or(be.len())..];
    if be.len() <= 16 {
        let v = be.iter().fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
        return if v == 0 { Vec::new() } else { v.to_string().bytes().map(|c| c - b'0').collect() };
    }
    // base 10^9 by long division of 32-bit limbs (most significant first), least significant first
    let mut limbs: Vec<u32> = Vec::with_capacity(be.len() / 4 + 1);
    let head = be.len() % 4;
    if head > 0 {
        limbs.push(be[..head].iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)));
    }
    limbs.extend(be[head..].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])));
    let mut groups: Vec<u32> = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for l in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        groups.push(rem as u32);
        let zeros = limbs.iter().take_while(|&&l| l == 0).count();
        limbs.drain(..zeros);
    }
    let mut text = groups.last().map(|g| g.to_string()).unwrap_or_default();
    for g in groups.iter().rev().skip(1) {
        text.push_str(&format!("{g:09}"));
    }
    text.bytes().map(|c| c - b'0').collect()
}

const OUT_OF_RANGE: &str = "IndexError: list index out of range";
/// fastavro reads such a number wrapped and takes the record; arrow-avro cannot read it.
const OVERLONG: &str = "a varint longer than 10 bytes (no Avro long is; fastavro would read it wrapped)";

/// A union branch or enum symbol index. Outside `0..len` it is corrupt data and the record is
/// rejected. fastavro indexes a Python list with it, so a negative one wraps (-1: the last) and
/// fastavro reads on: the full check ([`validate`], which names the reason) does the same and
/// names whatever fastavro trips over first, the index itself only if nothing else is wrong.
fn index<const UTF8: bool>(c: &mut Cursor<'_>, len: usize) -> Result<usize, String> {
    let i = c.long()?;
    if i >= 0 && (i as u64) < len as u64 {
        return Ok(i as usize);
    }
    if UTF8 && i < 0 && i.unsigned_abs() <= len as u64 {
        c.wrapped = true;
        return Ok(len - i.unsigned_abs() as usize);
    }
    Err(OUT_OF_RANGE.into())
}

/// The blocks of an array or map, each item read by `each`, as fastavro reads them: item after
/// item, so a corrupt count fails where fastavro fails (at the first bad item, or at the end of
/// the data). Items taking at least `item_min_bytes` ≥ 1 bytes each end the loop by then; items
/// that can take no bytes would not, so a count of those far beyond the data is an EOF at once
/// (fastavro would build a list of that many items until memory runs out).
fn blocks(
    c: &mut Cursor<'_>,
    item_min_bytes: usize,
    mut each: impl FnMut(&mut Cursor<'_>) -> Result<(), String>,
) -> Result<(), String> {
    loop {
        let mut count = c.long()?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            c.long()?; // block size in bytes
            count = count.checked_neg().ok_or_else(|| eof(""))?;
        }
        if item_min_bytes == 0 && count > (1 << 28) && count as u64 > c.remaining() as u64 {
            return Err(eof(""));
        }
        for _ in 0..count {
            each(c)?;
        }
    }
}

fn walk<const UTF8: bool>(node: &Node, c: &mut Cursor<'_>) -> Result<(), String> {
    match node {
        Node::Null => Ok(()),
        Node::Boolean => c.fixed_width(1, "boolean"),
        Node::Int(None) | Node::Long(None) => c.long().map(|_| ()),
        Node::Int(Some(lt)) | Node::Long(Some(lt)) => {
            let v = c.long()?;
            match Kind::of(lt) {
                Some(k) if !in_range(v, k.identity()) => k.read(v).map(|_| ()),
                _ => Ok(()),
            }
        }
        Node::Float => c.fixed_width(4, "float"),
        Node::Double => c.fixed_width(8, "double"),
        Node::Bytes(dec) => {
            let n = c.long()?;
            let bytes = c.take(n)?;
            if let (true, Some((p, s)), None) = (UTF8, dec, &c.decimal) {
                c.decimal = decimal_overflow(bytes, *p, *s);
            }
            Ok(())
        }
        Node::String => c.string_bytes::<UTF8>().map(|_| ()),
        Node::Uuid => c.uuid(),
        Node::Fixed(size, dec) => {
            let bytes = c.take(*size as i64)?;
            if let (true, Some((p, s)), None) = (UTF8, dec, &c.decimal) {
                c.decimal = decimal_overflow(bytes, *p, *s);
            }
            Ok(())
        }
        Node::Enum(symbols) => index::<UTF8>(c, symbols.len()).map(|_| ()),
        Node::Record(fields) => {
            for (_, f) in fields {
                walk::<UTF8>(f, c)?;
            }
            Ok(())
        }
        Node::Array(items) => blocks(c, min_bytes(items), |c| walk::<UTF8>(items, c)),
        Node::Map(values) => blocks(c, 1, |c| {
            c.string_bytes::<UTF8>()?;
            walk::<UTF8>(values, c)
        }),
        Node::Union(branches) => {
            let i = index::<UTF8>(c, branches.len())?;
            walk::<UTF8>(&branches[i], c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse;

    fn rec(field: &str) -> Node {
        parse(&format!(r#"{{"type":"record","name":"R","fields":[{{"name":"f","type":{field}}}]}}"#)).unwrap()
    }

    #[test]
    fn decimals_fit_their_precision_in_digits() {
        let be = |v: i128| {
            let b = v.to_be_bytes();
            let skip = b.iter().zip(&b[1..]).take_while(|(x, y)| (**x == 0 && **y < 0x80) || (**x == 0xff && **y >= 0x80)).count();
            b[skip..].to_vec()
        };
        assert_eq!(decimal_overflow(&be(999_999_999_999), 12, 2), None);
        assert_eq!(decimal_overflow(&be(-999_999_999_999), 12, 2), None);
        assert_eq!(decimal_overflow(&be(0), 1, 0), None);
        let said = decimal_overflow(&be(1_000_000_000_000), 12, 2).unwrap();
        assert_eq!(said, "value not representable in the column types: a decimal with more than 12 digits does not fit decimal(12, 2)");
        assert!(decimal_overflow(&be(-1_000_000_000_000), 12, 2).is_some());
        assert!(decimal_overflow(&be(i128::MIN), 38, 0).is_some()); // 39 digits
        assert_eq!(decimal_overflow(&[0x80], 3, 0), None); // -128
        assert_eq!(decimal_overflow(&[0x80], 2, 0).map(|_| ()), Some(()));
        // 10^40 (17 bytes): past u128, by long division
        let mut ten40 = vec![0u8; 17];
        let mut v: Vec<u32> = vec![1];
        for _ in 0..40 {
            let mut carry = 0u64;
            for l in v.iter_mut() {
                let x = u64::from(*l) * 10 + carry;
                *l = x as u32;
                carry = x >> 32;
            }
            if carry > 0 {
                v.push(carry as u32);
            }
        }
        for (i, l) in v.iter().enumerate() {
            for (j, byte) in l.to_le_bytes().iter().enumerate() {
                if i * 4 + j < 17 {
                    ten40[16 - (i * 4 + j)] = *byte;
                }
            }
        }
        assert_eq!(decimal_digits(&ten40).len(), 41);
        assert!(decimal_overflow(&ten40, 40, 0).is_some());
        assert_eq!(decimal_overflow(&ten40, 41, 0), None);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let n = rec(r#""string""#);
        assert_eq!(validate(&n, b"\x04ab"), Ok(()));
        assert_eq!(
            validate(&n, b"\x04ab\x00").unwrap_err(),
            "1 trailing bytes after the record (wrong schema?)"
        );
        assert_eq!(validate(&n, b"\x06ab").unwrap_err(), "EOFError: Expected 3 bytes, read 2");
    }

    #[test]
    fn a_varint_past_64_bits_wraps_as_fastavro_reads_it() {
        let n = rec(r#""string""#);
        // ten continuation bytes, then 2 at bit 70, which wraps to bit 6: 128, a length of 64
        let mut body = vec![0x80u8; 10];
        body.extend_from_slice(b"\x02ab");
        assert_eq!(validate(&n, &body).unwrap_err(), "EOFError: Expected 64 bytes, read 2");
        let mut c = Cursor::new(&[0xffu8; 10][..]);
        assert!(c.long().is_err()); // never ends: fastavro's IndexError
        let mut c = Cursor::new(b"\x82\x80\x80\x80\x80\x80\x80\x80\x80\x80\x02");
        assert_eq!(c.long(), Ok(65));
        // a long field fastavro would take wrapped: a bad record here, named as such
        let l = rec(r#""long""#);
        let mut body = vec![0x80u8; 11];
        body.push(0x00);
        assert_eq!(validate(&l, &body).unwrap_err(), OVERLONG);
        assert_eq!(validate(&l, &body[1..]).unwrap_err(), OVERLONG); // eleven bytes
        assert_eq!(validate(&l, &body[2..]), Ok(())); // ten: the longest a long may take
    }

    #[test]
    fn union_and_enum_indices_are_checked() {
        let n = rec(r#"["null","string"]"#);
        assert_eq!(validate(&n, b"\x00"), Ok(()));
        assert!(validate(&n, b"\x0a\x02a").unwrap_err().starts_with("IndexError"));
        assert!(validate(&n, b"\x01\x02a").is_err());
        let e = rec(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        assert_eq!(validate(&e, b"\x02"), Ok(()));
        assert!(validate(&e, b"\x04").is_err());
    }

    #[test]
    fn utf8_errors_read_like_python() {
        let n = rec(r#""string""#);
        assert_eq!(
            validate(&n, b"\x02\x80").unwrap_err(),
            "UnicodeDecodeError: 'utf-8' codec can't decode byte 0x80 in position 0: invalid start byte"
        );
        assert_eq!(
            validate(&n, b"\x04\xe2\x82").unwrap_err(),
            "UnicodeDecodeError: 'utf-8' codec can't decode bytes in position 0-1: unexpected end of data"
        );
    }

    #[test]
    fn the_structural_walk_skips_utf8_but_not_structure_or_uuids() {
        let n = rec(r#"{"type":"map","values":"string"}"#);
        let bad_key: &[u8] = b"\x02\x02\xff\x02a\x00";
        assert!(validate(&n, bad_key).unwrap_err().starts_with("UnicodeDecodeError"));
        assert_eq!(structure(&n, bad_key), Ok(()));
        assert_eq!(
            structure(&n, b"\x02\x02\xff\x02a\x00\x00").unwrap_err(),
            "1 trailing bytes after the record (wrong schema?)"
        );
        let u = rec(r#"{"type":"string","logicalType":"uuid"}"#);
        assert!(structure(&u, b"\x08abcd").unwrap_err().starts_with("ValueError"));
        assert!(structure(&u, b"\x02\xff").unwrap_err().starts_with("UnicodeDecodeError"));
    }

    #[test]
    fn strings_are_quoted_like_python_repr() {
        assert_eq!(py_repr("ab"), "'ab'");
        assert_eq!(py_repr("a\0b\x7f"), "'a\\x00b\\x7f'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("'\""), "'\\'\"'");
        assert_eq!(py_repr("\\\t\u{a0}é\u{2028}"), "'\\\\\\t\\xa0é\\u2028'");
    }

    #[test]
    fn uuid_parsing_follows_python() {
        let want: [u8; 16] = [
            0xf8, 0x1d, 0x4f, 0xae, 0x7d, 0xec, 0x11, 0xd0, 0xa7, 0x65, 0x00, 0xa0, 0xc9, 0x1e,
            0x6b, 0xf6,
        ];
        for s in [
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "F81D4FAE7DEC11D0A76500A0C91E6BF6",
            "{f81d4fae-7dec-11d0-a765-00a0c91e6bf6}",
            "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "f-81d4fae7dec11d0a76500a0c91e6bf6",
        ] {
            assert_eq!(parse_uuid(s), Ok(want), "{s}");
        }
        assert_eq!(parse_uuid("abcd").unwrap_err(), BAD_UUID);
        assert!(parse_uuid("g81d4fae-7dec-11d0-a765-00a0c91e6bf6").is_err());
    }

    #[test]
    fn the_hot_walk_stops_after_the_last_field_arrow_avro_does_not_check() {
        let n = parse(
            r#"{"type":"record","name":"R","fields":[
                {"name":"u","type":{"type":"string","logicalType":"uuid"}},
                {"name":"n","type":["null","int"]},
                {"name":"m","type":{"type":"map","values":"string"}},
                {"name":"s","type":"string"}]}"#,
        )
        .unwrap();
        assert_eq!(walked_fields(&n), 2);
        let good: &[u8] = b"\x40f81d4fae7dec11d0a76500a0c91e6bf6\x02\x04\x00\x02a";
        assert_eq!(structure_prefix(&n, 2, good), Ok(()));
        // a bad branch index is caught; what follows the walked fields is left to arrow-avro
        let mut bad_branch = good.to_vec();
        bad_branch[33] = 0x04;
        assert!(structure_prefix(&n, 2, &bad_branch).unwrap_err().starts_with("IndexError"));
        assert_eq!(structure_prefix(&n, 2, &[good, b"\x00"].concat()), Ok(()));
        assert!(structure(&n, &[good, b"\x00"].concat()).is_err());
        // every field walked: the whole check, trailing bytes included
        assert!(structure_prefix(&n, 4, &[good, b"\x00"].concat()).is_err());
        for (schema, walked) in [
            (r#"[{"name":"a","type":"string"},{"name":"b","type":{"type":"map","values":"long"}}]"#, 0),
            (r#"[{"name":"a","type":{"type":"map","values":["null","long"]}},{"name":"b","type":"long"}]"#, 1),
            // a general union: arrow-avro checks its branch index, nothing to walk ...
            (r#"[{"name":"a","type":{"type":"map","values":["null","long","string"]}},{"name":"b","type":"long"}]"#, 0),
            (r#"[{"name":"a","type":["long","string"]},{"name":"b","type":"long"}]"#, 0),
            // ... unless a branch holds something that must be walked
            (r#"[{"name":"a","type":["long",{"type":"array","items":["null","int"]}]},{"name":"b","type":"long"}]"#, 1),
            (r#"[{"name":"a","type":"long"},{"name":"b","type":["long","null"]}]"#, 2),
        ] {
            let n = parse(&format!(r#"{{"type":"record","name":"R","fields":{schema}}}"#)).unwrap();
            assert_eq!(walked_fields(&n), walked, "{schema}");
        }
        // items of no bytes (the schema parser refuses them today): a corrupt count must be
        // walked, not handed to a decoder that would loop without reading
        assert!(must_walk(&Node::Array(Box::new(Node::Null))));
        assert!(!must_walk(&Node::Array(Box::new(Node::Long(None)))));
    }

    #[test]
    fn arrays_and_maps_with_negative_block_counts() {
        let a = rec(r#"{"type":"array","items":"long"}"#);
        // block of 2 items given as count -2 plus a byte size, then the end marker
        assert_eq!(validate(&a, b"\x03\x04\x02\x04\x00"), Ok(()));
        assert!(validate(&a, b"\x04\x02").is_err());
        let m = rec(r#"{"type":"map","values":"long"}"#);
        assert_eq!(validate(&m, b"\x02\x02a\x02\x00"), Ok(()));
    }
}
