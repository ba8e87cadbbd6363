//! COPY text, CSV and JSON lines to Arrow, and result rows back to COPY text or CSV.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::results::FieldInfo;

use super::{CopyFormat, CopyKind};
use crate::catalog::pg_types::pg_type_of_field;
use crate::error::{Error, Result};
use crate::server::encode::{decode_text, encode_batch};

/// Rows per Arrow batch while decoding.
const BATCH_ROWS: usize = 8192;

/// The longest record accepted (a quoted CSV field may span lines, but not forever).
const MAX_RECORD_BYTES: usize = 64 << 20;

/// Decodes rows for one relation from bytes arriving in chunks.
#[derive(Debug)]
pub struct RowDecoder {
    /// Names the input in errors: `COPY bids`, `POST /v1/streams/bids`.
    source: String,
    schema: SchemaRef,
    /// For each input field, the relation column it fills (COPY's column list).
    columns: Vec<usize>,
    types: Vec<Type>,
    format: CopyFormat,
    pending: Vec<u8>,
    /// How far `pending` has been scanned for record ends, and whether that point is inside
    /// CSV quotes.
    scan_pos: usize,
    in_quotes: bool,
    /// Lines consumed so far.
    line: u64,
    header_pending: bool,
    finished: bool,
    /// Buffered field texts per relation column, and the line each buffered row started on.
    values: Vec<Vec<Option<String>>>,
    provided: Vec<bool>,
    row_lines: Vec<u64>,
    batches: Vec<RecordBatch>,
    /// JSON keys that name no column are skipped instead of refused.
    ignore_unknown_keys: bool,
}

/// One record cut from complete input.
#[derive(Debug)]
struct Record {
    /// The fields; None for a line that holds no row (a blank JSON line).
    fields: Option<Vec<Option<String>>>,
    /// The line the record starts on.
    line: u64,
    /// Bytes and lines it used.
    used: usize,
    lines: u64,
    /// The `\.` line that ends COPY data.
    end_of_data: bool,
}

impl RowDecoder {
    /// A decoder for `schema`; `columns` names the input's fields in order (empty: all columns).
    pub fn new(
        source: impl Into<String>,
        schema: SchemaRef,
        columns: &[String],
        format: CopyFormat,
    ) -> Result<RowDecoder> {
        let indices = if columns.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            let mut indices = Vec::with_capacity(columns.len());
            for name in columns {
                let index = schema.index_of(name).map_err(|_| Error::NotFound {
                    kind: "column",
                    name: name.clone(),
                })?;
                if indices.contains(&index) {
                    return Err(Error::InvalidValue(format!(
                        "column \"{name}\" specified more than once"
                    )));
                }
                indices.push(index);
            }
            indices
        };
        let types = schema
            .fields()
            .iter()
            .map(|f| pg_type_of_field(f))
            .collect();
        let n = schema.fields().len();
        Ok(RowDecoder {
            source: source.into(),
            header_pending: format.header && format.kind != CopyKind::JsonLines,
            schema,
            columns: indices,
            types,
            format,
            pending: Vec::new(),
            scan_pos: 0,
            in_quotes: false,
            line: 0,
            finished: false,
            values: vec![Vec::new(); n],
            provided: vec![false; n],
            row_lines: Vec::new(),
            batches: Vec::new(),
            ignore_unknown_keys: false,
        })
    }

    /// Skip JSON keys that name no column (a topic's messages often carry more fields than
    /// the stream takes) instead of refusing the record.
    pub fn ignoring_unknown_keys(mut self) -> RowDecoder {
        self.ignore_unknown_keys = true;
        self
    }

    /// Feed more input.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(chunk);
        self.process(false)
    }

    /// End of input: the last record, and every row as batches of the relation's schema.
    pub fn finish(mut self) -> Result<Vec<RecordBatch>> {
        self.process(true)?;
        self.flush_rows()?;
        Ok(self.batches)
    }

    fn context(&self, line: u64) -> String {
        format!("{}, line {line}", self.source)
    }

    /// Find where the last complete record in `pending` ends, scanning each byte once: a
    /// newline outside CSV quotes. Returns the length of the complete part.
    fn complete_prefix(&mut self) -> usize {
        let quote = (self.format.kind == CopyKind::Csv).then_some(self.format.quote as u8);
        let mut boundary = 0;
        for (i, &b) in self.pending.iter().enumerate().skip(self.scan_pos) {
            if Some(b) == quote {
                self.in_quotes = !self.in_quotes;
            } else if b == b'\n' && !self.in_quotes {
                boundary = i + 1;
            }
        }
        self.scan_pos = self.pending.len();
        if boundary == 0 {
            // Nothing new completed; an earlier call consumed everything before scan_pos.
            return 0;
        }
        boundary
    }

    fn process(&mut self, at_eof: bool) -> Result<()> {
        if self.finished {
            self.pending.clear();
            return Ok(());
        }
        let complete = if at_eof {
            self.scan_pos = self.pending.len();
            self.pending.len()
        } else {
            self.complete_prefix()
        };
        if complete == 0 {
            if self.pending.len() > MAX_RECORD_BYTES {
                return Err(Error::ProgramLimitExceeded(format!(
                    "a record longer than {MAX_RECORD_BYTES} bytes ({})",
                    self.context(self.line + 1)
                )));
            }
            return Ok(());
        }
        let text = match std::str::from_utf8(&self.pending[..complete]) {
            Ok(text) => text,
            Err(e) => {
                let line = self.line
                    + 1
                    + self.pending[..e.valid_up_to()]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64;
                return Err(Error::CharacterNotInRepertoire(format!(
                    "invalid byte sequence for encoding \"UTF8\" ({})",
                    self.context(line)
                )));
            }
        };
        let mut consumed = 0;
        let mut records: Vec<(Vec<Option<String>>, u64)> = Vec::new();
        let mut line = self.line;
        while consumed < text.len() {
            let rest = &text[consumed..];
            let record = match self.format.kind {
                CopyKind::Csv => parse_csv_record(rest, &self.format, line)?,
                CopyKind::Text | CopyKind::Binary => parse_text_record(rest, &self.format, line)?,
                CopyKind::JsonLines => parse_json_line(rest, line),
            };
            consumed += record.used;
            line += record.lines;
            if record.end_of_data {
                self.finished = true;
                break;
            }
            if let Some(fields) = record.fields {
                records.push((fields, record.line));
            }
        }
        if self.finished {
            self.pending.clear();
            self.scan_pos = 0;
        } else {
            self.pending.drain(..complete);
            self.scan_pos -= complete;
        }
        self.line = line;
        for (fields, start_line) in records {
            if std::mem::take(&mut self.header_pending) {
                continue;
            }
            self.add_record(fields, start_line)?;
        }
        Ok(())
    }

    fn add_record(&mut self, fields: Vec<Option<String>>, line: u64) -> Result<()> {
        if self.format.kind == CopyKind::JsonLines {
            return self.add_json_record(fields, line);
        }
        if fields.len() > self.columns.len() {
            return Err(Error::BadCopyFormat(format!(
                "extra data after last expected column ({})",
                self.context(line)
            )));
        }
        if fields.len() < self.columns.len() {
            let missing = self.schema.field(self.columns[fields.len()]).name();
            return Err(Error::BadCopyFormat(format!(
                "missing data for column \"{missing}\" ({})",
                self.context(line)
            )));
        }
        let mut row: Vec<Option<String>> = vec![None; self.schema.fields().len()];
        for (value, &column) in fields.into_iter().zip(&self.columns) {
            row[column] = value;
            self.provided[column] = true;
        }
        self.buffer_row(row, line)
    }

    /// JSON records arrive as alternating key, value fields (see [`parse_json_line`]).
    fn add_json_record(&mut self, fields: Vec<Option<String>>, line: u64) -> Result<()> {
        let mut row: Vec<Option<String>> = vec![None; self.schema.fields().len()];
        let mut pairs = fields.into_iter();
        while let (Some(key), Some(value)) = (pairs.next(), pairs.next()) {
            let key = key.unwrap_or_default();
            if key == JSON_ERROR {
                return Err(Error::InvalidTextRepresentation(format!(
                    "invalid JSON: {} ({})",
                    value.unwrap_or_default(),
                    self.context(line)
                )));
            }
            let column = match self
                .schema
                .index_of(&key)
                .or_else(|_| self.schema.index_of(&key.to_lowercase()))
            {
                Ok(column) => column,
                Err(_) if self.ignore_unknown_keys => continue,
                Err(_) => {
                    return Err(Error::BadCopyFormat(format!(
                        "unknown column \"{key}\" ({})",
                        self.context(line)
                    )));
                }
            };
            row[column] = value;
            self.provided[column] = true;
        }
        self.buffer_row(row, line)
    }

    fn buffer_row(&mut self, row: Vec<Option<String>>, line: u64) -> Result<()> {
        for (column, value) in row.into_iter().enumerate() {
            self.values[column].push(value);
        }
        self.row_lines.push(line);
        if self.row_lines.len() >= BATCH_ROWS {
            self.flush_rows()?;
        }
        Ok(())
    }

    /// Convert the buffered texts to one typed batch.
    fn flush_rows(&mut self) -> Result<()> {
        let rows = self.row_lines.len();
        if rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.values.len());
        for (index, field) in self.schema.fields().iter().enumerate() {
            let texts = std::mem::take(&mut self.values[index]);
            if !self.provided[index] {
                columns.push(new_null_array(field.data_type(), rows));
                continue;
            }
            columns.push(self.column_array(index, texts)?);
        }
        self.row_lines.clear();
        self.batches
            .push(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
        Ok(())
    }

    fn column_array(&self, index: usize, texts: Vec<Option<String>>) -> Result<ArrayRef> {
        let field = self.schema.field(index);
        let ty = &self.types[index];
        if *ty == Type::TEXT || *ty == Type::VARCHAR {
            let array: ArrayRef = Arc::new(StringArray::from(texts));
            return Ok(if array.data_type() == field.data_type() {
                array
            } else {
                cast(&array, field.data_type())?
            });
        }
        // Each value is converted to the column's type on its own (a numeric keeps its own
        // scale until then), and one that does not fit is an error, never a NULL.
        let target = field.data_type();
        let null = ScalarValue::try_from(target)?;
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut scalars = Vec::with_capacity(texts.len());
        for (row, text) in texts.iter().enumerate() {
            let Some(text) = text else {
                scalars.push(null.clone());
                continue;
            };
            let in_context = |e: Error| {
                Error::InvalidTextRepresentation(format!(
                    "{e} ({}, column {})",
                    self.context(self.row_lines[row]),
                    field.name()
                ))
            };
            let value = decode_text(ty, text).map_err(in_context)?;
            let value = if value.data_type() == *target {
                value
            } else {
                value
                    .cast_to_with_options(target, &options)
                    .map_err(|e| in_context(Error::from(e)))?
            };
            scalars.push(value);
        }
        Ok(ScalarValue::iter_to_array(scalars)?)
    }
}

/// One COPY text-format record from the start of `text` (complete input): fields split on the
/// delimiter, backslash escapes decoded, the NULL string as None.
fn parse_text_record(text: &str, format: &CopyFormat, line: u64) -> Result<Record> {
    let (record, used) = match text.find('\n') {
        Some(end) => (&text[..end], end + 1),
        None => (text, text.len()),
    };
    let record = record.strip_suffix('\r').unwrap_or(record);
    let mut result = Record {
        fields: None,
        line: line + 1,
        used,
        lines: 1,
        end_of_data: record == "\\.",
    };
    if result.end_of_data {
        return Ok(result);
    }
    let mut fields = Vec::new();
    let mut raw = String::new();
    let mut chars = record.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            raw.push(c);
            if let Some(next) = chars.next() {
                raw.push(next);
            }
        } else if c == format.delimiter {
            fields.push(text_field(std::mem::take(&mut raw), format, line + 1)?);
        } else {
            raw.push(c);
        }
    }
    fields.push(text_field(raw, format, line + 1)?);
    result.fields = Some(fields);
    Ok(result)
}

/// A raw text-format field: the NULL string, or the value with escapes decoded (`\\ooo` and
/// `\\xhh` are bytes, so `\\303\\251` is "é").
fn text_field(raw: String, format: &CopyFormat, line: u64) -> Result<Option<String>> {
    if raw == format.null {
        return Ok(None);
    }
    if !raw.contains('\\') {
        return Ok(Some(raw));
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    let mut buf = [0; 4];
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let Some(e) = chars.next() else {
            return Err(Error::BadCopyFormat(format!(
                "unterminated backslash escape (line {line})"
            )));
        };
        match e {
            'b' => out.push(0x08),
            'f' => out.push(0x0c),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(0x0b),
            'x' if chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            '0'..='7' => {
                let mut value = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            other => out.extend_from_slice(other.encode_utf8(&mut buf).as_bytes()),
        }
    }
    String::from_utf8(out).map(Some).map_err(|_| {
        Error::CharacterNotInRepertoire(format!(
            "invalid byte sequence for encoding \"UTF8\" in an escape (line {line})"
        ))
    })
}

/// One CSV record from the start of `text` (complete input; quoted fields may span lines).
fn parse_csv_record(text: &str, format: &CopyFormat, line: u64) -> Result<Record> {
    let first_line = line + 1;
    // An unquoted line holding only `\.` ends the data.
    let first = text.split('\n').next().unwrap_or("");
    if first.trim_end_matches('\r') == "\\." {
        return Ok(Record {
            fields: None,
            line: first_line,
            used: (first.len() + 1).min(text.len()),
            lines: 1,
            end_of_data: true,
        });
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // the current field had a quoted part
    let mut in_quotes = false;
    let mut lines = 0u64;
    let mut chars = text.char_indices().peekable();
    let finish_field = |field: &mut String, quoted: &mut bool| -> Option<String> {
        let value = std::mem::take(field);
        let was_quoted = std::mem::take(quoted);
        if !was_quoted && value == format.null {
            None
        } else {
            Some(value)
        }
    };
    let mut used = text.len();
    while let Some((i, c)) = chars.next() {
        if in_quotes {
            if c == format.escape
                && format.escape != format.quote
                && chars
                    .peek()
                    .is_some_and(|(_, n)| *n == format.quote || *n == format.escape)
            {
                if let Some((_, n)) = chars.next() {
                    field.push(n);
                }
            } else if c == format.quote {
                if format.escape == format.quote
                    && chars.peek().is_some_and(|(_, n)| *n == format.quote)
                {
                    chars.next();
                    field.push(format.quote);
                } else {
                    in_quotes = false;
                }
            } else {
                if c == '\n' {
                    lines += 1;
                }
                field.push(c);
            }
            continue;
        }
        if c == format.quote {
            in_quotes = true;
            quoted = true;
        } else if c == format.delimiter {
            fields.push(finish_field(&mut field, &mut quoted));
        } else if c == '\n' {
            used = i + 1;
            if field.ends_with('\r') && !quoted {
                field.pop();
            }
            break;
        } else {
            field.push(c);
        }
    }
    if in_quotes {
        return Err(Error::BadCopyFormat(format!(
            "unterminated CSV quoted field (line {first_line})"
        )));
    }
    fields.push(finish_field(&mut field, &mut quoted));
    Ok(Record {
        fields: Some(fields),
        line: first_line,
        used,
        lines: lines + 1,
        end_of_data: false,
    })
}

/// Marks a JSON line that did not parse; the value field carries the parser's message.
const JSON_ERROR: &str = "\u{0}json-error";

/// One JSON-lines record as alternating key and value fields (values in PostgreSQL text form:
/// strings as they are, numbers and booleans as written, objects and arrays as JSON text).
/// Blank lines hold no row.
fn parse_json_line(text: &str, line: u64) -> Record {
    let (record, used) = match text.find('\n') {
        Some(end) => (&text[..end], end + 1),
        None => (text, text.len()),
    };
    let mut result = Record {
        fields: None,
        line: line + 1,
        used,
        lines: 1,
        end_of_data: false,
    };
    let record = record.trim();
    if record.is_empty() {
        return result;
    }
    let error = |message: String| Some(vec![Some(JSON_ERROR.to_string()), Some(message)]);
    result.fields = match serde_json::from_str::<serde_json::Value>(record) {
        Ok(serde_json::Value::Object(object)) => {
            let mut fields = Vec::with_capacity(object.len() * 2);
            for (key, value) in object {
                fields.push(Some(key));
                fields.push(match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    other => Some(other.to_string()),
                });
            }
            Some(fields)
        }
        Ok(_) => error("expected an object".to_string()),
        Err(e) => error(e.to_string()),
    };
    result
}

/// Result rows in COPY text or CSV format, using the server's text encoding of each value.
pub fn encode_copy_rows(
    batch: &RecordBatch,
    fields: &Arc<Vec<FieldInfo>>,
    format: &CopyFormat,
    out: &mut Vec<u8>,
) -> Result<()> {
    for row in encode_batch(batch, fields)? {
        let mut data: &[u8] = &row.data;
        for i in 0..row.field_count {
            if i > 0 {
                push_char(out, format.delimiter);
            }
            let Some((len, rest)) = data.split_first_chunk::<4>() else {
                return Err(Error::Internal("short data row".to_string()));
            };
            let len = i32::from_be_bytes(*len);
            if len < 0 {
                data = rest;
                out.extend_from_slice(format.null.as_bytes());
                continue;
            }
            let (value, rest) = rest.split_at(len as usize);
            data = rest;
            let value = String::from_utf8_lossy(value);
            match format.kind {
                CopyKind::Csv => write_csv_field(&value, format, out),
                _ => write_text_field(&value, format, out),
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

fn write_text_field(value: &str, format: &CopyFormat, out: &mut Vec<u8>) {
    for c in value.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' if format.delimiter != '\t' => out.extend_from_slice(b"\\t"),
            c if c == format.delimiter => {
                out.push(b'\\');
                push_char(out, c);
            }
            c => push_char(out, c),
        }
    }
}

fn write_csv_field(value: &str, format: &CopyFormat, out: &mut Vec<u8>) {
    let needs_quotes = value == format.null
        || value.contains(format.delimiter)
        || value.contains(format.quote)
        || value.contains('\n')
        || value.contains('\r')
        || value == "\\.";
    if !needs_quotes {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    push_char(out, format.quote);
    for c in value.chars() {
        if c == format.quote || c == format.escape {
            push_char(out, format.escape);
        }
        push_char(out, c);
    }
    push_char(out, format.quote);
}

/// A header line naming the columns, in the format's quoting.
pub fn header_line(names: &[&str], format: &CopyFormat) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            push_char(&mut out, format.delimiter);
        }
        match format.kind {
            CopyKind::Csv => write_csv_field(name, format, &mut out),
            _ => write_text_field(name, format, &mut out),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("price", DataType::Float64, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
        ]))
    }

    fn decode(kind: CopyKind, header: bool, chunks: &[&str]) -> Result<Vec<RecordBatch>> {
        let mut format = CopyFormat::new(kind);
        format.header = header;
        let mut decoder = RowDecoder::new("COPY t", schema(), &[], format)?;
        for chunk in chunks {
            decoder.push(chunk.as_bytes())?;
        }
        decoder.finish()
    }

    #[test]
    fn csv_with_quotes_nulls_and_split_chunks() {
        let batches = decode(
            CopyKind::Csv,
            true,
            &[
                "id,name,price,ts\n1,\"a, \"\"b\"\"\",1.5,2024-01-01 00:00:00+00\n2,,",
                "2.5,\n3,\"\",,2024-01-01T01:00:00Z",
            ],
        )
        .unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert!(text.contains("a, \"b\""), "{text}");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(
            batches[0].column(1).null_count(),
            1,
            "unquoted empty is NULL, quoted is ''"
        );
        assert_eq!(
            batches[0].column(3).data_type(),
            schema().field(3).data_type()
        );
    }

    #[test]
    fn text_format_escapes_and_null() {
        let batches = decode(CopyKind::Text, false, &["1\ta\\tb\\\\\t\\N\t\\N\n\\.\n"]).unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert!(text.contains("a\tb\\"), "{text}");
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let e = decode(CopyKind::Csv, false, &["1,a,1.0,\n2,b,abc,\n"]).unwrap_err();
        assert!(e.to_string().contains("line 2, column price"), "{e}");
        assert_eq!(e.sqlstate(), "22P02");
        let e = decode(CopyKind::Csv, false, &["1,a\n"]).unwrap_err();
        assert!(
            e.to_string().contains("missing data for column \"price\""),
            "{e}"
        );
        assert_eq!(e.sqlstate(), "22P04");
        let e = decode(CopyKind::Csv, false, &["1,a,1,,9\n"]).unwrap_err();
        assert!(e.to_string().contains("extra data"), "{e}");
        let e = decode(CopyKind::Csv, false, &["1,\"open\n"]).unwrap_err();
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = decode(CopyKind::Csv, false, &["1,a,1,not a time\n"]).unwrap_err();
        assert!(e.to_string().contains("column ts"), "{e}");
    }

    #[test]
    fn numerics_keep_their_value_and_overflow_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "n",
            DataType::Decimal128(7, 2),
            true,
        )]));
        let decode = |input: &str| {
            let mut d = RowDecoder::new(
                "COPY t",
                Arc::clone(&schema),
                &[],
                CopyFormat::new(CopyKind::Csv),
            )?;
            d.push(input.as_bytes())?;
            d.finish()
        };
        let batches = decode("1.5\n1.25\n-3\n").unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert!(
            text.contains("1.50") && text.contains("1.25") && text.contains("-3.00"),
            "{text}"
        );
        let e = decode("1.5\n123456.7\n").unwrap_err();
        assert!(e.to_string().contains("line 2, column n"), "{e}");
    }

    #[test]
    fn quoted_end_marker_is_data_and_escapes_are_bytes() {
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let mut d = RowDecoder::new(
            "COPY t",
            Arc::clone(&schema),
            &[],
            CopyFormat::new(CopyKind::Csv),
        )
        .unwrap();
        d.push(b"a\n\"\\.\"\nb\n\\.\nignored\n").unwrap();
        let batches = d.finish().unwrap();
        assert_eq!(
            batches[0].num_rows(),
            3,
            "a, \\. (quoted, data), b; then the end marker"
        );
        let mut d =
            RowDecoder::new("COPY t", schema, &[], CopyFormat::new(CopyKind::Text)).unwrap();
        d.push(b"caf\\303\\251\n\n").unwrap();
        let text = pretty_format_batches(&d.finish().unwrap())
            .unwrap()
            .to_string();
        assert!(text.contains("café"), "{text}");
    }

    #[test]
    fn records_split_anywhere_across_chunks() {
        let input = "1,\"x\ny\",2.5,2024-01-01 00:00:00+00\n2,caf\u{e9},1,\n";
        for split in 0..input.len() {
            let mut format = CopyFormat::new(CopyKind::Csv);
            format.header = false;
            let mut d = RowDecoder::new("COPY t", schema(), &[], format).unwrap();
            d.push(&input.as_bytes()[..split]).unwrap();
            d.push(&input.as_bytes()[split..]).unwrap();
            let batches = d.finish().unwrap();
            assert_eq!(
                batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                2,
                "split at {split}"
            );
        }
    }

    #[test]
    fn json_lines() {
        let batches = decode(
            CopyKind::JsonLines,
            false,
            &[
                "{\"id\": 1, \"name\": \"x\", \"price\": 2.5, \"ts\": \"2024-01-01T00:00:00Z\"}\n",
                "{\"id\": 2}\n",
            ],
        )
        .unwrap();
        assert_eq!(batches[0].num_rows(), 2);
        let e = decode(
            CopyKind::JsonLines,
            false,
            &["{\"id\": 1}\n{\"nope\": 1}\n"],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown column \"nope\"") && e.to_string().contains("line 2"),
            "{e}"
        );
        let e = decode(CopyKind::JsonLines, false, &["{\"id\": 1}\n[1]\n"]).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = decode(CopyKind::JsonLines, false, &["{\"id\": \"seven\"}\n"]).unwrap_err();
        assert!(e.to_string().contains("column id"), "{e}");
    }
}
