//! Model monitors: `CREATE MODEL MONITOR name ON MODEL m FROM relation WITH (...)`,
//! `DROP MODEL MONITOR`, `SHOW MODEL MONITORS`, and the system tables
//! `eddy_catalog.model_monitors` and `eddy_catalog.drift_events`.
//!
//! A monitor is two parts. Its measurements are an ordinary materialized view, named after the
//! monitor, that computes per tumbling event-time window the row count and the drift (PSI or
//! KS, [`crate::ml::drift`]) of each of the model's numeric features against the active
//! version's training baseline, emitted when the window closes:
//!
//! ```sql
//! SELECT window_start, window_end, count(*) AS row_count, DRIFT_PSI('public.m', 'x', x) AS x, ...
//! FROM TUMBLE(source, ts, INTERVAL '60000 milliseconds') GROUP BY window_start, window_end
//! EMIT ON WINDOW CLOSE
//! ```
//!
//! so it is checkpointed, restored and queryable like any view. Its judgement is a task that
//! reads the view (its rows, then every change) and, for each closed window of at least
//! `min_rows` rows where a feature's drift exceeds `threshold`, records one drift event per
//! drifted feature in the model's record and acts: `alert` (log and event only), `retrain`
//! (`RETRAIN MODEL`, the model's own query) or `rollback` (`ALTER MODEL ... ROLLBACK`), at most
//! once per `cooldown`. The monitor's record keeps the newest drifted window it recorded and
//! the window it last acted on, written with the events in one catalog change: after a restart
//! the task re-reads the view and skips what it recorded, so it never records or acts twice.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::execution::SessionState;
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use super::views::{name_of, timestamp_type};
use super::{Engine, Output, Progress};
use crate::catalog::QualifiedName;
use crate::error::{Error, Result};
use crate::ml::features::FeatureKind;
use crate::ml::registry::Model;
use crate::parser::extensions::{CreateMonitor, CreateView, RetrainModel};
use crate::storage::{DriftEvent, MonitorDef};
use crate::streaming::view::ViewEvent;

/// Options `CREATE MODEL MONITOR` accepts.
const OPTIONS: &[&str] = &[
    "window",
    "statistic",
    "threshold",
    "min_rows",
    "on_drift",
    "cooldown",
    "time_column",
    "features",
];

/// The view column with each window's row count.
const ROW_COUNT: &str = "row_count";

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
    }
}

fn bad(name: &str, value: &str, want: &str) -> Error {
    Error::InvalidValue(format!(
        "invalid value for model monitor option \"{name}\": \"{value}\" ({want})"
    ))
}

/// A SQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn object_name(name: &QualifiedName) -> ObjectName {
    ObjectName(vec![
        ObjectNamePart::Identifier(Ident::with_quote('"', &name.schema)),
        ObjectNamePart::Identifier(Ident::with_quote('"', &name.name)),
    ])
}

impl Engine {
    /// `CREATE MODEL MONITOR`: creates the monitor's view (backfilled over the relation's
    /// history), records the monitor and starts judging.
    pub async fn create_monitor(
        self: &Arc<Self>,
        state: &SessionState,
        create: &CreateMonitor,
        progress: &Progress,
    ) -> Result<(Output, Vec<String>)> {
        let name = name_of(&create.name)?;
        let model = self.model(&create.model)?;
        let model_def = model.def();
        if self.models().monitor(&name.schema, &name.name).is_some() {
            if create.if_not_exists {
                let notice = format!("model monitor \"{}\" already exists, skipping", name.name);
                return Ok((command("CREATE MODEL MONITOR"), vec![notice]));
            }
            return Err(Error::AlreadyExists {
                kind: "model monitor",
                name: name.name,
            });
        }
        if name.schema != model_def.schema_name {
            return Err(Error::InvalidValue(format!(
                "model monitor \"{}\" must be in the schema of model \"{}\" ({})",
                name.name, model_def.name, model_def.schema_name
            )));
        }
        for (option, _) in &create.options {
            if !OPTIONS.contains(&option.as_str()) {
                return Err(Error::InvalidValue(format!(
                    "unrecognized model monitor option \"{option}\" (known: {})",
                    OPTIONS.join(", ")
                )));
            }
        }
        let option = |key: &str| {
            create
                .options
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let duration_ms = |key: &str, default: u64| -> Result<u64> {
            match option(key) {
                None => Ok(default),
                Some(text) => {
                    let ms = crate::storage::parse_duration(text)?.as_millis() as u64;
                    if ms == 0 {
                        return Err(bad(key, text, "longer than zero"));
                    }
                    Ok(ms)
                }
            }
        };
        let window_ms = duration_ms("window", 60_000)?;
        let statistic = option("statistic").unwrap_or("psi").to_ascii_lowercase();
        if statistic != "psi" && statistic != "ks" {
            return Err(bad("statistic", &statistic, "psi or ks"));
        }
        let threshold = match option("threshold") {
            None if statistic == "psi" => 0.25,
            None => 0.2,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| bad("threshold", text, "a number above zero"))?,
        };
        let min_rows = match option("min_rows") {
            None => 100,
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("min_rows", text, "a whole number"))?,
        };
        let on_drift = option("on_drift").unwrap_or("alert").to_ascii_lowercase();
        if !["alert", "retrain", "rollback"].contains(&on_drift.as_str()) {
            return Err(bad("on_drift", &on_drift, "alert, retrain or rollback"));
        }
        let cooldown_ms = duration_ms("cooldown", window_ms.saturating_mul(10))?;
        // The relation and its event-time column.
        let source = name_of(&create.source)?;
        let table = self.catalog.table(&source).await?;
        let schema = table.schema();
        let time_column = match option("time_column") {
            Some(column) => column.to_string(),
            None => self
                .catalog
                .relation(&source)
                .await
                .ok()
                .and_then(|relation| relation.def().event_time)
                .ok_or_else(|| {
                    Error::InvalidValue(format!(
                        "\"{}\" has no event-time column (WATERMARK); name one with time_column = '...'",
                        source.name
                    ))
                })?,
        };
        // The active version's numeric features, all or the ones named.
        let (_, trained) = model.trained(None)?;
        let numeric: Vec<String> = trained
            .featurizer
            .features
            .iter()
            .filter(|f| f.kind == FeatureKind::Numeric)
            .map(|f| f.name.clone())
            .collect();
        let features: Vec<String> = match option("features") {
            None => numeric.clone(),
            Some(list) => list
                .split(',')
                .map(|f| f.trim().to_ascii_lowercase())
                .map(|f| {
                    if numeric.contains(&f) {
                        Ok(f)
                    } else {
                        Err(bad(
                            "features",
                            &f,
                            &format!("a numeric feature of the model: {}", numeric.join(", ")),
                        ))
                    }
                })
                .collect::<Result<_>>()?,
        };
        if features.is_empty() {
            return Err(Error::InvalidValue(format!(
                "model \"{}\" has no numeric feature to watch for drift",
                model_def.name
            )));
        }
        for feature in &features {
            if schema.field_with_name(feature).is_err() {
                return Err(Error::NotFound {
                    kind: "column",
                    name: format!(
                        "{feature}\" (a feature of model \"{}\") of relation \"{}",
                        model_def.name, source.name
                    ),
                });
            }
            if feature == ROW_COUNT || feature == "window_start" || feature == "window_end" {
                return Err(Error::InvalidValue(format!(
                    "a feature named \"{feature}\" clashes with a column of the monitor's view"
                )));
            }
        }
        let function = if statistic == "psi" {
            "DRIFT_PSI"
        } else {
            "DRIFT_KS"
        };
        let model_reference = literal(&format!("{}.{}", model_def.schema_name, model_def.name));
        let measures: Vec<String> = features
            .iter()
            .map(|f| {
                format!(
                    "{function}({model_reference}, {}, {}) AS {}",
                    literal(f),
                    quoted(f),
                    quoted(f)
                )
            })
            .collect();
        let query = format!(
            "SELECT window_start, window_end, count(*) AS {ROW_COUNT}, {} \
             FROM TUMBLE({}.{}, {}, INTERVAL '{window_ms} milliseconds') \
             GROUP BY window_start, window_end",
            measures.join(", "),
            quoted(&source.schema),
            quoted(&source.name),
            quoted(&time_column)
        );
        if self.catalog.table(&name).await.is_ok() {
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: name.name,
            });
        }
        // A statement cancelled from here on leaves no view without its monitor behind.
        let unrecorded = UnrecordedView {
            engine: Some(Arc::clone(self)),
            name: name.clone(),
        };
        self.create_view(
            state,
            &CreateView {
                name: object_name(&name),
                if_not_exists: false,
                query,
                emit_on_close: true,
            },
            progress,
        )
        .await?;
        let monitor = MonitorDef {
            name: name.name.clone(),
            source: source.to_string(),
            time_column,
            window_ms,
            statistic,
            threshold,
            min_rows,
            on_drift,
            cooldown_ms,
            features,
            options: create.options.clone(),
            judged_until: None,
            acted_at: None,
        };
        self.models().add_monitor(&model, monitor)?;
        unrecorded.recorded();
        self.start_monitor(&model, &name.name);
        Ok((command("CREATE MODEL MONITOR"), Vec::new()))
    }

    /// Start every model's background work (at server start, after the views): its monitors'
    /// judging and a windowed model's refits.
    pub fn start_model_tasks(self: &Arc<Self>) {
        for model in self.models().all() {
            for monitor in model.def().monitors {
                self.start_monitor(&model, &monitor.name);
            }
            self.start_schedule(&model);
            self.start_online(&model);
        }
    }

    fn start_monitor(self: &Arc<Self>, model: &Arc<Model>, monitor: &str) {
        let key = format!("monitor:{}.{monitor}", model.def().schema_name);
        let task = tokio::spawn(judge(
            Arc::clone(self),
            Arc::clone(model),
            monitor.to_string(),
        ));
        self.start_background(key, task);
    }

    /// `DROP MODEL MONITOR [IF EXISTS] a, b`.
    pub async fn drop_monitors(&self, names: &[ObjectName], if_exists: bool) -> Result<Output> {
        for name in names {
            let name = name_of(name)?;
            match self.models().monitor(&name.schema, &name.name) {
                Some((model, _)) => self.drop_monitor(&model, &name.name).await?,
                None if if_exists => {}
                None => {
                    return Err(Error::NotFound {
                        kind: "model monitor",
                        name: name.name,
                    });
                }
            }
        }
        Ok(command("DROP MODEL MONITOR"))
    }

    /// Stop a monitor, drop its view and forget it.
    pub(super) async fn drop_monitor(&self, model: &Model, monitor: &str) -> Result<()> {
        let name = QualifiedName {
            schema: model.def().schema_name,
            name: monitor.to_string(),
        };
        // The view first: if something else reads it, nothing has changed yet.
        self.catalog.drop_view(&name, true).await?;
        self.stop_background(&format!("monitor:{name}"));
        self.models().remove_monitor(model, monitor)?;
        Ok(())
    }

    /// The monitor a view belongs to, if any (its view is dropped with the monitor only).
    pub(super) fn monitor_of_view(&self, view: &QualifiedName) -> Option<String> {
        self.models()
            .monitor(&view.schema, &view.name)
            .map(|(_, monitor)| monitor.name)
    }

    pub fn show_monitors(&self) -> Result<Output> {
        let batch = monitors_table(&self.models().all())?;
        Ok(Output::Rows {
            schema: batch.schema(),
            batches: vec![batch],
            verb: "SHOW",
        })
    }
}

/// A monitor's view until the monitor is recorded: dropped (in the background) if the
/// statement fails or is cancelled before that.
struct UnrecordedView {
    engine: Option<Arc<Engine>>,
    name: QualifiedName,
}

impl UnrecordedView {
    fn recorded(mut self) {
        self.engine = None;
    }
}

impl Drop for UnrecordedView {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            let name = self.name.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.catalog.drop_view(&name, true).await {
                    tracing::error!(view = %name, error = %e, "view of an unrecorded model monitor not dropped");
                }
            });
        }
    }
}

/// Judge every closed window of monitor `name`'s view, now and as they come.
async fn judge(engine: Arc<Engine>, model: Arc<Model>, name: String) {
    let view_name = QualifiedName {
        schema: model.def().schema_name,
        name: name.clone(),
    };
    let reader = match engine
        .catalog
        .view(&view_name)
        .and_then(|view| view.read(None))
    {
        Ok(reader) => reader,
        Err(e) => {
            tracing::error!(monitor = %name, error = %e, "model monitor cannot read its view");
            return;
        }
    };
    let mut events = reader.events;
    let mut next = Some(reader.rows);
    loop {
        if let Some(rows) = next.take()
            && let Err(e) = judge_windows(&engine, &model, &name, &rows).await
        {
            tracing::error!(monitor = %name, error = %e, "model monitor failed to judge a window");
        }
        match events.recv().await {
            Some(ViewEvent::Changes { batch, .. }) => {
                // Windows are emitted once, when they close: only additions matter.
                next = Some(match &batch.deletes {
                    None => batch.rows,
                    Some(deletes) => {
                        let keep = datafusion::arrow::compute::not(deletes)
                            .unwrap_or_else(|_| deletes.clone());
                        match datafusion::arrow::compute::filter_record_batch(&batch.rows, &keep) {
                            Ok(rows) => rows,
                            Err(_) => continue,
                        }
                    }
                });
            }
            // The view stopped (dropped, or the server is stopping).
            None => return,
        }
    }
}

/// Micros since the epoch of a timestamp column's values.
fn micros(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    Ok(crate::ml::timestamp_micros(column)?.iter().collect())
}

async fn judge_windows(
    engine: &Arc<Engine>,
    model: &Model,
    name: &str,
    rows: &RecordBatch,
) -> Result<()> {
    if rows.num_rows() == 0 {
        return Ok(());
    }
    let column = |n: &str| {
        rows.column_by_name(n)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("monitor view has no column {n}")))
    };
    let starts = micros(&column("window_start")?)?;
    let ends = micros(&column("window_end")?)?;
    let counts = cast(&column(ROW_COUNT)?, &DataType::Int64)?;
    let counts = counts.as_primitive::<Int64Type>();
    let Some(monitor) = model.def().monitors.into_iter().find(|m| m.name == name) else {
        return Ok(());
    };
    let measures: Vec<(String, Float64Array)> = monitor
        .features
        .iter()
        .map(|f| {
            let values = cast(&column(f)?, &DataType::Float64)?;
            Ok((f.clone(), values.as_primitive().clone()))
        })
        .collect::<Result<_>>()?;
    // Windows in event-time order, so the cooldown counts forward.
    let mut order: Vec<usize> = (0..rows.num_rows()).collect();
    order.sort_by_key(|&i| starts[i]);
    for i in order {
        let (Some(start), Some(end)) = (starts[i], ends[i]) else {
            continue;
        };
        for (feature, values) in &measures {
            if !values.is_null(i) {
                model.record_drift_measure(name, feature, values.value(i));
            }
        }
        let count = if counts.is_null(i) {
            0
        } else {
            counts.value(i)
        };
        if count < 0 || (count as u64) < monitor.min_rows {
            continue;
        }
        let drifted: Vec<(String, f64)> = measures
            .iter()
            .filter(|(_, values)| !values.is_null(i) && values.value(i) > monitor.threshold)
            .map(|(f, values)| (f.clone(), values.value(i)))
            .collect();
        if drifted.is_empty() {
            continue;
        }
        let def = model.def();
        // The monitor's record as it is now (an earlier window of this batch may have acted).
        let Some(current) = def.monitors.iter().find(|m| m.name == name) else {
            return Ok(());
        };
        if current.judged_until.is_some_and(|judged| start <= judged) {
            continue;
        }
        let cooldown_micros = i64::try_from(monitor.cooldown_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let cooling = current
            .acted_at
            .is_some_and(|acted| start < acted.saturating_add(cooldown_micros));
        let version = def.active;
        let action = match monitor.on_drift.as_str() {
            "alert" => "alert".to_string(),
            _ if cooling => "none (cooldown)".to_string(),
            "rollback" => match engine.models().rollback(model) {
                Ok(to) => format!("rolled back to version {to}"),
                Err(e) => format!("rollback failed: {e}"),
            },
            _ => {
                let retrain = RetrainModel {
                    name: object_name(&QualifiedName {
                        schema: def.schema_name.clone(),
                        name: def.name.clone(),
                    }),
                    query: None,
                    options: Vec::new(),
                };
                match engine
                    .retrain_model(&engine.ctx.state(), &retrain, &Progress::none())
                    .await
                {
                    Ok(_) => format!(
                        "retrained: version {}",
                        model.def().active.unwrap_or_default()
                    ),
                    Err(e) => format!("retrain failed: {e}"),
                }
            }
        };
        tracing::warn!(
            model = %def.name,
            monitor = %name,
            window_start = start,
            features = ?drifted,
            action = %action,
            "model drift"
        );
        let detected_at = chrono::Utc::now().to_rfc3339();
        let events = drifted
            .into_iter()
            .map(|(feature, value)| DriftEvent {
                monitor: name.to_string(),
                window_start: start,
                window_end: end,
                feature,
                statistic: monitor.statistic.clone(),
                value,
                threshold: monitor.threshold,
                rows: count as u64,
                version,
                action: action.clone(),
                detected_at: detected_at.clone(),
            })
            .collect();
        let acts = monitor.on_drift != "alert" && !cooling;
        engine
            .models()
            .record_drift(model, name, start, acts.then_some(end), events)?;
    }
    Ok(())
}

/// Schemas of `eddy_catalog.model_monitors` and `eddy_catalog.drift_events`.
pub fn system_schema(table: &str) -> SchemaRef {
    Arc::new(Schema::new(match table {
        "model_monitors" => vec![
            Field::new("schema", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("time_column", DataType::Utf8, false),
            Field::new("window_ms", DataType::UInt64, false),
            Field::new("statistic", DataType::Utf8, false),
            Field::new("threshold", DataType::Float64, false),
            Field::new("min_rows", DataType::UInt64, false),
            Field::new("on_drift", DataType::Utf8, false),
            Field::new("cooldown_ms", DataType::UInt64, false),
            Field::new("features", DataType::Utf8, false),
            Field::new("drift_events", DataType::UInt64, false),
        ],
        _ => vec![
            Field::new("schema", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("monitor", DataType::Utf8, false),
            Field::new("window_start", timestamp_type(), false),
            Field::new("window_end", timestamp_type(), false),
            Field::new("feature", DataType::Utf8, false),
            Field::new("statistic", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("threshold", DataType::Float64, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("version", DataType::UInt32, true),
            Field::new("action", DataType::Utf8, false),
            Field::new("detected_at", timestamp_type(), false),
        ],
    }))
}

/// `eddy_catalog.model_monitors` / `SHOW MODEL MONITORS`.
pub fn monitors_table(models: &[Arc<Model>]) -> Result<RecordBatch> {
    let defs: Vec<_> = models.iter().map(|m| m.def()).collect();
    let monitors: Vec<_> = defs
        .iter()
        .flat_map(|d| d.monitors.iter().map(move |m| (d, m)))
        .collect();
    let text = |f: &dyn Fn(&crate::storage::ModelDef, &MonitorDef) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            monitors.iter().map(|(d, m)| f(d, m)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|d, _| d.schema_name.clone()),
        text(&|_, m| m.name.clone()),
        text(&|d, _| d.name.clone()),
        text(&|_, m| m.source.clone()),
        text(&|_, m| m.time_column.clone()),
        Arc::new(UInt64Array::from_iter_values(
            monitors.iter().map(|(_, m)| m.window_ms),
        )),
        text(&|_, m| m.statistic.clone()),
        Arc::new(Float64Array::from_iter_values(
            monitors.iter().map(|(_, m)| m.threshold),
        )),
        Arc::new(UInt64Array::from_iter_values(
            monitors.iter().map(|(_, m)| m.min_rows),
        )),
        text(&|_, m| m.on_drift.clone()),
        Arc::new(UInt64Array::from_iter_values(
            monitors.iter().map(|(_, m)| m.cooldown_ms),
        )),
        text(&|_, m| m.features.join(", ")),
        Arc::new(UInt64Array::from_iter_values(monitors.iter().map(
            |(d, m)| {
                d.drift_events
                    .iter()
                    .filter(|e| e.monitor == m.name)
                    .count() as u64
            },
        ))),
    ];
    Ok(RecordBatch::try_new(
        system_schema("model_monitors"),
        columns,
    )?)
}

/// `eddy_catalog.drift_events`, oldest first per model.
pub fn drift_events_table(models: &[Arc<Model>]) -> Result<RecordBatch> {
    let defs: Vec<_> = models.iter().map(|m| m.def()).collect();
    let events: Vec<_> = defs
        .iter()
        .flat_map(|d| d.drift_events.iter().map(move |e| (d, e)))
        .collect();
    let text = |f: &dyn Fn(&crate::storage::ModelDef, &DriftEvent) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|(d, e)| f(d, e)),
        ))
    };
    let time = |values: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|d, _| d.schema_name.clone()),
        text(&|d, _| d.name.clone()),
        text(&|_, e| e.monitor.clone()),
        time(events.iter().map(|(_, e)| e.window_start).collect()),
        time(events.iter().map(|(_, e)| e.window_end).collect()),
        text(&|_, e| e.feature.clone()),
        text(&|_, e| e.statistic.clone()),
        Arc::new(Float64Array::from_iter_values(
            events.iter().map(|(_, e)| e.value),
        )),
        Arc::new(Float64Array::from_iter_values(
            events.iter().map(|(_, e)| e.threshold),
        )),
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|(_, e)| e.rows),
        )),
        Arc::new(UInt32Array::from_iter(
            events.iter().map(|(_, e)| e.version),
        )),
        text(&|_, e| e.action.clone()),
        time(
            events
                .iter()
                .map(|(_, e)| {
                    chrono::DateTime::parse_from_rfc3339(&e.detected_at)
                        .map(|t| t.timestamp_micros())
                        .unwrap_or_default()
                })
                .collect(),
        ),
    ];
    Ok(RecordBatch::try_new(
        system_schema("drift_events"),
        columns,
    )?)
}
