//! Durable storage for streams and tables, and the durable catalog that lists them.
//!
//! ```text
//! data_dir/
//!   catalog.json                  every stream and table (definition, id); replaced atomically
//!   relations/<id>/log/*.seg      the relation's write-ahead log (see [`log`])
//!   relations/<id>/manifest.json  a stream's cold files (see [`cold`])
//!   cold/relations/<id>/...       Parquet files, unless --object-store points elsewhere
//! ```
//!
//! [`Storage::open`] reads the catalog and recovers every relation (log replay, torn tails
//! dropped), then removes what a crash left half-done: directories of relations the catalog does
//! not list (a crash inside CREATE or DROP) and cold files no manifest lists. A relation is
//! created by first making its directory and then committing the catalog, and dropped by first
//! committing the catalog and then deleting, so the catalog is always the truth.
//!
//! [`Relation`] is what the rest of the server holds: a stream ([`stream::StreamStore`], hot
//! tier in memory and cold tier in Parquet) or a table ([`table::TableStore`], keyed rows in
//! memory); both are durable before a write returns. The maintenance task
//! ([`Storage::spawn_maintenance`]) flushes, compacts and expires streams in the background.

pub mod codec;
pub mod cold;
pub mod log;
pub mod stream;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::TableProvider;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};

pub use crate::config::StorageConfig;
use crate::error::{Error, Result};
use cold::ColdStore;
pub use stream::StreamStore;
use stream::StreamTable;
pub use table::TableStore;
use table::{KeyedTable, OnConflict};

/// What kind of relation a definition describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelationKind {
    Stream,
    Table,
}

/// One column as stored in the catalog: the Arrow type in its textual form, which
/// `DataType::from_str` reads back exactly, and the field metadata (declared PostgreSQL types).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The durable definition of a stream or table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RelationDef {
    /// Assigned by [`Storage::create`]; names the relation's directory and files, so a dropped
    /// and recreated name never meets the old data.
    #[serde(default)]
    pub id: u64,
    pub kind: RelationKind,
    pub schema_name: String,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// A stream's event-time column (from `WATERMARK FOR col AS ...`).
    #[serde(default)]
    pub event_time: Option<String>,
    /// The watermark expression, as SQL text (`ts - INTERVAL '5' SECOND`).
    #[serde(default)]
    pub watermark: Option<String>,
    /// `WITH (...)` options, names lower-cased (`retention`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Options a stream accepts in `WITH (...)` and `ALTER STREAM ... SET (...)`: `retention`
/// (how long rows are kept) and `flush_age` (how long rows stay in memory before they go to
/// Parquet; the server's `storage.flush_age_ms` otherwise).
pub const STREAM_OPTIONS: &[&str] = &["retention", "flush_age"];

impl RelationDef {
    /// A definition from an Arrow schema.
    pub fn new(kind: RelationKind, schema_name: &str, name: &str, schema: &Schema) -> RelationDef {
        RelationDef {
            id: 0,
            kind,
            schema_name: schema_name.to_string(),
            name: name.to_string(),
            columns: schema
                .fields()
                .iter()
                .map(|f| ColumnDef {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    nullable: f.is_nullable(),
                    metadata: f.metadata().clone().into_iter().collect(),
                })
                .collect(),
            primary_key: Vec::new(),
            event_time: None,
            watermark: None,
            options: BTreeMap::new(),
        }
    }

    /// The Arrow schema the definition describes.
    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        let fields = self
            .columns
            .iter()
            .map(|c| {
                let data_type: DataType = c.data_type.parse().map_err(|e| {
                    Error::Storage(format!(
                        "catalog: column \"{}\" of \"{}\" has unreadable type \"{}\": {e}",
                        c.name, self.name, c.data_type
                    ))
                })?;
                Ok(Field::new(&c.name, data_type, c.nullable)
                    .with_metadata(c.metadata.clone().into_iter().collect()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The stream's retention, if set.
    pub fn retention(&self) -> Result<Option<Duration>> {
        self.options
            .get("retention")
            .map(|text| parse_duration(text))
            .transpose()
    }

    /// The stream's own flush age, if set.
    pub fn flush_age(&self) -> Result<Option<Duration>> {
        self.options
            .get("flush_age")
            .map(|text| parse_duration(text))
            .transpose()
    }

    /// The connector feeding this stream (`WITH (connector = ...)`), if any.
    pub fn connector(&self) -> Option<&str> {
        self.options
            .get(crate::connectors::CONNECTOR)
            .map(String::as_str)
    }

    /// Check options against what this kind accepts: the stream options, and with a
    /// `connector` the connector's own.
    pub fn validate_options(&self) -> Result<()> {
        match self.kind {
            RelationKind::Stream => check_stream_option_names(&self.options)?,
            RelationKind::Table => {
                if let Some(name) = self.options.keys().next() {
                    return Err(Error::InvalidValue(format!(
                        "unrecognized parameter \"{name}\" (a table accepts: none)"
                    )));
                }
            }
        }
        self.retention()?;
        self.flush_age()?;
        Ok(())
    }
}

/// Every option name is a stream option, `connector`, or an option of the named connector.
pub fn check_stream_option_names(options: &BTreeMap<String, String>) -> Result<()> {
    let connector_options = match options.get(crate::connectors::CONNECTOR) {
        Some(name) => crate::connectors::connector_options(name)?,
        None => &[],
    };
    for name in options.keys() {
        let known = STREAM_OPTIONS.contains(&name.as_str())
            || name == crate::connectors::CONNECTOR
            || crate::connectors::option_listed(connector_options, name);
        if !known {
            return Err(Error::InvalidValue(format!(
                "unrecognized parameter \"{name}\" (a stream accepts: {})",
                STREAM_OPTIONS
                    .iter()
                    .chain([&crate::connectors::CONNECTOR])
                    .chain(connector_options)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

/// A duration as people write it in SQL options: `30 days`, `12 hours`, `90 min`, `1 week`,
/// `45s`, `2 days 12 hours`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || {
        Error::InvalidValue(format!(
            "invalid duration \"{text}\" (use e.g. '30 days', '12 hours', '90 minutes')"
        ))
    };
    let mut total = 0u64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].to_ascii_lowercase();
        rest = rest[unit_len..].trim_start();
        let millis = match unit.as_str() {
            "ms" | "millisecond" | "milliseconds" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "w" | "week" | "weeks" => 604_800_000,
            _ => return Err(bad()),
        };
        total = number
            .checked_mul(millis)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// A stream or a table.
#[derive(Debug, Clone)]
pub enum Relation {
    Stream(Arc<StreamStore>),
    Table(Arc<TableStore>),
}

impl Relation {
    pub fn def(&self) -> RelationDef {
        match self {
            Relation::Stream(s) => s.def(),
            Relation::Table(t) => t.def(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        match self {
            Relation::Stream(s) => s.schema(),
            Relation::Table(t) => t.schema(),
        }
    }

    /// The DataFusion table for this relation.
    pub fn provider(&self) -> Arc<dyn TableProvider> {
        match self {
            Relation::Stream(s) => Arc::new(StreamTable::new(Arc::clone(s))),
            Relation::Table(t) => Arc::new(KeyedTable::new(Arc::clone(t))),
        }
    }

    /// The relation behind a provider made by [`Relation::provider`].
    pub fn of_provider(provider: &dyn TableProvider) -> Option<Relation> {
        if let Some(stream) = provider.downcast_ref::<StreamTable>() {
            return Some(Relation::Stream(Arc::clone(stream.store())));
        }
        provider
            .downcast_ref::<KeyedTable>()
            .map(|t| Relation::Table(Arc::clone(t.store())))
    }

    /// Refuse writes into a stream a connector feeds (checked before COPY or HTTP data is read,
    /// and again when rows are inserted).
    pub fn check_writable(&self) -> Result<()> {
        if let Relation::Stream(stream) = self
            && let Some(connector) = stream.def().connector()
        {
            return Err(Error::Unsupported(format!(
                "INSERT, COPY or HTTP writes into stream \"{}\" (its {connector} connector is its only writer)",
                stream.def().name
            )));
        }
        Ok(())
    }

    /// Insert rows atomically and durably (INSERT, COPY, HTTP: `path`): all of them or, on any
    /// error, none. Returns the row count.
    pub async fn insert(&self, batches: Vec<RecordBatch>, path: IngestPath) -> Result<u64> {
        self.check_writable()?;
        let schema = self.schema();
        let batches = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| table::conform(&schema, b))
            .collect::<Result<Vec<_>>>()?;
        for batch in &batches {
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                if !field.is_nullable() && column.null_count() > 0 {
                    return Err(Error::NotNullViolation(format!(
                        "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                        field.name(),
                        self.def().name
                    )));
                }
            }
        }
        match self {
            Relation::Stream(s) => s.append(path, batches).await,
            Relation::Table(t) => t.insert(batches, OnConflict::Error).await,
        }
    }
}

/// How rows reached a stream, for its ingest counters and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestPath {
    Insert,
    Copy,
    Http,
    /// The stream's connector (Nexmark, datagen, Kafka).
    Source,
}

impl IngestPath {
    pub const ALL: [IngestPath; 4] = [
        IngestPath::Insert,
        IngestPath::Copy,
        IngestPath::Http,
        IngestPath::Source,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IngestPath::Insert => "insert",
            IngestPath::Copy => "copy",
            IngestPath::Http => "http",
            IngestPath::Source => "source",
        }
    }
}

/// The hot tier's memory across all streams, and the signals between writers waiting for room
/// and the maintenance task that makes it.
#[derive(Debug)]
pub struct HotMemory {
    bytes: AtomicUsize,
    max_bytes: usize,
    flushed: Notify,
    wake_maintenance: Notify,
}

impl HotMemory {
    pub fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn sub(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.flushed.notify_waiters();
    }

    pub fn used(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn over_budget(&self) -> bool {
        self.used() > self.max_bytes
    }

    /// Wait while the hot tier is over its budget, waking the maintenance task to flush.
    pub async fn wait_for_room(&self) {
        while self.over_budget() {
            self.wake_maintenance.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(100), self.flushed.notified()).await;
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CatalogFile {
    next_id: u64,
    relations: Vec<RelationDef>,
    /// Materialized views, in creation order (a view only depends on older objects).
    #[serde(default)]
    views: Vec<ViewDef>,
    /// Models with their versions' records (the fitted models are blobs on the object store).
    #[serde(default)]
    models: Vec<ModelDef>,
    /// Sinks, in creation order.
    #[serde(default)]
    sinks: Vec<SinkDef>,
}

impl CatalogFile {
    /// Whether a relation or view already has this name (relations and views share names).
    fn name_taken(&self, schema: &str, name: &str) -> bool {
        self.relations
            .iter()
            .any(|r| r.schema_name == schema && r.name == name)
            || self
                .views
                .iter()
                .any(|v| v.schema_name == schema && v.name == name)
    }
}

/// A materialized view as stored: its query is planned again at every start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ViewDef {
    pub id: u64,
    pub schema_name: String,
    pub name: String,
    /// The defining query, as written.
    pub query: String,
    /// `EMIT ON WINDOW CLOSE`.
    pub emit_on_close: bool,
    /// Relations and views the query reads, as `schema.name`.
    pub depends_on: Vec<String>,
    /// Models the query applies (`PREDICT`, `DRIFT_*`), as `schema.name`, or `schema.name$n`
    /// when pinned to version n; found again at every start.
    #[serde(default)]
    pub models: Vec<String>,
    /// The online model (`schema.name`) this view's changes train instead of being kept.
    #[serde(default)]
    pub learns: Option<String>,
}

/// A sink as stored: what it sends where (`CREATE SINK name FROM from WITH (options)`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SinkDef {
    pub id: u64,
    pub schema_name: String,
    pub name: String,
    /// The view or stream it reads, as `schema.name`.
    pub from: String,
    pub options: Vec<(String, String)>,
    /// A stream sink's first position: the stream's length at CREATE SINK (rows appended
    /// before it are not sent). Recorded with the sink, so a crash cannot move it.
    #[serde(default)]
    pub start: Option<u64>,
}

/// A model as stored: how it is trained and the record of every version.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelDef {
    pub id: u64,
    pub schema_name: String,
    pub name: String,
    pub algorithm: String,
    /// The column it learns (`PREDICT col`); None for k-means.
    pub target: Option<String>,
    /// `WITH` options as given.
    pub options: Vec<(String, String)>,
    /// The training query, as written.
    pub query: String,
    pub versions: Vec<ModelVersion>,
    /// The version `PREDICT(m, ...)` uses.
    pub active: Option<u32>,
    /// Versions active before, most recent last (`ALTER MODEL ... ROLLBACK`).
    pub previously_active: Vec<u32>,
    /// A version scored beside the active one, for metrics only.
    pub shadow: Option<u32>,
    /// `CREATE MODEL MONITOR`s watching it.
    #[serde(default)]
    pub monitors: Vec<MonitorDef>,
    /// Drift its monitors found, oldest first (the newest [`DRIFT_EVENTS_KEPT`]).
    #[serde(default)]
    pub drift_events: Vec<DriftEvent>,
}

/// Drift events kept per model; older ones are forgotten.
pub const DRIFT_EVENTS_KEPT: usize = 1000;

/// A model monitor: a materialized view of per-window drift of the model's features over a
/// relation, and what to do when a window drifts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MonitorDef {
    /// Also the name of its view, in the model's schema.
    pub name: String,
    /// The relation watched, `schema.name`.
    pub source: String,
    pub time_column: String,
    pub window_ms: u64,
    /// `psi` or `ks`.
    pub statistic: String,
    pub threshold: f64,
    /// Windows with fewer rows are not judged.
    pub min_rows: u64,
    /// `alert`, `retrain` or `rollback`.
    pub on_drift: String,
    /// After an action, drift in windows starting less than this after the acted-on window's
    /// end is recorded without acting again.
    pub cooldown_ms: u64,
    /// The features watched (the model's numeric features).
    pub features: Vec<String>,
    pub options: Vec<(String, String)>,
    /// The start of the newest window that drifted and was recorded: windows up to it are not
    /// judged again (after a restart the monitor re-reads its whole view).
    #[serde(default)]
    pub judged_until: Option<i64>,
    /// The end of the window the monitor last acted on (retrain, rollback), for the cooldown.
    #[serde(default)]
    pub acted_at: Option<i64>,
}

/// A feature that drifted in one window of a monitor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DriftEvent {
    pub monitor: String,
    /// Window bounds, microseconds since the epoch.
    pub window_start: i64,
    pub window_end: i64,
    pub feature: String,
    pub statistic: String,
    pub value: f64,
    pub threshold: f64,
    pub rows: u64,
    /// The active version the window was measured against.
    pub version: Option<u32>,
    /// What the monitor did (`alert`, `retrained: version 3`, `rolled back to version 1`,
    /// `none (cooldown)`, or the error of a failed action).
    pub action: String,
    pub detected_at: String,
}

/// The record of one trained version; its fitted model is the blob [`ModelDef::blob_path`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelVersion {
    pub version: u32,
    pub created_at: String,
    /// The query it was trained on.
    pub query: String,
    /// Hyperparameters and options used, defaults filled in.
    pub options: Vec<(String, String)>,
    pub training_rows: u64,
    pub holdout_rows: u64,
    /// Holdout metrics (name, value).
    pub metrics: Vec<(String, f64)>,
    /// Its features, as `name (kind)`.
    pub features: String,
    pub blob_bytes: u64,
    pub training_ms: f64,
    /// The event-time range a windowed fit trained on (microseconds since the epoch).
    #[serde(default)]
    pub time_range: Option<(i64, i64)>,
    /// Whether it became the active version when it was trained.
    #[serde(default = "promoted_by_default")]
    pub promoted: bool,
}

/// Versions recorded before promotion policies were always activated.
fn promoted_by_default() -> bool {
    true
}

impl ModelDef {
    /// Where version `version`'s fitted model is on the object store.
    pub fn blob_path(&self, version: u32) -> String {
        format!("models/{}/{version:06}.model", self.id)
    }
}

/// All durable relations and the catalog that lists them.
#[derive(Debug)]
pub struct Storage {
    data_dir: PathBuf,
    config: StorageConfig,
    cold: Arc<ColdStore>,
    memory: Arc<HotMemory>,
    /// The committed catalog; held while changing it so changes are serialized.
    catalog: Mutex<CatalogFile>,
    relations: RwLock<HashMap<u64, Relation>>,
}

impl Storage {
    /// Open the storage under `data_dir`, recovering every relation.
    pub async fn open(
        data_dir: &Path,
        object_store: Option<&str>,
        config: StorageConfig,
    ) -> Result<Arc<Storage>> {
        let relations_dir = data_dir.join("relations");
        std::fs::create_dir_all(&relations_dir).map_err(|e| {
            Error::Storage(format!("could not create {}: {e}", relations_dir.display()))
        })?;
        let cold = Arc::new(ColdStore::open(object_store, &data_dir.join("cold"))?);
        let catalog_path = data_dir.join("catalog.json");
        let catalog: CatalogFile = match std::fs::read(&catalog_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Storage(format!(
                    "unreadable catalog {}: {e}",
                    catalog_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CatalogFile {
                next_id: 1,
                relations: Vec::new(),
                views: Vec::new(),
                models: Vec::new(),
                sinks: Vec::new(),
            },
            Err(e) => {
                return Err(Error::Storage(format!(
                    "could not read {}: {e}",
                    catalog_path.display()
                )));
            }
        };
        let memory = Arc::new(HotMemory {
            bytes: AtomicUsize::new(0),
            max_bytes: config.hot_max_bytes,
            flushed: Notify::new(),
            wake_maintenance: Notify::new(),
        });
        let storage = Storage {
            data_dir: data_dir.to_path_buf(),
            config,
            cold,
            memory,
            catalog: Mutex::new(CatalogFile::default()),
            relations: RwLock::new(HashMap::new()),
        };
        let mut relations = HashMap::new();
        for def in &catalog.relations {
            let relation = storage.open_relation(def.clone())?;
            if let Relation::Stream(stream) = &relation {
                let removed = stream.remove_unlisted_files().await?;
                if removed > 0 {
                    tracing::info!(stream = %def.name, files = removed, "removed cold files a crash left unlisted");
                }
            }
            relations.insert(def.id, relation);
        }
        storage.remove_orphan_dirs(&catalog)?;
        tracing::info!(
            relations = relations.len(),
            cold_tier = storage.cold.location(),
            "storage recovered"
        );
        *storage.relations.write().unwrap_or_else(|e| e.into_inner()) = relations;
        *storage.catalog.lock().unwrap_or_else(|e| e.into_inner()) = catalog;
        Ok(Arc::new(storage))
    }

    /// Make the cold tier readable by DataFusion plans run on `runtime`.
    pub fn register_object_store(&self, runtime: &datafusion::execution::runtime_env::RuntimeEnv) {
        self.cold.register(runtime);
    }

    fn relation_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join("relations").join(id.to_string())
    }

    fn open_relation(&self, def: RelationDef) -> Result<Relation> {
        let dir = self.relation_dir(def.id);
        Ok(match def.kind {
            RelationKind::Stream => Relation::Stream(Arc::new(StreamStore::open(
                def,
                dir,
                &self.config,
                Arc::clone(&self.cold),
                Arc::clone(&self.memory),
            )?)),
            RelationKind::Table => {
                Relation::Table(Arc::new(TableStore::open(def, dir, &self.config)?))
            }
        })
    }

    fn remove_orphan_dirs(&self, catalog: &CatalogFile) -> Result<()> {
        let dir = self.data_dir.join("relations");
        let listed: std::collections::HashSet<String> =
            catalog.relations.iter().map(|r| r.id.to_string()).collect();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::Storage(format!("could not list {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !listed.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "removing data of a relation the catalog does not list");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn commit_catalog(&self, catalog: &CatalogFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(catalog)
            .map_err(|e| Error::Internal(format!("catalog encoding: {e}")))?;
        cold::write_atomically(&self.data_dir.join("catalog.json"), &bytes)
    }

    /// Every relation, in creation order.
    pub fn relations(&self) -> Vec<Relation> {
        let relations = self.relations.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Relation> = relations.values().cloned().collect();
        all.sort_by_key(|r| r.def().id);
        all
    }

    /// Create a relation durably; the definition's id is assigned here.
    pub fn create(&self, mut def: RelationDef) -> Result<Relation> {
        def.validate_options()?;
        def.arrow_schema()?;
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if catalog.name_taken(&def.schema_name, &def.name) {
            // Two sessions creating one name at once: the second finds the first's here.
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: def.name,
            });
        }
        def.id = catalog.next_id;
        let relation = self.open_relation(def.clone())?;
        catalog.next_id += 1;
        catalog.relations.push(def.clone());
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.relations.pop();
            return Err(e);
        }
        self.relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(def.id, relation.clone());
        Ok(relation)
    }

    /// Replace a relation's definition (ALTER ... SET); kind, id and columns stay.
    pub fn alter(&self, def: RelationDef) -> Result<()> {
        def.validate_options()?;
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let Some(position) = catalog.relations.iter().position(|r| r.id == def.id) else {
            return Err(Error::NotFound {
                kind: "relation",
                name: def.name,
            });
        };
        let previous = std::mem::replace(&mut catalog.relations[position], def.clone());
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.relations[position] = previous;
            return Err(e);
        }
        if let Some(Relation::Stream(s)) = self
            .relations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&def.id)
        {
            s.set_def(def);
        }
        Ok(())
    }

    /// Drop a relation: forget it in the catalog, then delete its data.
    pub async fn drop_relation(&self, id: u64) -> Result<()> {
        {
            let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
            let before = catalog.relations.clone();
            catalog.relations.retain(|r| r.id != id);
            if let Err(e) = self.commit_catalog(&catalog) {
                catalog.relations = before;
                return Err(e);
            }
        }
        let relation = self
            .relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let dir = self.relation_dir(id);
        let removed = match relation {
            Some(Relation::Stream(s)) => s.destroy(&dir).await,
            Some(Relation::Table(t)) => t.destroy(&dir),
            None => Ok(()),
        };
        if let Err(e) = removed {
            // The catalog no longer lists it; the next start removes what is left.
            tracing::warn!(error = %e, id, "could not remove all data of a dropped relation");
        }
        Ok(())
    }

    /// Every materialized view, in creation order.
    /// The object store of the cold tier (also where checkpoints go).
    pub fn cold_store(&self) -> &Arc<ColdStore> {
        &self.cold
    }

    pub fn views(&self) -> Vec<ViewDef> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .clone()
    }

    /// Record a materialized view durably; its id is assigned here.
    pub fn create_view(&self, mut def: ViewDef) -> Result<ViewDef> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if catalog.name_taken(&def.schema_name, &def.name) {
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: def.name,
            });
        }
        def.id = catalog.next_id;
        catalog.next_id += 1;
        catalog.views.push(def.clone());
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.views.pop();
            catalog.next_id -= 1;
            return Err(e);
        }
        Ok(def)
    }

    /// Forget a materialized view durably.
    pub fn drop_view(&self, id: u64) -> Result<()> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let before = catalog.views.clone();
        catalog.views.retain(|v| v.id != id);
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.views = before;
            return Err(e);
        }
        Ok(())
    }

    /// Every sink, in creation order.
    pub fn sinks(&self) -> Vec<SinkDef> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sinks
            .clone()
    }

    /// Record a sink durably; its id is assigned here.
    pub fn create_sink(&self, mut def: SinkDef) -> Result<SinkDef> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if catalog
            .sinks
            .iter()
            .any(|s| s.schema_name == def.schema_name && s.name == def.name)
        {
            return Err(Error::AlreadyExists {
                kind: "sink",
                name: def.name,
            });
        }
        def.id = catalog.next_id;
        catalog.next_id += 1;
        catalog.sinks.push(def.clone());
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.sinks.pop();
            catalog.next_id -= 1;
            return Err(e);
        }
        Ok(def)
    }

    /// Forget a sink durably, with its position file.
    pub fn drop_sink(&self, id: u64) -> Result<()> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let before = catalog.sinks.clone();
        catalog.sinks.retain(|s| s.id != id);
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.sinks = before;
            return Err(e);
        }
        Ok(())
    }

    /// Where a sink keeps what it has delivered (its pending transaction beside it).
    pub fn sink_position_path(&self, id: u64) -> PathBuf {
        let dir = self.data_dir.join("sinks");
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{id}.position"))
    }

    /// Every model, in creation order.
    pub fn models(&self) -> Vec<ModelDef> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .models
            .clone()
    }

    /// Record a model (new: id 0, assigned here) or its new state (same id), durably.
    pub fn put_model(&self, mut def: ModelDef) -> Result<ModelDef> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let before = (catalog.next_id, catalog.models.clone());
        if def.id == 0 {
            if catalog
                .models
                .iter()
                .any(|m| m.schema_name == def.schema_name && m.name == def.name)
            {
                return Err(Error::AlreadyExists {
                    kind: "model",
                    name: def.name,
                });
            }
            def.id = catalog.next_id;
            catalog.next_id += 1;
            catalog.models.push(def.clone());
        } else {
            let Some(slot) = catalog.models.iter_mut().find(|m| m.id == def.id) else {
                return Err(Error::NotFound {
                    kind: "model",
                    name: def.name,
                });
            };
            *slot = def.clone();
        }
        if let Err(e) = self.commit_catalog(&catalog) {
            (catalog.next_id, catalog.models) = before;
            return Err(e);
        }
        Ok(def)
    }

    /// Forget a model durably.
    pub fn drop_model(&self, id: u64) -> Result<()> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let before = catalog.models.clone();
        catalog.models.retain(|m| m.id != id);
        if let Err(e) = self.commit_catalog(&catalog) {
            catalog.models = before;
            return Err(e);
        }
        Ok(())
    }

    /// Views whose query reads `schema.name`.
    pub fn dependents(&self, qualified: &str) -> Vec<String> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .iter()
            .filter(|v| v.depends_on.iter().any(|d| d == qualified))
            .map(|v| v.name.clone())
            .collect()
    }

    /// Run flush, compaction, retention and file cleanup until `stop` turns true.
    pub fn spawn_maintenance(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let storage = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(storage.config.maintenance_interval()) => {}
                    _ = storage.memory.wake_maintenance.notified() => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    break;
                }
                storage.maintain().await;
            }
        });
    }

    /// One round of background work over every stream; errors are logged and retried next
    /// round (an unreachable object store leaves data in memory and in the log).
    pub async fn maintain(&self) {
        let over_budget = self.memory.over_budget();
        let mut streams: Vec<Arc<StreamStore>> = self
            .relations()
            .into_iter()
            .filter_map(|r| match r {
                Relation::Stream(s) => Some(s),
                Relation::Table(_) => None,
            })
            .collect();
        // Over budget, the biggest hot tiers go first.
        streams.sort_by_key(|s| std::cmp::Reverse(s.hot_bytes()));
        for stream in streams {
            let name = stream.def().name;
            if stream.wants_flush(&self.config, over_budget) {
                match stream.flush().await {
                    Ok(_) => stream.counters.flushes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(stream = %name, error = %e, "flush to the cold tier failed; will retry");
                        continue;
                    }
                };
            }
            match stream
                .compact(
                    self.config.compact_min_files,
                    self.config.compact_target_bytes,
                )
                .await
            {
                Ok(0) => {}
                Ok(_) => {
                    stream.counters.compactions.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "compaction failed; will retry");
                }
            }
            if let Err(e) = stream.expire().await {
                tracing::warn!(stream = %name, error = %e, "retention failed; will retry");
            }
            if let Err(e) = stream.bury().await {
                tracing::warn!(stream = %name, error = %e, "deleting compacted files failed; will retry");
            }
        }
    }
}

/// The sink behind INSERT into a stream or table: the whole statement's rows are inserted as one
/// atomic, durable write.
#[derive(Debug)]
pub struct InsertSink {
    relation: Relation,
    schema: SchemaRef,
}

impl InsertSink {
    pub fn new(relation: Relation) -> InsertSink {
        // Every column nullable: NOT NULL is checked by [`Relation::insert`], which names the
        // column the way PostgreSQL does, rather than by DataFusion's sink.
        let fields: Vec<Field> = relation
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        InsertSink {
            relation,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

impl DisplayAs for InsertSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InsertSink: {}", self.relation.def().name)
    }
}

#[async_trait]
impl DataSink for InsertSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::error::Result<u64> {
        let mut batches = Vec::new();
        while let Some(batch) = data.next().await {
            batches.push(batch?);
        }
        Ok(self.relation.insert(batches, IngestPath::Insert).await?)
    }
}

type Mutation = Box<dyn FnOnce() -> BoxFuture<'static, Result<u64>> + Send>;

/// A DELETE, UPDATE or TRUNCATE run when its plan executes (not when it is planned, so
/// `EXPLAIN DELETE` changes nothing), reporting the affected rows like an insert does.
pub struct MutationSink {
    mutation: Mutex<Option<Mutation>>,
    schema: SchemaRef,
}

impl std::fmt::Debug for MutationSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MutationSink")
    }
}

impl MutationSink {
    /// A plan that runs `mutation` once when executed.
    pub fn plan(
        mutation: impl FnOnce() -> BoxFuture<'static, Result<u64>> + Send + 'static,
    ) -> Arc<dyn ExecutionPlan> {
        // The sink reads nothing: its input is an empty plan of no columns.
        let schema = Arc::new(Schema::empty());
        let sink = MutationSink {
            mutation: Mutex::new(Some(Box::new(mutation))),
            schema: Arc::clone(&schema),
        };
        let nothing = Arc::new(EmptyExec::new(schema));
        Arc::new(DataSinkExec::new(nothing, Arc::new(sink), None))
    }
}

impl DisplayAs for MutationSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MutationSink")
    }
}

#[async_trait]
impl DataSink for MutationSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        _data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::error::Result<u64> {
        let mutation = self
            .mutation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match mutation {
            Some(run) => Ok(run().await?),
            None => Err(Error::Internal("a mutation plan ran twice".to_string()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30 days").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("2 weeks").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn arrow_types_round_trip_through_the_catalog() {
        use datafusion::arrow::datatypes::{IntervalUnit, TimeUnit};
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("n", DataType::Decimal128(12, 3), true),
            Field::new("i", DataType::Interval(IntervalUnit::MonthDayNano), true),
            Field::new(
                "l",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ),
            Field::new("j", DataType::Utf8, true)
                .with_metadata([("eddy.pg_type".to_string(), "jsonb".to_string())].into()),
        ]);
        let def = RelationDef::new(RelationKind::Table, "public", "t", &schema);
        let json = serde_json::to_string(&def).unwrap();
        let back: RelationDef = serde_json::from_str(&json).unwrap();
        assert_eq!(back.arrow_schema().unwrap().as_ref(), &schema);
    }
}
