//! Operator state as bytes, for checkpoints: a small length-prefixed binary encoding.
//!
//! Operators keep their rows as `arrow::row` rows (`OwnedRow`), so a snapshot writes each row's
//! bytes and a restore parses them back with the same `RowConverter` (the row format is tied to
//! the Arrow version, which the checkpoint manifest records; a checkpoint from another version
//! is not restored). Values that are not rows (accumulator states) are written as Arrow IPC.
//! Every snapshot starts with the operator's tag, so a snapshot restored into the wrong
//! operator is an error, not garbage.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter};

use crate::error::{Error, Result};
use crate::storage::codec;

/// Builds a snapshot.
#[derive(Debug, Default)]
pub struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    pub fn new(tag: &str) -> StateWriter {
        let mut writer = StateWriter::default();
        writer.bytes(tag.as_bytes());
        writer
    }

    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    pub fn bool(&mut self, value: bool) {
        self.buf.push(u8::from(value));
    }

    pub fn opt_i64(&mut self, value: Option<i64>) {
        self.bool(value.is_some());
        self.i64(value.unwrap_or(0));
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.u64(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    pub fn row(&mut self, row: &OwnedRow) {
        self.bytes(row.as_ref());
    }

    pub fn opt_row(&mut self, row: Option<&OwnedRow>) {
        self.bool(row.is_some());
        if let Some(row) = row {
            self.row(row);
        }
    }

    /// Batches of one schema, as Arrow IPC.
    pub fn batches(&mut self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
        let encoded = codec::encode_batches(schema, batches)?;
        self.bytes(&encoded);
        Ok(())
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a snapshot written by [`StateWriter`].
#[derive(Debug)]
pub struct StateReader<'a> {
    buf: &'a [u8],
}

fn truncated() -> Error {
    Error::Storage("checkpoint state is truncated".to_string())
}

impl<'a> StateReader<'a> {
    /// Start reading; the tag must be the one the snapshot was written with.
    pub fn new(buf: &'a [u8], tag: &str) -> Result<StateReader<'a>> {
        let mut reader = StateReader { buf };
        let found = reader.bytes()?;
        if found != tag.as_bytes() {
            return Err(Error::Storage(format!(
                "checkpoint state of \"{}\" where \"{tag}\" was expected",
                String::from_utf8_lossy(found)
            )));
        }
        Ok(reader)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(truncated());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u64(&mut self) -> Result<u64> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn i64(&mut self) -> Result<i64> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(bytes))
    }

    pub fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| truncated())
    }

    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.take(1)?[0] != 0)
    }

    pub fn opt_i64(&mut self) -> Result<Option<i64>> {
        let present = self.bool()?;
        let value = self.i64()?;
        Ok(present.then_some(value))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.usize()?;
        self.take(len)
    }

    /// A row written by [`StateWriter::row`], parsed with the converter that made it.
    pub fn row(&mut self, converter: &RowConverter) -> Result<OwnedRow> {
        let bytes = self.bytes()?;
        Ok(converter.parser().parse(bytes).owned())
    }

    /// A key row: keyless operators (no GROUP BY, PARTITION BY or join keys) use the one
    /// constant key, which no converter of theirs made.
    pub fn key(&mut self, converter: &RowConverter, keyless: bool) -> Result<OwnedRow> {
        if keyless {
            self.bytes()?;
            return Ok(super::operators::constant_key());
        }
        self.row(converter)
    }

    pub fn opt_row(&mut self, converter: &RowConverter) -> Result<Option<OwnedRow>> {
        if self.bool()? {
            Ok(Some(self.row(converter)?))
        } else {
            Ok(None)
        }
    }

    pub fn batches(&mut self) -> Result<Vec<RecordBatch>> {
        codec::decode_batches(self.bytes()?)
    }

    /// Everything was read.
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Storage(
                "checkpoint state has trailing bytes".to_string(),
            ))
        }
    }
}
