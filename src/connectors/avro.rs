//! Avro message values (`format = 'avro'`) decoded with the schema the statement gives.
//!
//! ```text
//!  message value ──framing──► 0x00 + local schema id + Avro body ──arrow-avro Decoder──►
//!     Arrow batch in the Avro schema's columns ──by field name, cast──► the stream's columns
//! ```
//!
//! Kafka's Avro messages come in two shapes: Confluent's wire format (magic byte 0, a 4-byte
//! schema id from a schema registry, then the Avro body), which Confluent's serializers and
//! most Kafka tooling write, and bare Avro bodies. There is no schema registry here: the writer
//! schema is `avro.schema`, and `avro.framing = 'confluent'` (the default) or `'none'` says
//! which shape the values have. Either way the value is re-framed with one local id and fed to
//! arrow-avro's streaming decoder, which decodes straight into Arrow arrays (no per-value
//! intermediate). `avro.schema_id` additionally refuses Confluent messages written under
//! another registry id, which would otherwise be read with the wrong schema.
//!
//! Avro fields fill the stream's columns of the same name (exactly, else ignoring case). Only
//! casts that lose nothing are allowed, checked when the stream is created ([`lossless`]:
//! widening numbers, timestamps into timestamps as fine or finer, text parsed into anything);
//! a value that still does not fit (text that does not parse) is an error, so its record
//! becomes a dead letter, never a silent NULL or a rounded number.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

/// The id the decoder knows the statement's schema by (any value would do: it never leaves
/// this process).
const LOCAL_ID: u32 = 1;
/// Confluent's wire format: magic byte 0, then a 4-byte big-endian schema id.
const CONFLUENT_HEADER: usize = 5;

/// How a message value carries its Avro body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Confluent's wire format; `Some(id)` accepts only that schema id.
    Confluent(Option<u32>),
    /// The bare Avro body.
    None,
}

/// The Avro decoding of one Kafka source: the statement's schema and which of its fields fill
/// which stream columns.
#[derive(Debug, Clone)]
pub struct AvroValues {
    schema_json: String,
    framing: Framing,
    /// The stream's schema, and for each of its columns the Avro field (index into the
    /// decoder's Arrow schema) that fills it; None leaves the column NULL (metadata columns,
    /// or no such field).
    stream: SchemaRef,
    sources: Vec<Option<usize>>,
}

fn invalid(message: String) -> Error {
    Error::InvalidValue(message)
}

impl AvroValues {
    /// From the stream's options: `avro.schema` (required), `avro.framing`, `avro.schema_id`.
    /// `payload` names the columns the value fills (the others are INCLUDE columns).
    pub fn new(
        options: &BTreeMap<String, String>,
        stream: &SchemaRef,
        payload: &[String],
    ) -> Result<AvroValues> {
        let schema_json = options
            .get("avro.schema")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                invalid(
                    "format 'avro' needs option \"avro.schema\": the writer schema as JSON, \
                     e.g. avro.schema = '{\"type\": \"record\", \"name\": \"payment\", \
                     \"fields\": [{\"name\": \"id\", \"type\": \"long\"}]}'"
                        .into(),
                )
            })?;
        let schema_id = match options.get("avro.schema_id") {
            None => None,
            Some(text) => Some(text.trim().parse::<u32>().map_err(|_| {
                invalid(format!(
                    "invalid value for stream option \"avro.schema_id\": \"{text}\" (a schema \
                     registry id: a whole number from 0 to 4294967295)"
                ))
            })?),
        };
        let framing = match options
            .get("avro.framing")
            .map(|f| f.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("confluent") => Framing::Confluent(schema_id),
            Some("none") if schema_id.is_none() => Framing::None,
            Some("none") => {
                return Err(invalid(
                    "avro.schema_id needs avro.framing = 'confluent' (bare Avro values carry no \
                     schema id)"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(invalid(format!(
                    "invalid value for stream option \"avro.framing\": \"{other}\" (confluent \
                     or none)"
                )));
            }
        };
        let mut values = AvroValues {
            schema_json,
            framing,
            stream: SchemaRef::clone(stream),
            sources: vec![None; stream.fields().len()],
        };
        let avro = values.decoder(1)?.schema();
        for (index, column) in stream.fields().iter().enumerate() {
            if !payload.contains(column.name()) {
                continue;
            }
            let field = avro.index_of(column.name()).ok().or_else(|| {
                avro.fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(column.name()))
            });
            let Some(field) = field else { continue };
            let from = avro.field(field).data_type();
            if !lossless(from, column.data_type()) {
                return Err(Error::DatatypeMismatch(format!(
                    "Avro field \"{}\" ({from}) cannot fill column \"{}\" of type {} without \
                     loss",
                    avro.field(field).name(),
                    column.name(),
                    column.data_type()
                )));
            }
            values.sources[index] = Some(field);
        }
        Ok(values)
    }

    /// A decoder for up to `rows` values.
    fn decoder(&self, rows: usize) -> Result<Decoder> {
        let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
        let bad_schema = |e: &dyn std::fmt::Display| invalid(format!("avro.schema: {e}"));
        store
            .set(
                Fingerprint::Id(LOCAL_ID),
                AvroSchema::new(self.schema_json.clone()),
            )
            .map_err(|e| bad_schema(&e))?;
        ReaderBuilder::new()
            .with_writer_schema_store(store)
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| bad_schema(&e))
    }

    /// Decode `values` (all or nothing) into one batch of the stream's columns; INCLUDE
    /// columns come back NULL for the caller to fill.
    pub fn decode(&self, values: &[&[u8]]) -> Result<RecordBatch> {
        let mut decoder = self.decoder(values.len())?;
        let mut framed = Vec::new();
        for value in values {
            framed.clear();
            framed.push(0);
            framed.extend_from_slice(&LOCAL_ID.to_be_bytes());
            framed.extend_from_slice(self.body(value)?);
            let room = decoder.capacity();
            let consumed = decoder
                .decode(&framed)
                .map_err(|e| invalid(format!("not a value of avro.schema: {e}")))?;
            // Fewer bytes taken: the body ended inside the record (the decoder waits for more);
            // no row taken: the value had no body.
            if consumed != framed.len() || decoder.capacity() + 1 != room {
                return Err(invalid(format!(
                    "not a value of avro.schema: {} of the value's {} bytes make no whole record",
                    framed.len() - consumed,
                    value.len()
                )));
            }
        }
        let decoded = decoder
            .flush()
            .map_err(|e| invalid(format!("not a value of avro.schema: {e}")))?;
        let rows = decoded.as_ref().map_or(0, RecordBatch::num_rows);
        if rows != values.len() {
            return Err(invalid(format!(
                "{} Avro values decoded into {rows} rows",
                values.len()
            )));
        }
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let columns = self
            .stream
            .fields()
            .iter()
            .zip(&self.sources)
            .map(|(column, source)| match (source, &decoded) {
                (Some(field), Some(batch)) => {
                    cast_with_options(batch.column(*field), column.data_type(), &strict).map_err(
                        |e| invalid(format!("Avro field for column \"{}\": {e}", column.name())),
                    )
                }
                _ => Ok(new_null_array(column.data_type(), rows)),
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.stream),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// The Avro body of a message value, checked against the framing.
    fn body<'a>(&self, value: &'a [u8]) -> Result<&'a [u8]> {
        match self.framing {
            Framing::None => Ok(value),
            Framing::Confluent(expected) => {
                if value.len() < CONFLUENT_HEADER || value[0] != 0 {
                    return Err(invalid(
                        "not in Confluent's Avro wire format (magic byte 0 and a 4-byte schema \
                         id); for bare Avro values set avro.framing = 'none'"
                            .into(),
                    ));
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                if let Some(expected) = expected.filter(|e| *e != id) {
                    return Err(invalid(format!(
                        "written with schema id {id}; this stream reads schema id {expected} \
                         (avro.schema_id)"
                    )));
                }
                Ok(&value[CONFLUENT_HEADER..])
            }
        }
    }
}

/// Whether every value of type `from` fits a column of type `to` exactly: the same type,
/// wider integers or floats, timestamps and dates into timestamps at least as fine, decimals
/// with room for the digits, bytes into bytes; text is parsed (a value that does not parse
/// is an error, not a loss).
fn lossless(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    fn rank(unit: &TimeUnit) -> u8 {
        match unit {
            TimeUnit::Second => 0,
            TimeUnit::Millisecond => 1,
            TimeUnit::Microsecond => 2,
            TimeUnit::Nanosecond => 3,
        }
    }
    if from == to {
        return true;
    }
    match (from, to) {
        (Utf8 | LargeUtf8 | Utf8View, _) | (_, Utf8 | LargeUtf8 | Utf8View) => {
            can_cast_types(from, to)
        }
        (Int8, Int16 | Int32 | Int64 | Float32 | Float64)
        | (Int16, Int32 | Int64 | Float32 | Float64)
        | (Int32, Int64 | Float64)
        | (Float32, Float64)
        | (Binary | LargeBinary | FixedSizeBinary(_), Binary | LargeBinary | BinaryView)
        | (Date32, Date64) => true,
        (Timestamp(a, _), Timestamp(b, _)) => rank(b) >= rank(a),
        (Date32 | Date64, Timestamp(..)) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && i16::from(*p2) - i16::from(*s2) >= i16::from(*p1) - i16::from(*s1)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};

    const SCHEMA: &str = r#"{"type": "record", "name": "p", "fields": [
        {"name": "Id", "type": "long"}, {"name": "name", "type": ["null", "string"]}]}"#;

    fn stream() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("off", DataType::Int64, true),
        ]))
    }

    fn values(extra: &[(&str, &str)]) -> Result<AvroValues> {
        let mut options: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        options
            .entry("avro.schema".into())
            .or_insert_with(|| SCHEMA.into());
        AvroValues::new(&options, &stream(), &["id".into(), "name".into()])
    }

    /// {Id: id, name: "ab"} as Avro binary: zig-zag varints, union branch 1, length-prefixed.
    fn body(id: u8) -> Vec<u8> {
        vec![id * 2, 2, 4, b'a', b'b']
    }

    fn confluent(id: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn framed_and_bare_values_fill_columns_by_field_name() {
        let framed = values(&[]).unwrap();
        let (a, b) = (confluent(42, &body(3)), confluent(42, &body(5)));
        let batch = framed.decode(&[&a, &b]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), [3, 5]);
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "ab");
        assert_eq!(batch.column(2).null_count(), 2);
        let bare = values(&[("avro.framing", "none")]).unwrap();
        assert_eq!(bare.decode(&[&body(7)]).unwrap().num_rows(), 1);
    }

    #[test]
    fn bad_values_are_errors() {
        let framed = values(&[("avro.schema_id", "42")]).unwrap();
        let truncated = confluent(42, &body(3)[..3]);
        let error = framed.decode(&[&truncated]).unwrap_err().to_string();
        assert!(error.contains("no whole record"), "{error}");
        let error = framed.decode(&[&body(3)]).unwrap_err().to_string();
        assert!(error.contains("Confluent"), "{error}");
        let error = framed
            .decode(&[&confluent(7, &body(3))])
            .unwrap_err()
            .to_string();
        assert!(error.contains("schema id 7"), "{error}");
        // Trailing bytes after the record.
        let mut long = confluent(42, &body(3));
        long.push(0);
        assert!(framed.decode(&[&long]).is_err());
    }

    #[test]
    fn options_are_checked() {
        let no_schema = AvroValues::new(&BTreeMap::new(), &stream(), &[]);
        assert!(no_schema.unwrap_err().to_string().contains("avro.schema"));
        assert!(values(&[("avro.schema", "{not json")]).is_err());
        assert!(values(&[("avro.framing", "snappy")]).is_err());
        assert!(values(&[("avro.schema_id", "-1")]).is_err());
        assert!(values(&[("avro.framing", "none"), ("avro.schema_id", "1")]).is_err());
        let list = r#"{"type": "record", "name": "p", "fields": [
            {"name": "id", "type": {"type": "array", "items": "long"}}]}"#;
        let error = values(&[("avro.schema", list)]).unwrap_err();
        assert!(
            matches!(&error, Error::DatatypeMismatch(m) if m.contains("\"id\"")),
            "{error}"
        );
        // Lossy casts are refused: a double into BIGINT, a plain long into a timestamp.
        for field in ["double", "long"] {
            let schema = format!(
                r#"{{"type": "record", "name": "p", "fields": [{{"name": "name", "type": "{field}"}}]}}"#
            );
            let stream = Arc::new(Schema::new(vec![Field::new(
                "name",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            )]));
            let options: BTreeMap<String, String> =
                [("avro.schema".to_string(), schema)].into_iter().collect();
            assert!(AvroValues::new(&options, &stream, &["name".into()]).is_err());
        }
        assert!(lossless(&DataType::Int32, &DataType::Int64));
        assert!(!lossless(&DataType::Float64, &DataType::Int64));
        assert!(!lossless(&DataType::Int64, &DataType::Float64));
        // A Confluent header with no body is not a row.
        let framed = values(&[]).unwrap();
        assert!(framed.decode(&[&confluent(1, &[])]).is_err());
    }
}
