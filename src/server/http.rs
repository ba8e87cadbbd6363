//! The HTTP listener: health and readiness probes, Prometheus metrics (`GET /metrics`), and
//! row ingest.
//!
//! `POST /v1/streams/<name>` takes JSON lines (`Content-Type: application/x-ndjson`, the
//! default) or CSV (`text/csv`, or `?format=csv`; `?header=true` skips a header line) and
//! inserts every row into the stream or table `<name>` as one atomic write. The response is sent
//! only once the rows are durable (`{"rows": N}`); on any bad row nothing is stored and the
//! response is an error naming the line and column, with the PostgreSQL SQLSTATE:
//! `{"error": "...", "sqlstate": "22P02"}` (400 for bad input, 404 for an unknown stream, 413
//! for a body over the limit, 503 when storage fails).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::catalog::{DEFAULT_SCHEMA, QualifiedName};
use crate::error::{Error, Result};
use crate::ingest::{CopyFormat, CopyKind, RowDecoder};
use crate::planner::Engine;
use crate::storage::IngestPath;

/// The largest request body accepted for ingest.
pub const MAX_INGEST_BYTES: usize = 256 << 20;

/// Serve HTTP until `stop` turns true.
pub async fn serve(listener: TcpListener, engine: Arc<Engine>, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/streams/{name}", post(ingest))
        .layer(DefaultBodyLimit::max(MAX_INGEST_BYTES))
        .with_state(engine);
    let shutdown = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "HTTP server stopped with an error");
    }
}

/// `GET /metrics`: Prometheus text format ([`super::metrics`]).
async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&engine),
    )
        .into_response()
}

/// `POST /v1/streams/<name>`.
async fn ingest(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match ingest_rows(&engine, &name, &query, &headers, body).await {
        Ok(rows) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "rows": rows })),
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn ingest_rows(
    engine: &Engine,
    name: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<u64> {
    let format = request_format(query, headers)?;
    let qualified = match name.split_once('.') {
        Some((schema, name)) => QualifiedName {
            schema: schema.to_string(),
            name: name.to_string(),
        },
        None => QualifiedName {
            schema: DEFAULT_SCHEMA.to_string(),
            name: name.to_string(),
        },
    };
    let relation = engine.catalog().relation(&qualified).await?;
    relation.check_writable()?;
    let mut decoder = RowDecoder::new(
        format!("POST /v1/streams/{name}"),
        relation.schema(),
        &[],
        format,
    )?;
    let mut received = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if e.to_string().contains("length limit") {
                Error::ProgramLimitExceeded(format!(
                    "request body exceeds the limit of {MAX_INGEST_BYTES} bytes"
                ))
            } else {
                Error::ProtocolViolation(format!("could not read the request body: {e}"))
            }
        })?;
        received += chunk.len();
        if received > MAX_INGEST_BYTES {
            return Err(Error::ProgramLimitExceeded(format!(
                "request body exceeds the limit of {MAX_INGEST_BYTES} bytes"
            )));
        }
        decoder.push(&chunk)?;
    }
    relation.insert(decoder.finish()?, IngestPath::Http).await
}

/// The body's format: `?format=` wins over `Content-Type`; JSON lines by default.
fn request_format(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<CopyFormat> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let kind = match query
        .get("format")
        .map(|f| f.to_ascii_lowercase())
        .as_deref()
    {
        Some("csv") => CopyKind::Csv,
        Some("json" | "jsonl" | "ndjson") => CopyKind::JsonLines,
        Some(other) => {
            return Err(Error::InvalidValue(format!(
                "unknown format \"{other}\" (use json or csv)"
            )));
        }
        None if content_type.starts_with("text/csv") => CopyKind::Csv,
        None => CopyKind::JsonLines,
    };
    let mut format = CopyFormat::new(kind);
    if let Some(header) = query.get("header") {
        format.header = matches!(
            header.to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on"
        );
    }
    Ok(format)
}

fn error_response(error: &Error) -> Response {
    let sqlstate = error.sqlstate();
    let status = match sqlstate {
        "42P01" => StatusCode::NOT_FOUND,
        "54000" => StatusCode::PAYLOAD_TOO_LARGE,
        "58030" => StatusCode::SERVICE_UNAVAILABLE,
        "XX000" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let info = super::handler::error_info(error);
    (
        status,
        axum::Json(serde_json::json!({ "error": info.message, "sqlstate": sqlstate })),
    )
        .into_response()
}
