//! Ingest: rows arriving as text (COPY's text and CSV formats, JSON lines over HTTP) become Arrow
//! batches of a stream's or table's schema, and go in as one atomic write.
//!
//! ```text
//!  COPY FROM STDIN (pgwire CopyData) ─┐
//!  POST /v1/streams/<name> (HTTP)  ───┼─► RowDecoder ─► RecordBatches ─► Relation::insert (log, fsync)
//! ```
//!
//! [`RowDecoder`] takes bytes in any chunking, cuts them into records (quotes and escapes
//! honoured), and converts each field with the same text-input rules the extended protocol uses
//! for parameters ([`crate::server::encode::decode_text`]), so `'2024-01-01 12:00+02'`,
//! `t`/`f`, `\x00ff` mean in a CSV what they mean in SQL. The first bad field ends the input
//! with an error naming its line and column, and nothing of the input is stored.
//!
//! [`encode_copy_rows`] is the way out: result rows in COPY text or CSV format.

pub mod decode;

pub use decode::{RowDecoder, encode_copy_rows, header_line};

use datafusion::sql::sqlparser::ast::{CopyLegacyCsvOption, CopyLegacyOption, CopyOption};

use crate::error::{Error, Result};

/// COPY's data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Text,
    Csv,
    Binary,
    /// One JSON object per line (HTTP ingest only).
    JsonLines,
}

/// How rows are written in COPY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub kind: CopyKind,
    pub delimiter: char,
    /// The text that means NULL (`\N` in text format, the empty unquoted string in CSV).
    pub null: String,
    /// CSV: the first line names the columns and is skipped.
    pub header: bool,
    pub quote: char,
    pub escape: char,
}

impl CopyFormat {
    /// PostgreSQL's defaults for a format.
    pub fn new(kind: CopyKind) -> CopyFormat {
        match kind {
            CopyKind::Csv => CopyFormat {
                kind,
                delimiter: ',',
                null: String::new(),
                header: false,
                quote: '"',
                escape: '"',
            },
            _ => CopyFormat {
                kind,
                delimiter: '\t',
                null: "\\N".to_string(),
                header: false,
                quote: '"',
                escape: '"',
            },
        }
    }

    /// The format a COPY statement's options describe.
    pub fn from_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyFormat> {
        let mut kind = CopyKind::Text;
        for option in options {
            if let CopyOption::Format(name) = option {
                kind = match name.value.to_ascii_lowercase().as_str() {
                    "text" => CopyKind::Text,
                    "csv" => CopyKind::Csv,
                    "binary" => CopyKind::Binary,
                    other => {
                        return Err(Error::InvalidValue(format!(
                            "COPY format \"{other}\" not recognized"
                        )));
                    }
                };
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => kind = CopyKind::Binary,
                CopyLegacyOption::Csv(_) => kind = CopyKind::Csv,
                _ => {}
            }
        }
        if kind == CopyKind::Binary {
            return Err(Error::Unsupported(
                "COPY in binary format (use text or csv)".to_string(),
            ));
        }
        let mut format = CopyFormat::new(kind);
        for option in options {
            match option {
                CopyOption::Format(_) | CopyOption::Freeze(_) => {}
                CopyOption::Delimiter(c) => format.delimiter = *c,
                CopyOption::Null(s) => format.null = s.clone(),
                CopyOption::Header(h) => format.header = *h,
                CopyOption::Quote(c) => format.quote = *c,
                CopyOption::Escape(c) => format.escape = *c,
                CopyOption::Encoding(e) => {
                    let e = e.to_ascii_uppercase().replace(['-', '_'], "");
                    if e != "UTF8" {
                        return Err(Error::Unsupported(format!(
                            "COPY encoding \"{e}\" (EddyDB uses UTF8)"
                        )));
                    }
                }
                other => {
                    return Err(Error::Unsupported(format!("COPY option {other}")));
                }
            }
        }
        for option in legacy {
            match option {
                CopyLegacyOption::Binary => {}
                CopyLegacyOption::Delimiter(c) => format.delimiter = *c,
                CopyLegacyOption::Null(s) => format.null = s.clone(),
                CopyLegacyOption::Csv(csv) => {
                    for option in csv {
                        match option {
                            CopyLegacyCsvOption::Header => format.header = true,
                            CopyLegacyCsvOption::Quote(c) => format.quote = *c,
                            CopyLegacyCsvOption::Escape(c) => format.escape = *c,
                            other => {
                                return Err(Error::Unsupported(format!("COPY option {other}")));
                            }
                        }
                    }
                }
                other => return Err(Error::Unsupported(format!("COPY option {other}"))),
            }
        }
        if format.delimiter == '\n' || format.delimiter == '\r' {
            return Err(Error::InvalidValue(
                "COPY delimiter cannot be newline or carriage return".to_string(),
            ));
        }
        for (what, c) in [
            ("delimiter", format.delimiter),
            ("quote", format.quote),
            ("escape", format.escape),
        ] {
            if !c.is_ascii() {
                return Err(Error::InvalidValue(format!(
                    "COPY {what} must be a single one-byte character"
                )));
            }
        }
        Ok(format)
    }
}
