//! Who is connected and what they run: `pg_stat_activity` (also `eddy_catalog.sessions`),
//! `pg_cancel_backend(pid)`, and the connection and statement figures of `/metrics`.
//!
//! ```text
//!  connection's first statement ─► Activity::register(Backend) ─► registration (in the session)
//!  each statement: guarded() ─► Backend::started(query) ... Backend::finished(took)
//!  SELECT * FROM pg_stat_activity ─► Activity::batch()      (one row per backend)
//!  pg_cancel_backend(pid) ─► Activity::cancel(pid) ─► the backend's pgwire cancel signal
//! ```
//!
//! A backend is the server side of one client connection, named by the process id pgwire gave
//! it in BackendKeyData (what `pg_backend_pid()` returns and a CancelRequest names); it is
//! listed from its first statement until the connection closes, when the session (holding the
//! [`Registration`]) is dropped. Cancelling fires the same signal a CancelRequest does, so the
//! statement ends with 57014 and the session goes on. A running statement's progress reports
//! (a view's backfill, a model's training phases), sent to its client as NOTICEs, also show in
//! the `progress` column, an EddyDB addition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use pgwire::api::ConnectionHandle;

use crate::error::Result;
use crate::telemetry::Histogram;

/// Statement kinds timed separately: those that return rows, and the others.
pub const STATEMENT_KINDS: [&str; 2] = ["query", "command"];

/// Every backend, and the server's connection and statement figures.
#[derive(Debug, Default)]
pub struct Activity {
    backends: Mutex<BTreeMap<i32, Arc<Backend>>>,
    /// Connections open now.
    pub connections: AtomicI64,
    /// Connections accepted since the start.
    pub connections_total: AtomicU64,
    /// Statement durations per [`STATEMENT_KINDS`].
    pub statements: [Histogram; 2],
}

/// One client connection's backend.
#[derive(Debug)]
pub struct Backend {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub client: Option<SocketAddr>,
    pub started: DateTime<Utc>,
    current: Mutex<Current>,
    cancel: Option<Arc<ConnectionHandle>>,
}

#[derive(Debug, Clone)]
struct Current {
    /// As the session has it set now (`SET application_name` changes it).
    application_name: String,
    active: bool,
    /// The running statement's latest progress report (a backfill, a training phase).
    progress: Option<String>,
    query: String,
    query_start: Option<DateTime<Utc>>,
    state_change: DateTime<Utc>,
}

impl Backend {
    pub fn new(
        pid: i32,
        metadata: &std::collections::HashMap<String, String>,
        client: Option<SocketAddr>,
        cancel: Option<Arc<ConnectionHandle>>,
    ) -> Backend {
        let setting = |name: &str| metadata.get(name).cloned().unwrap_or_default();
        let now = Utc::now();
        Backend {
            pid,
            user: setting("user"),
            database: setting("database"),
            client,
            started: now,
            current: Mutex::new(Current {
                application_name: setting("application_name"),
                active: false,
                progress: None,
                query: String::new(),
                query_start: None,
                state_change: now,
            }),
            cancel,
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A statement of `query` starts, in a session whose application name is now `application`.
    pub fn started(&self, query: &str, application: Option<String>) {
        let now = Utc::now();
        let mut current = self.current();
        *current = Current {
            application_name: application.unwrap_or_else(|| current.application_name.clone()),
            active: true,
            progress: None,
            query: query.to_string(),
            query_start: Some(now),
            state_change: now,
        };
    }

    /// The running statement reported `progress` (also sent to the client as a NOTICE).
    pub fn progressed(&self, progress: &str) {
        self.current().progress = Some(progress.to_string());
    }

    /// The statement ended; the query text stays, as PostgreSQL shows an idle session's last.
    pub fn finished(&self) {
        let mut current = self.current();
        current.active = false;
        current.progress = None;
        current.state_change = Utc::now();
    }
}

/// A backend's place in the list; leaving it (the session ends) removes the backend.
#[derive(Debug)]
pub struct Registration {
    activity: Weak<Activity>,
    pub backend: Arc<Backend>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(activity) = self.activity.upgrade() {
            activity.lock().remove(&self.backend.pid);
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(self: &Arc<Self>, backend: Backend) -> Registration {
        let backend = Arc::new(backend);
        self.lock().insert(backend.pid, Arc::clone(&backend));
        Registration {
            activity: Arc::downgrade(self),
            backend,
        }
    }

    /// A statement of `kind` (an index into [`STATEMENT_KINDS`]) took `took`.
    pub fn statement_done(&self, kind: usize, took: Duration) {
        if let Some(histogram) = self.statements.get(kind) {
            histogram.observe(took);
        }
    }

    /// Cancel what backend `pid` runs; false if there is no such backend.
    pub async fn cancel(&self, pid: i32) -> bool {
        let backend = self.lock().get(&pid).cloned();
        match backend {
            Some(backend) => {
                if let Some(handle) = &backend.cancel {
                    handle.cancel().await;
                }
                true
            }
            None => false,
        }
    }

    /// Whether backend `pid` exists.
    pub fn exists(&self, pid: i32) -> bool {
        self.lock().contains_key(&pid)
    }

    /// `pg_stat_activity`'s columns: PostgreSQL's, those EddyDB has values for.
    pub fn schema() -> SchemaRef {
        use crate::planner::views::timestamp_type as time;
        Arc::new(Schema::new(vec![
            Field::new("datname", DataType::Utf8, true),
            Field::new("pid", DataType::Int32, false),
            Field::new("usename", DataType::Utf8, true),
            Field::new("application_name", DataType::Utf8, false),
            Field::new("client_addr", DataType::Utf8, true),
            Field::new("client_port", DataType::Int32, true),
            Field::new("backend_start", time(), false),
            Field::new("xact_start", time(), true),
            Field::new("query_start", time(), true),
            Field::new("state_change", time(), false),
            Field::new("wait_event_type", DataType::Utf8, true),
            Field::new("wait_event", DataType::Utf8, true),
            Field::new("state", DataType::Utf8, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("backend_type", DataType::Utf8, false),
            // EddyDB's own: the running statement's latest progress report.
            Field::new("progress", DataType::Utf8, true),
        ]))
    }

    /// One row per backend.
    pub fn batch(&self) -> Result<RecordBatch> {
        let backends: Vec<Arc<Backend>> = self.lock().values().cloned().collect();
        let current: Vec<Current> = backends.iter().map(|b| b.current().clone()).collect();
        let text = |f: &dyn Fn(&Backend) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(
                backends.iter().map(|b| f(b)).collect::<Vec<_>>(),
            ))
        };
        let micros = |t: DateTime<Utc>| t.timestamp_micros();
        use crate::planner::views::timestamp_array as times;
        let columns: Vec<ArrayRef> = vec![
            text(&|b| Some(b.database.clone()).filter(|d| !d.is_empty())),
            Arc::new(Int32Array::from_iter_values(backends.iter().map(|b| b.pid))),
            text(&|b| Some(b.user.clone()).filter(|u| !u.is_empty())),
            Arc::new(StringArray::from_iter_values(
                current.iter().map(|c| c.application_name.as_str()),
            )),
            text(&|b| b.client.map(|c| c.ip().to_string())),
            Arc::new(Int32Array::from(
                backends
                    .iter()
                    .map(|b| b.client.map(|c| i32::from(c.port())))
                    .collect::<Vec<_>>(),
            )),
            times(backends.iter().map(|b| Some(micros(b.started))).collect()),
            times(
                current
                    .iter()
                    .map(|c| c.query_start.filter(|_| c.active).map(micros))
                    .collect(),
            ),
            times(current.iter().map(|c| c.query_start.map(micros)).collect()),
            times(
                current
                    .iter()
                    .map(|c| Some(micros(c.state_change)))
                    .collect(),
            ),
            text(&|_| None),
            text(&|_| None),
            Arc::new(StringArray::from_iter_values(
                current
                    .iter()
                    .map(|c| if c.active { "active" } else { "idle" }),
            )),
            Arc::new(StringArray::from_iter_values(
                current.iter().map(|c| c.query.as_str()),
            )),
            text(&|_| Some("client backend".to_string())),
            Arc::new(StringArray::from(
                current
                    .iter()
                    .map(|c| c.progress.clone())
                    .collect::<Vec<_>>(),
            )),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }
}
