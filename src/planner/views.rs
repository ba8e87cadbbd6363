//! Materialized views: `CREATE` (plan, compile to a dataflow, store, backfill), `DROP`, `SHOW`,
//! `EXPLAIN`, `SUBSCRIBE`, and the `eddy_catalog` tables that show how views are doing.
//!
//! A view's query is planned by DataFusion like any SELECT (so names, types and errors are the
//! ones an ad-hoc query gets), checked for time-dependent functions before the optimizer folds
//! them, optimized, and compiled by [`crate::streaming::plan`]. The definition is stored in the
//! catalog file; at start every stored view is compiled again and restored from its newest
//! checkpoint, or rebuilt from its inputs' stored history. An online model's view
//! ([`crate::ml::online`]) hands its changes to the model's learner instead of keeping rows.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::execution::SessionState;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::ObjectName;

use super::{Engine, Output, Progress, qualified};
use crate::catalog::QualifiedName;
use crate::error::{Error, Result};
use crate::ml::online::Learner;
use crate::parser::extensions::{CreateView, Subscribe, SubscribeTarget};
use crate::storage::ViewDef;
use crate::streaming::checkpoint::Checkpoints;
use crate::streaming::operators::LateRows;
use crate::streaming::plan::{Compiled, Feed, check_deterministic, compile};
use crate::streaming::runtime;
use crate::streaming::subscribe::{SubscribeOptions, Subscription};
use crate::streaming::view::{Status, View};

pub(super) fn name_of(name: &ObjectName) -> Result<QualifiedName> {
    qualified(&object_name_to_table_reference(name.clone(), true)?)
}

impl Engine {
    /// Plan and compile a view query.
    async fn compile_view(
        &self,
        state: &SessionState,
        query: &str,
        emit_on_close: bool,
        late: Arc<LateRows>,
    ) -> Result<Compiled> {
        let statements = crate::parser::parse(query)?;
        let [crate::parser::Statement::DataFusion(statement)] = statements.as_slice() else {
            return Err(Error::Unsupported(
                "a materialized view defined by anything but one SELECT".to_string(),
            ));
        };
        let plan = self.plan(state, statement, &[]).await?;
        check_deterministic(&plan)?;
        let unpinned = crate::ml::functions::unpinned_models(&plan);
        let mut models: Vec<String> = crate::ml::functions::model_references(&plan, true)
            .iter()
            .filter_map(|reference| crate::ml::registry::parse_reference(reference).ok())
            .map(|(qualified, pinned)| match pinned {
                Some(version) => format!("{qualified}${version}"),
                None => qualified,
            })
            .collect();
        models.sort();
        models.dedup();
        let plan = state.optimize(&plan)?;
        let mut compiled = compile(state, &plan, emit_on_close, late).await?;
        // Rows retracted later must be scored as they were when added: over inputs that
        // change, a model switch under the view would retract rows it never emitted.
        if let Some(model) = unpinned.first()
            && compiled.feeds.iter().any(|f| !matches!(f, Feed::Stream(_)))
        {
            return Err(Error::Unsupported(format!(
                "PREDICT with the active version of \"{model}\" in a view that reads a table or \
                 another view (pin the version, PREDICT({model}$n, ...): rows such a view \
                 retracts must be scored by the version that scored them)"
            )));
        }
        compiled.models = models;
        // Result columns are named as PostgreSQL names them (count, sum, ...).
        compiled.schema = super::with_postgres_column_names(statement, compiled.schema);
        let mut seen = std::collections::HashSet::new();
        for field in compiled.schema.fields() {
            if !seen.insert(field.name().clone()) {
                return Err(Error::AlreadyExists {
                    kind: "column",
                    name: field.name().clone(),
                });
            }
        }
        Ok(compiled)
    }

    /// `CREATE MATERIALIZED VIEW`: returns once the view has processed its inputs' history.
    pub async fn create_view(
        &self,
        state: &SessionState,
        create: &CreateView,
        progress: &Progress,
    ) -> Result<Output> {
        let name = name_of(&create.name)?;
        if self.catalog.table(&name).await.is_ok() {
            if create.if_not_exists {
                return Ok(Output::Command {
                    tag: "CREATE MATERIALIZED VIEW".to_string(),
                });
            }
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: name.name,
            });
        }
        let def = ViewDef {
            id: 0,
            schema_name: name.schema.clone(),
            name: name.name.clone(),
            query: create.query.clone(),
            emit_on_close: create.emit_on_close,
            depends_on: Vec::new(),
            models: Vec::new(),
            learns: None,
        };
        self.create_view_from(state, def, progress).await?;
        Ok(Output::Command {
            tag: "CREATE MATERIALIZED VIEW".to_string(),
        })
    }

    /// Record, start and backfill a new view; returns once it has processed its inputs'
    /// history, reporting progress every second. A view that fails meanwhile is dropped.
    pub(super) async fn create_view_from(
        &self,
        state: &SessionState,
        def: ViewDef,
        progress: &Progress,
    ) -> Result<Arc<View>> {
        let name = QualifiedName {
            schema: def.schema_name.clone(),
            name: def.name.clone(),
        };
        let view = self.start_view(state, def, true).await?;
        // The view answers queries once its backfill is done, as a table would after CTAS;
        // meanwhile its progress is reported every second.
        progress.report(format!(
            "materialized view \"{}\": reading the stored history of {}",
            view.def.name,
            view.def.depends_on.join(", ")
        ));
        let status = {
            let backfilled = view.backfilled();
            tokio::pin!(backfilled);
            let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
            every_second.tick().await;
            loop {
                tokio::select! {
                    status = &mut backfilled => break status,
                    _ = every_second.tick() => {
                        let stats = view.stats();
                        progress.report(format!(
                            "materialized view \"{}\": backfilled {} of {} input rows",
                            view.def.name, stats.backfill_rows, stats.backfill_total
                        ));
                    }
                }
            }
        };
        if let Status::Failed(e) = status {
            // No half-made view stays behind.
            let _ = self.catalog.drop_view(&name, true).await;
            return Err(Error::Internal(format!(
                "materialized view \"{}\" failed while reading its inputs: {e}",
                view.def.name
            )));
        }
        Ok(view)
    }

    /// How views run: checkpointed (stored views) on the cold tier's object store.
    fn run_options(&self, checkpointed: bool) -> runtime::RunOptions {
        let every = self.streaming.checkpoint_interval_ms;
        runtime::RunOptions {
            verify_snapshots: self.streaming.verify_snapshots,
            checkpoints: (checkpointed && every > 0).then(|| {
                (
                    Checkpoints::new(Arc::clone(self.catalog.storage().cold_store())),
                    std::time::Duration::from_millis(every),
                )
            }),
        }
    }

    /// Compile, (with `store`) record, register and run a view.
    async fn start_view(
        &self,
        state: &SessionState,
        mut def: ViewDef,
        store: bool,
    ) -> Result<Arc<View>> {
        let late = Arc::new(LateRows::default());
        let compiled = self
            .compile_view(state, &def.query, def.emit_on_close, Arc::clone(&late))
            .await?;
        def.depends_on = compiled.feeds.iter().map(|f| f.qualified_name()).collect();
        def.depends_on.dedup();
        def.models = compiled.models.clone();
        // An online model's view trains it instead of keeping rows.
        let learner = match &def.learns {
            Some(model) => {
                let model = self.models().get(model).ok_or_else(|| Error::NotFound {
                    kind: "model",
                    name: model.clone(),
                })?;
                let learner = Learner::new(&model.def(), &compiled.schema)?;
                Some((model, Arc::new(std::sync::Mutex::new(learner))))
            }
            None => None,
        };
        if store {
            def = self.catalog.storage().create_view(def)?;
        }
        let view = View::new(
            def,
            Arc::clone(&compiled.schema),
            compiled.dataflow.describe(),
            late,
        )?;
        if let Some((model, learner)) = learner {
            view.set_sink(Box::new(Arc::clone(&learner)));
            model.set_learner(learner);
        }
        self.catalog.register_view(Arc::clone(&view))?;
        // Stored views are checkpointed; a subscription's private view is not.
        runtime::spawn(
            Arc::clone(&view),
            compiled.dataflow,
            compiled.feeds,
            self.run_options(true),
        );
        Ok(view)
    }

    /// `CHECKPOINT`: every materialized view takes a checkpoint now; returns once all are
    /// complete. A view still backfilling is checkpointed when its backfill ends; a failed view
    /// has nothing to checkpoint and is passed over.
    pub async fn checkpoint(&self) -> Result<Output> {
        if self.streaming.checkpoint_interval_ms == 0 {
            return Err(Error::NotInPrerequisiteState(
                "checkpoints are off (streaming.checkpoint_interval_ms = 0)".to_string(),
            ));
        }
        let pending: Vec<_> = self
            .catalog
            .views()
            .all()
            .iter()
            .filter(|view| !matches!(view.status(), Status::Failed(_)))
            .filter_map(|view| view.request_checkpoint())
            .collect();
        for answer in futures::future::join_all(pending).await {
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::Storage(e)),
                // The view was dropped meanwhile.
                Err(_) => {}
            }
        }
        Ok(Output::Command {
            tag: "CHECKPOINT".to_string(),
        })
    }

    /// Start every stored view (at server start), in creation order.
    pub async fn start_stored_views(&self) {
        // Views may PREDICT with them.
        self.models().load().await;
        let state = self.ctx.state();
        for def in self.catalog.storage().views() {
            let name = def.name.clone();
            if let Err(e) = self.start_view(&state, def, false).await {
                tracing::error!(view = %name, error = %e, "stored materialized view could not be started");
            }
        }
    }

    pub async fn drop_views(&self, names: &[ObjectName], if_exists: bool) -> Result<Output> {
        for name in names {
            let name = name_of(name)?;
            if let Some(monitor) = self.monitor_of_view(&name) {
                return Err(Error::DependentObjects(format!(
                    "materialized view \"{}\" is the view of model monitor \"{monitor}\" (DROP MODEL MONITOR {monitor} drops both)",
                    name.name
                )));
            }
            let sinks = self.sinks_reading(&name);
            if !sinks.is_empty() {
                return Err(Error::DependentObjects(format!(
                    "materialized view \"{}\" is read by sink {} (DROP SINK first)",
                    name.name,
                    sinks.join(", ")
                )));
            }
            if let Some(model) = self.learner_of_view(&name) {
                return Err(Error::DependentObjects(format!(
                    "materialized view \"{}\" trains online model \"{model}\" (DROP MODEL {model} drops both)",
                    name.name
                )));
            }
            self.catalog.drop_view(&name, if_exists).await?;
        }
        Ok(Output::Command {
            tag: "DROP MATERIALIZED VIEW".to_string(),
        })
    }

    pub async fn explain_create_view(
        &self,
        state: &SessionState,
        create: &CreateView,
    ) -> Result<Output> {
        let compiled = self
            .compile_view(state, &create.query, create.emit_on_close, Arc::default())
            .await?;
        Ok(plan_rows(compiled.dataflow.describe()))
    }

    pub fn explain_view(&self, name: &ObjectName) -> Result<Output> {
        let view = self.catalog.view(&name_of(name)?)?;
        Ok(plan_rows(view.plan.clone()))
    }

    pub fn show_views(&self) -> Result<Output> {
        let batch = materialized_views(&self.catalog.views().all())?;
        Ok(Output::Rows {
            schema: batch.schema(),
            batches: vec![batch],
            verb: "SHOW",
        })
    }

    /// Open a subscription to a view or to a query (run as a private view).
    pub async fn subscribe(
        &self,
        state: &SessionState,
        subscribe: &Subscribe,
    ) -> Result<Subscription> {
        let options = SubscribeOptions::parse(&subscribe.options, subscribe.as_of)?;
        match &subscribe.target {
            SubscribeTarget::View(name) => {
                let view = self.catalog.view(&name_of(name)?)?;
                Subscription::open(view, false, &options)
            }
            SubscribeTarget::Query(query) => {
                let late = Arc::new(LateRows::default());
                let compiled = self
                    .compile_view(state, query, false, Arc::clone(&late))
                    .await?;
                let def = ViewDef {
                    id: 0,
                    schema_name: String::new(),
                    name: "subscribe".to_string(),
                    query: query.clone(),
                    emit_on_close: false,
                    depends_on: Vec::new(),
                    models: Vec::new(),
                    learns: None,
                };
                let view = View::new(
                    def,
                    Arc::clone(&compiled.schema),
                    compiled.dataflow.describe(),
                    late,
                )?;
                // Stopped when dropped, also if the client goes away during the backfill.
                let mut guard = StopOnDrop(Some(Arc::clone(&view)));
                runtime::spawn(
                    Arc::clone(&view),
                    compiled.dataflow,
                    compiled.feeds,
                    self.run_options(false),
                );
                view.backfilled().await;
                // From here the subscription owns the view and stops it when dropped.
                let subscription = Subscription::open(Arc::clone(&view), true, &options)?;
                guard.0 = None;
                Ok(subscription)
            }
        }
    }
}

/// Stops a private view when dropped, unless emptied.
struct StopOnDrop(Option<Arc<View>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(view) = &self.0 {
            view.stop();
        }
    }
}

fn plan_rows(lines: Vec<String>) -> Output {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "QUERY PLAN",
        DataType::Utf8,
        false,
    )]));
    let column: ArrayRef = Arc::new(StringArray::from(lines));
    match RecordBatch::try_new(Arc::clone(&schema), vec![column]) {
        Ok(batch) => Output::Rows {
            schema,
            batches: vec![batch],
            verb: "EXPLAIN",
        },
        Err(e) => Output::Command {
            tag: format!("EXPLAIN failed: {e}"),
        },
    }
}

/// The type of the system tables' time columns: microseconds, UTC.
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A time column of the system tables from microseconds since the epoch.
pub(crate) fn timestamp_array(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// `eddy_catalog.materialized_views` and `SHOW MATERIALIZED VIEWS`.
pub fn materialized_views(views: &[Arc<View>]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("backfill_rows", DataType::UInt64, false),
        Field::new("backfill_total", DataType::UInt64, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("late_rows", DataType::UInt64, false),
        Field::new("watermark", timestamp_type(), true),
        Field::new("state_bytes", DataType::UInt64, false),
        Field::new("input_rows", DataType::UInt64, false),
        Field::new("latency_p50_ms", DataType::Float64, true),
        Field::new("latency_p99_ms", DataType::Float64, true),
        Field::new("last_checkpoint", timestamp_type(), true),
        Field::new("checkpoint_bytes", DataType::UInt64, false),
        Field::new("checkpoint_ms", DataType::Float64, true),
        Field::new("restored_from", timestamp_type(), true),
        Field::new("recovery_ms", DataType::Float64, true),
        Field::new("emit_on_window_close", DataType::Boolean, false),
        Field::new("definition", DataType::Utf8, false),
    ]));
    let stats: Vec<_> = views.iter().map(|v| v.stats()).collect();
    let status: Vec<String> = views
        .iter()
        .map(|v| match v.status() {
            Status::Backfilling => "backfilling".to_string(),
            Status::Running => "running".to_string(),
            Status::Failed(e) => format!("failed: {e}"),
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            views.iter().map(|v| v.def.name.clone()),
        )),
        Arc::new(StringArray::from(status)),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.backfill_rows),
        )),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.backfill_total),
        )),
        Arc::new(UInt64Array::from_iter_values(stats.iter().map(|s| s.rows))),
        Arc::new(UInt64Array::from_iter_values(
            views.iter().map(|v| v.late.count()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(stats.iter().map(|s| s.watermark).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.state_bytes as u64),
        )),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.input_rows),
        )),
        Arc::new(Float64Array::from_iter(
            stats.iter().map(|s| s.latency_ms.map(|l| l.0)),
        )),
        Arc::new(Float64Array::from_iter(
            stats.iter().map(|s| s.latency_ms.map(|l| l.1)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                stats
                    .iter()
                    .map(|s| s.checkpoint.last.map(|ms| ms.saturating_mul(1000)))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.checkpoint.bytes),
        )),
        Arc::new(Float64Array::from_iter(
            stats
                .iter()
                .map(|s| s.checkpoint.last.map(|_| s.checkpoint.duration_ms)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                stats
                    .iter()
                    .map(|s| s.checkpoint.restored_from.map(|ms| ms.saturating_mul(1000)))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter(
            stats.iter().map(|s| s.checkpoint.recovery_ms),
        )),
        Arc::new(BooleanArray::from(
            views
                .iter()
                .map(|v| v.def.emit_on_close)
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            views.iter().map(|v| v.def.query.clone()),
        )),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `eddy_catalog.late_rows`: the most recent late rows of every view.
pub fn late_rows(views: &[Arc<View>]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("event_time", timestamp_type(), false),
        Field::new("watermark", timestamp_type(), false),
        Field::new("arrived", timestamp_type(), false),
        Field::new("row", DataType::Utf8, false),
    ]));
    let mut view_names = Vec::new();
    let mut streams = Vec::new();
    let mut times = Vec::new();
    let mut marks = Vec::new();
    let mut arrived = Vec::new();
    let mut rows = Vec::new();
    for view in views {
        for late in view.late.recent() {
            view_names.push(view.def.name.clone());
            streams.push(late.stream);
            times.push(late.event_time);
            marks.push(late.watermark);
            arrived.push(late.arrived);
            rows.push(late.row);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(view_names)),
        Arc::new(StringArray::from(streams)),
        Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(marks).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(arrived).with_timezone("UTC")),
        Arc::new(StringArray::from(rows)),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The schema of a system table (for registering it before any view exists).
pub fn system_schema(table: &str) -> Result<SchemaRef> {
    Ok(match table {
        "materialized_views" => materialized_views(&[])?.schema(),
        _ => late_rows(&[])?.schema(),
    })
}
