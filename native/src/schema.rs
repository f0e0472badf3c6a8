//! The Avro writer schema as a resolved tree (named types inlined, recursion rejected), mirroring
//! `consumer/typemap.py`: which logical types count, and where. The same tree drives validation
//! (`validate.rs`), the schema handed to arrow-avro (`emit`) and the conversion to the final Arrow
//! types (`convert.rs`).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// One Avro type, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Boolean,
    /// `int`, with `date` / `time-millis` kept (they change the Arrow type only).
    Int(Option<&'static str>),
    /// `long`, with `timestamp-*`, `local-timestamp-*`, `time-micros` kept.
    Long(Option<&'static str>),
    Float,
    Double,
    /// `bytes`, optionally `decimal(precision, scale)`.
    Bytes(Option<(u8, i8)>),
    String,
    /// `string` + `uuid`: parsed to 16 bytes.
    Uuid,
    /// `fixed(size)`, optionally `decimal(precision, scale)` (a fixed(16) uuid is plain fixed).
    Fixed(usize, Option<(u8, i8)>),
    Enum(Vec<String>),
    Record(Vec<(String, Node)>),
    Array(Box<Node>),
    Map(Box<Node>),
    Union(Vec<Node>),
}

/// Why a schema cannot be decoded natively.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unsupported by the native decoder: {}", self.0)
    }
}

type R<T> = Result<T, Unsupported>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(Unsupported(msg.into()))
}

struct Resolver {
    named: HashMap<String, (Value, Option<String>)>,
    stack: Vec<String>,
}

fn fullname(obj: &Map<String, Value>, ns: Option<&str>) -> R<String> {
    let Some(name) = obj.get("name").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        return err("named Avro type without a name");
    };
    if name.contains('.') {
        return Ok(name.to_string());
    }
    let own = obj.get("namespace").and_then(Value::as_str);
    match own.or(ns) {
        Some(n) if !n.is_empty() => Ok(format!("{n}.{name}")),
        _ => Ok(name.to_string()),
    }
}

fn namespace_of(full: &str) -> Option<String> {
    full.rsplit_once('.').map(|(ns, _)| ns.to_string())
}

const PRIMS: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

impl Resolver {
    /// Registers every named type in the document (so forward references resolve).
    fn collect(&mut self, v: &Value, ns: Option<&str>) -> R<()> {
        match v {
            Value::Array(items) => {
                for i in items {
                    self.collect(i, ns)?;
                }
            }
            Value::Object(obj) => {
                let typ = obj.get("type");
                match typ.and_then(Value::as_str) {
                    Some("record" | "error" | "enum" | "fixed") => {
                        let full = fullname(obj, ns)?;
                        let inner = namespace_of(&full);
                        self.named.entry(full).or_insert((v.clone(), inner.clone()));
                        if let Some(Value::Array(fields)) = obj.get("fields") {
                            for f in fields {
                                if let Some(t) = f.get("type") {
                                    self.collect(t, inner.as_deref())?;
                                }
                            }
                        }
                    }
                    Some("array") => {
                        if let Some(i) = obj.get("items") {
                            self.collect(i, ns)?;
                        }
                    }
                    Some("map") => {
                        if let Some(i) = obj.get("values") {
                            self.collect(i, ns)?;
                        }
                    }
                    _ => {
                        if let Some(t @ (Value::Array(_) | Value::Object(_))) = typ {
                            self.collect(t, ns)?;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn lookup(&self, name: &str, ns: Option<&str>) -> R<(String, Value)> {
        let mut cands = Vec::new();
        if !name.contains('.') {
            if let Some(n) = ns.filter(|n| !n.is_empty()) {
                cands.push(format!("{n}.{name}"));
            }
        }
        cands.push(name.to_string());
        for c in cands {
            if let Some((v, _)) = self.named.get(&c) {
                return Ok((c, v.clone()));
            }
        }
        err(format!("unknown Avro type name {name:?}"))
    }

    fn node(&mut self, v: &Value, ns: Option<&str>) -> R<Node> {
        match v {
            Value::Array(branches) => {
                if branches.is_empty() {
                    return err("empty Avro union");
                }
                let mut out = Vec::with_capacity(branches.len());
                for b in branches {
                    if matches!(b, Value::Array(_)) {
                        return err("a union directly inside a union");
                    }
                    out.push(self.node(b, ns)?);
                }
                Ok(Node::Union(out))
            }
            Value::String(s) => match s.as_str() {
                "null" => Ok(Node::Null),
                "boolean" => Ok(Node::Boolean),
                "int" => Ok(Node::Int(None)),
                "long" => Ok(Node::Long(None)),
                "float" => Ok(Node::Float),
                "double" => Ok(Node::Double),
                "bytes" => Ok(Node::Bytes(None)),
                "string" => Ok(Node::String),
                name => {
                    let (full, def) = self.lookup(name, ns)?;
                    self.named_node(&def, &full)
                }
            },
            Value::Object(obj) => {
                let typ = obj.get("type");
                match typ {
                    Some(t @ (Value::Array(_) | Value::Object(_))) => self.node(t, ns),
                    Some(Value::String(t)) => match t.as_str() {
                        "record" | "error" | "enum" | "fixed" => {
                            let full = fullname(obj, ns)?;
                            self.named
                                .entry(full.clone())
                                .or_insert((v.clone(), namespace_of(&full)));
                            self.named_node(v, &full)
                        }
                        "array" => {
                            let items = obj.get("items").ok_or(Unsupported("array without items".into()))?;
                            Ok(Node::Array(Box::new(self.node(items, ns)?)))
                        }
                        "map" => {
                            let values = obj.get("values").ok_or(Unsupported("map without values".into()))?;
                            Ok(Node::Map(Box::new(self.node(values, ns)?)))
                        }
                        p if PRIMS.contains(&p) => {
                            let logical = obj.get("logicalType").and_then(Value::as_str);
                            primitive_with_logical(p, logical, obj)
                        }
                        name => {
                            let (full, def) = self.lookup(name, ns)?;
                            self.named_node(&def, &full)
                        }
                    },
                    _ => err(format!("invalid Avro schema: {v}")),
                }
            }
            _ => err(format!("invalid Avro schema: {v}")),
        }
    }

    fn named_node(&mut self, def: &Value, full: &str) -> R<Node> {
        if self.stack.iter().any(|s| s == full) {
            return err(format!("recursive Avro type {full:?}"));
        }
        let obj = def.as_object().ok_or(Unsupported("invalid named type".into()))?;
        let ns = namespace_of(full);
        match obj.get("type").and_then(Value::as_str) {
            Some("enum") => {
                let symbols = obj
                    .get("symbols")
                    .and_then(Value::as_array)
                    .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                Ok(Node::Enum(symbols))
            }
            Some("fixed") => {
                let size = obj
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or(Unsupported(format!("fixed {full:?} needs a non-negative size")))?
                    as usize;
                let logical = obj.get("logicalType").and_then(Value::as_str);
                match logical {
                    Some("decimal") => Ok(Node::Fixed(size, Some(decimal_params(obj)?))),
                    _ => Ok(Node::Fixed(size, None)),
                }
            }
            Some("record" | "error") => {
                let fields = obj
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or(Unsupported(format!("record {full:?} has no fields list")))?;
                if fields.is_empty() {
                    return err(format!("record {full:?} has no fields"));
                }
                self.stack.push(full.to_string());
                let mut out = Vec::with_capacity(fields.len());
                for f in fields {
                    let name = f
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or(Unsupported("field without a name".into()))?;
                    let t = f.get("type").ok_or(Unsupported("field without a type".into()))?;
                    let node = self.node(t, ns.as_deref());
                    match node {
                        Ok(n) => out.push((name.to_string(), n)),
                        Err(e) => {
                            self.stack.pop();
                            return Err(e);
                        }
                    }
                }
                self.stack.pop();
                Ok(Node::Record(out))
            }
            _ => err(format!("invalid named type {full:?}")),
        }
    }
}

fn decimal_params(obj: &Map<String, Value>) -> R<(u8, i8)> {
    let p = obj.get("precision").and_then(Value::as_i64);
    let s = obj.get("scale").map_or(Some(0), Value::as_i64);
    match (p, s) {
        (Some(p), Some(s)) if 0 < p && p <= 76 && 0 <= s && s <= p => Ok((p as u8, s as i8)),
        _ => err("decimal precision/scale outside 1..=76"),
    }
}

fn primitive_with_logical(p: &str, logical: Option<&str>, obj: &Map<String, Value>) -> R<Node> {
    let plain = match p {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "int" => Node::Int(None),
        "long" => Node::Long(None),
        "float" => Node::Float,
        "double" => Node::Double,
        "bytes" => Node::Bytes(None),
        _ => Node::String,
    };
    let Some(l) = logical else { return Ok(plain) };
    Ok(match (p, l) {
        ("int", "date") => Node::Int(Some("date")),
        ("int", "time-millis") => Node::Int(Some("time-millis")),
        ("long", "time-micros") => Node::Long(Some("time-micros")),
        ("long", "timestamp-millis") => Node::Long(Some("timestamp-millis")),
        ("long", "timestamp-micros") => Node::Long(Some("timestamp-micros")),
        ("long", "timestamp-nanos") => Node::Long(Some("timestamp-nanos")),
        ("long", "local-timestamp-millis") => Node::Long(Some("local-timestamp-millis")),
        ("long", "local-timestamp-micros") => Node::Long(Some("local-timestamp-micros")),
        ("long", "local-timestamp-nanos") => Node::Long(Some("local-timestamp-nanos")),
        ("string", "uuid") => Node::Uuid,
        ("bytes", "decimal") => Node::Bytes(Some(decimal_params(obj)?)),
        // typemap maps a "uuid" on any type that claims size 16; such schemas are odd enough
        // to leave to the reference path.
        (_, "uuid") if obj.get("size").and_then(Value::as_u64) == Some(16) => {
            return err("uuid logical type on a non-string, non-fixed type")
        }
        _ => plain, // unknown or misplaced logical type: the underlying type (Avro spec)
    })
}

/// Parses a writer schema (JSON text) into a resolved tree; the top level must be a record.
/// Whether `node` holds a decimal anywhere.
pub fn has_decimal(node: &Node) -> bool {
    match node {
        Node::Bytes(Some(_)) | Node::Fixed(_, Some(_)) => true,
        Node::Record(fields) => fields.iter().any(|(_, f)| has_decimal(f)),
        Node::Array(items) | Node::Map(items) => has_decimal(items),
        Node::Union(branches) => branches.iter().any(has_decimal),
        _ => false,
    }
}

pub fn parse(text: &str) -> R<Node> {
    let v: Value = serde_json::from_str(text).map_err(|e| Unsupported(format!("schema JSON: {e}")))?;
    let top = v.as_object().and_then(|o| o.get("type")).and_then(Value::as_str);
    if !matches!(top, Some("record" | "error")) {
        return err("top-level Avro schema must be a record");
    }
    let mut r = Resolver { named: HashMap::new(), stack: Vec::new() };
    r.collect(&v, None)?;
    let node = r.node(&v, None)?;
    check_supported(&node)?;
    Ok(node)
}

/// Shapes arrow-avro 60 cannot build: an array, map or record field of the bare `null` type (the
/// child field is non-nullable yet holds nulls).
fn check_supported(node: &Node) -> R<()> {
    match node {
        Node::Array(inner) | Node::Map(inner) => {
            if **inner == Node::Null {
                return err("an array or map of the null type");
            }
            check_supported(inner)
        }
        Node::Record(fields) => fields.iter().try_for_each(|(_, n)| {
            if *n == Node::Null {
                return err("a record field of the null type");
            }
            check_supported(n)
        }),
        Node::Union(branches) => branches.iter().try_for_each(check_supported),
        _ => Ok(()),
    }
}

/// The schema handed to arrow-avro: the same wire layout, with generated names (no clashes,
/// no name validation issues), no defaults and only the logical types we map.
pub fn emit(node: &Node) -> Value {
    let mut counter = 0usize;
    emit_inner(node, &mut counter)
}

fn gen(counter: &mut usize) -> String {
    *counter += 1;
    format!("n{}", *counter)
}

fn emit_inner(node: &Node, c: &mut usize) -> Value {
    match node {
        Node::Null => json!("null"),
        Node::Boolean => json!("boolean"),
        Node::Int(None) => json!("int"),
        Node::Int(Some(l)) => json!({"type": "int", "logicalType": l}),
        Node::Long(None) => json!("long"),
        Node::Long(Some(l)) => json!({"type": "long", "logicalType": l}),
        Node::Float => json!("float"),
        Node::Double => json!("double"),
        Node::Bytes(None) => json!("bytes"),
        Node::Bytes(Some((p, s))) => {
            json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s})
        }
        Node::String | Node::Uuid => json!("string"),
        Node::Fixed(size, None) => json!({"type": "fixed", "name": gen(c), "size": size}),
        Node::Fixed(size, Some((p, s))) => json!({
            "type": "fixed", "name": gen(c), "size": size,
            "logicalType": "decimal", "precision": p, "scale": s
        }),
        Node::Enum(symbols) => {
            let syms: Vec<String> = (0..symbols.len().max(1)).map(|i| format!("s{i}")).collect();
            json!({"type": "enum", "name": gen(c), "symbols": syms})
        }
        Node::Record(fields) => {
            let name = gen(c);
            let fs: Vec<Value> = fields
                .iter()
                .enumerate()
                .map(|(i, (_, n))| json!({"name": format!("f{i}"), "type": emit_inner(n, c)}))
                .collect();
            json!({"type": "record", "name": name, "fields": fs})
        }
        Node::Array(items) => json!({"type": "array", "items": emit_inner(items, c)}),
        Node::Map(values) => json!({"type": "map", "values": emit_inner(values, c)}),
        Node::Union(branches) => Value::Array(branches.iter().map(|b| emit_inner(b, c)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_named_types_and_logical_types() {
        let n = parse(
            r#"{"type":"record","name":"R","namespace":"a","fields":[
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"e2","type":"a.E"},
                {"name":"u","type":{"type":"string","logicalType":"uuid"}},
                {"name":"d","type":{"type":"int","logicalType":"duration"}},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#,
        )
        .unwrap();
        let Node::Record(fields) = n else { panic!() };
        assert_eq!(fields[1].1, Node::Enum(vec!["X".into(), "Y".into()]));
        assert_eq!(fields[2].1, Node::Uuid);
        assert_eq!(fields[3].1, Node::Int(None));
        assert_eq!(fields[4].1, Node::Long(Some("timestamp-millis")));
    }

    #[test]
    fn rejects_recursion_and_non_records() {
        let e = parse(
            r#"{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("recursive"), "{e}");
        assert!(parse(r#""long""#).is_err());
        assert!(parse(r#"{"type":"array","items":"long"}"#).is_err());
    }

    #[test]
    fn emitted_names_are_unique() {
        let n = parse(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"fixed","name":"F","size":2}},
                {"name":"b","type":"F"}]}"#,
        )
        .unwrap();
        let text = emit(&n).to_string();
        assert!(text.contains("\"n2\"") && text.contains("\"n3\""), "{text}");
    }
}
