//! Record batches as bytes for the log: the Arrow IPC stream format, so what is logged is exactly
//! what was in memory (types, nulls, metadata) and decoding needs no schema from elsewhere.

use std::io::Cursor;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// Encode batches (all of `schema`) as one IPC stream.
pub fn encode_batches(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// Decode an IPC stream written by [`encode_batches`].
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| Error::Storage(format!("unreadable log record: {e}")))?;
    reader
        .map(|batch| batch.map_err(|e| Error::Storage(format!("unreadable log record: {e}"))))
        .collect()
}

/// Split `bytes` into the length-prefixed parts written by [`join_parts`].
pub fn split_parts(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut parts = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            return Err(Error::Storage("truncated log record".to_string()));
        }
        let mut len = [0; 8];
        len.copy_from_slice(&bytes[..8]);
        let len = usize::try_from(u64::from_le_bytes(len))
            .map_err(|_| Error::Storage("oversized log record part".to_string()))?;
        let rest = &bytes[8..];
        if rest.len() < len {
            return Err(Error::Storage("truncated log record".to_string()));
        }
        parts.push(&rest[..len]);
        bytes = &rest[len..];
    }
    Ok(parts)
}

/// Several byte strings as one, each prefixed with its length.
pub fn join_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}
