//! The one mapping between Arrow types and PostgreSQL types.
//!
//! Data lives in Arrow; clients see PostgreSQL. Every place that names a column's type to a
//! client goes through here: the RowDescription OIDs of the wire protocol (`server::encode`),
//! `information_schema.columns.data_type` / `udt_name`, and `format_type`. Arrow has no JSON or
//! UUID type, so such columns are stored as `Utf8` with the PostgreSQL type recorded in the field
//! metadata under [`PG_TYPE_METADATA_KEY`]; the same key records `varchar`/`char` declarations so
//! `\d` shows what the user wrote.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field};
use pgwire::api::Type;
use postgres_types::Kind;

/// Field metadata key holding the PostgreSQL type name a column was declared with, where Arrow
/// alone cannot say it (`json`, `jsonb`, `uuid`, `varchar`, `bpchar`).
pub const PG_TYPE_METADATA_KEY: &str = "eddy.pg_type";

/// Metadata marking a field as holding values of the named PostgreSQL type.
pub fn pg_type_metadata(pg_type_name: &str) -> HashMap<String, String> {
    HashMap::from([(PG_TYPE_METADATA_KEY.to_string(), pg_type_name.to_string())])
}

/// The PostgreSQL type of a column, honouring the metadata override.
pub fn pg_type_of_field(field: &Field) -> Type {
    if let Some(name) = field.metadata().get(PG_TYPE_METADATA_KEY)
        && let Some(t) = type_by_name(name)
    {
        return t;
    }
    pg_type_of(field.data_type())
}

/// The PostgreSQL type that best represents an Arrow type.
pub fn pg_type_of(data_type: &DataType) -> Type {
    match data_type {
        DataType::Null => Type::TEXT,
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::UInt64 => Type::NUMERIC,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => Type::NUMERIC,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Interval(_) | DataType::Duration(_) => Type::INTERVAL,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => array_type_of(&pg_type_of_field(f)),
        DataType::Dictionary(_, value) => pg_type_of(value),
        DataType::RunEndEncoded(_, value) => pg_type_of(value.data_type()),
        DataType::Struct(_) | DataType::Map(_, _) | DataType::Union(_, _) => Type::JSON,
    }
}

/// The array type whose elements are `element`; `text[]` where PostgreSQL has none.
pub fn array_type_of(element: &Type) -> Type {
    match *element {
        Type::BOOL => Type::BOOL_ARRAY,
        Type::INT2 => Type::INT2_ARRAY,
        Type::INT4 => Type::INT4_ARRAY,
        Type::INT8 => Type::INT8_ARRAY,
        Type::FLOAT4 => Type::FLOAT4_ARRAY,
        Type::FLOAT8 => Type::FLOAT8_ARRAY,
        Type::NUMERIC => Type::NUMERIC_ARRAY,
        Type::VARCHAR => Type::VARCHAR_ARRAY,
        Type::BPCHAR => Type::BPCHAR_ARRAY,
        Type::BYTEA => Type::BYTEA_ARRAY,
        Type::DATE => Type::DATE_ARRAY,
        Type::TIME => Type::TIME_ARRAY,
        Type::TIMESTAMP => Type::TIMESTAMP_ARRAY,
        Type::TIMESTAMPTZ => Type::TIMESTAMPTZ_ARRAY,
        Type::INTERVAL => Type::INTERVAL_ARRAY,
        Type::UUID => Type::UUID_ARRAY,
        Type::JSON => Type::JSON_ARRAY,
        Type::JSONB => Type::JSONB_ARRAY,
        _ => Type::TEXT_ARRAY,
    }
}

/// The element type of an array type, if `t` is one.
pub fn element_type_of(t: &Type) -> Option<Type> {
    match t.kind() {
        Kind::Array(elem) => Some(elem.clone()),
        _ => None,
    }
}

/// Look a type up by the names users and clients write (`int4`, `integer`, `json`, ...).
pub fn type_by_name(name: &str) -> Option<Type> {
    let lower = name.trim().to_ascii_lowercase();
    if let Some(t) = scalar_type_by_name(&lower) {
        return Some(t);
    }
    // Arrays are spelt `text[]` in SQL and `_text` in pg_type; there is one level of them.
    let element = lower
        .strip_suffix("[]")
        .or_else(|| lower.strip_prefix('_'))?;
    scalar_type_by_name(element).map(|e| array_type_of(&e))
}

/// A scalar type by its lowercase name.
fn scalar_type_by_name(lower: &str) -> Option<Type> {
    let t = match lower {
        "bool" | "boolean" => Type::BOOL,
        "int2" | "smallint" => Type::INT2,
        "int4" | "int" | "integer" => Type::INT4,
        "int8" | "bigint" => Type::INT8,
        "float4" | "real" => Type::FLOAT4,
        "float8" | "double precision" | "float" => Type::FLOAT8,
        "numeric" | "decimal" => Type::NUMERIC,
        "text" => Type::TEXT,
        "varchar" | "character varying" => Type::VARCHAR,
        "bpchar" | "char" | "character" => Type::BPCHAR,
        "name" => Type::NAME,
        "bytea" => Type::BYTEA,
        "date" => Type::DATE,
        "time" | "time without time zone" => Type::TIME,
        "timestamp" | "timestamp without time zone" => Type::TIMESTAMP,
        "timestamptz" | "timestamp with time zone" => Type::TIMESTAMPTZ,
        "interval" => Type::INTERVAL,
        "uuid" => Type::UUID,
        "json" => Type::JSON,
        "jsonb" => Type::JSONB,
        "oid" => Type::OID,
        _ => return None,
    };
    Some(t)
}

/// `information_schema.columns.data_type`: the SQL-standard spelling PostgreSQL reports, which
/// Grafana's query builder keys on (`integer`, `double precision`, `timestamp with time zone`).
pub fn sql_standard_name(t: &Type) -> &'static str {
    match *t {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::NUMERIC => "numeric",
        Type::TEXT => "text",
        Type::VARCHAR => "character varying",
        Type::BPCHAR => "character",
        Type::NAME => "name",
        Type::BYTEA => "bytea",
        Type::DATE => "date",
        Type::TIME => "time without time zone",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::INTERVAL => "interval",
        Type::UUID => "uuid",
        Type::JSON => "json",
        Type::JSONB => "jsonb",
        Type::OID => "oid",
        _ if element_type_of(t).is_some() => "ARRAY",
        _ => "USER-DEFINED",
    }
}

/// A type as PostgreSQL's `format_type` shows it: `integer`, `timestamp with time zone`,
/// `text[]`.
pub fn format_type(t: &Type) -> String {
    match (element_type_of(t), sql_standard_name(t)) {
        (Some(element), _) => format!("{}[]", format_type(&element)),
        (None, "USER-DEFINED") => t.name().to_string(),
        (None, name) => name.to_string(),
    }
}

/// `pg_type.typlen`: fixed width in bytes, or -1 for variable-length types.
pub fn type_len(t: &Type) -> i16 {
    match *t {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::FLOAT4 | Type::DATE | Type::OID => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => 8,
        Type::INTERVAL | Type::UUID => 16,
        Type::NAME => 64,
        _ => -1,
    }
}

/// `byteain`: `\x` followed by hex pairs, or the escape format (`\\`, `\ooo` octal).
pub fn parse_bytea(s: &str) -> Option<Vec<u8>> {
    if let Some(hex) = s.strip_prefix("\\x").or_else(|| s.strip_prefix("\\X")) {
        let mut digits = hex.bytes().filter(|b| !b.is_ascii_whitespace());
        let mut out = Vec::with_capacity(hex.len() / 2);
        while let Some(hi) = digits.next() {
            out.push((hex_val(hi)? << 4) | hex_val(digits.next()?)?);
        }
        return Some(out);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b.get(i + 1..i + 4)?;
            if !(b'0'..=b'3').contains(&oct[0])
                || !oct[1..].iter().all(|d| (b'0'..=b'7').contains(d))
            {
                return None;
            }
            out.push(oct.iter().fold(0u8, |acc, d| (acc << 3) | (d - b'0')));
            i += 4;
        }
    }
    Some(out)
}

/// The type modifier PostgreSQL gives a column of this Arrow type: `numeric(p, s)` is
/// `((p << 16) | s) + VARHDRSZ`; -1 (none) for everything else.
pub fn type_modifier(data_type: &DataType) -> i32 {
    match data_type {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s)
            if *s >= 0 =>
        {
            ((i32::from(*p) << 16) | i32::from(*s)) + 4
        }
        _ => -1,
    }
}

/// Bytes as lowercase hexadecimal digits, two per byte.
pub fn hex_digits(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The value of one hexadecimal digit.
pub fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The 16 bytes of a UUID in any form PostgreSQL accepts (hyphens anywhere between digit
/// pairs, optional braces, either case).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let mut bytes = [0u8; 16];
    let mut hex = s.bytes().filter(|&b| b != b'-');
    for byte in &mut bytes {
        *byte = (hex_val(hex.next()?)? << 4) | hex_val(hex.next()?)?;
    }
    (hex.next().is_none() && !s.starts_with('-') && !s.ends_with('-') && !s.contains("--"))
        .then_some(bytes)
}

/// Canonical lowercase hyphenated UUID text.
pub fn format_uuid(b: &[u8; 16]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// The stored text of a value of a type Arrow keeps as text (uuid, json, jsonb), read from
/// PostgreSQL input text: a UUID in canonical form, JSON as given once it parses. `None` when
/// the text is not a value of the type (or the type is not text-backed).
pub fn text_backed_input(ty: &Type, text: &str) -> Option<String> {
    match *ty {
        Type::UUID => parse_uuid(text).map(|b| format_uuid(&b)),
        Type::JSON | Type::JSONB => serde_json::from_str::<serde::de::IgnoredAny>(text)
            .ok()
            .map(|_| text.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_map_to_array_oids() {
        let list = DataType::List(Field::new("item", DataType::Int64, true).into());
        assert_eq!(pg_type_of(&list), Type::INT8_ARRAY);
        assert_eq!(element_type_of(&Type::INT8_ARRAY), Some(Type::INT8));
        assert_eq!(sql_standard_name(&Type::INT8_ARRAY), "ARRAY");
    }

    #[test]
    fn metadata_overrides_storage_type() {
        let f = Field::new("doc", DataType::Utf8, true).with_metadata(pg_type_metadata("jsonb"));
        assert_eq!(pg_type_of_field(&f), Type::JSONB);
        assert_eq!(sql_standard_name(&pg_type_of_field(&f)), "jsonb");
    }

    #[test]
    fn names_round_trip() {
        for t in [
            Type::INT4,
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::TEXT_ARRAY,
        ] {
            assert_eq!(type_by_name(t.name()), Some(t.clone()));
        }
        assert_eq!(type_by_name("double precision"), Some(Type::FLOAT8));
    }
}
