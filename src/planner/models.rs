//! Model statements: `CREATE MODEL`, `RETRAIN MODEL`, `DROP MODEL`, `SHOW MODELS`,
//! `SHOW MODEL VERSIONS`, `DESCRIBE MODEL`, `ALTER MODEL`, and the system tables
//! `eddy_catalog.models` and `eddy_catalog.model_versions`.
//!
//! Training runs the query as any `SELECT` (in the caller's session), fits on a blocking
//! thread so the server keeps serving, and records the version ([`crate::ml::registry`]).

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::ObjectName;

use super::views::{name_of, timestamp_type};
use super::{Engine, Output, Progress};
use crate::error::{Error, Result};
use crate::ml::algorithms::Algorithm;
use crate::ml::features::FeatureKind;
use crate::ml::model::{self, Outcome};
use crate::ml::online::{LearnerStats, Online};
use crate::ml::registry::{Model, Models};
use crate::ml::schedule::{Promote, Schedule, headline_metric, higher_is_better, metric_value};
use crate::parser::extensions::{AlterModel, CreateModel, RetrainModel};
use crate::storage::ModelDef;

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
    }
}

fn rows(batch: RecordBatch) -> Output {
    Output::Rows {
        schema: batch.schema(),
        batches: vec![batch],
        verb: "SELECT",
    }
}

impl Engine {
    /// The registry of models.
    pub fn models(&self) -> &Arc<Models> {
        self.catalog.models()
    }

    pub(super) fn model(&self, name: &ObjectName) -> Result<Arc<Model>> {
        let name = name_of(name)?;
        self.models().get(&name.to_string()).ok_or(Error::NotFound {
            kind: "model",
            name: name.name,
        })
    }

    /// Run a training query to one batch, columns named as PostgreSQL names them.
    async fn training_rows(&self, state: &SessionState, query: &str) -> Result<RecordBatch> {
        let statements = crate::parser::parse(query)?;
        let [crate::parser::Statement::DataFusion(statement)] = statements.as_slice() else {
            return Err(Error::Unsupported(
                "a model trained on anything but one SELECT".to_string(),
            ));
        };
        let plan = self.plan(state, statement, &[]).await?;
        let planned: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let ctx = SessionContext::new_with_state(state.clone());
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let produced = batches.first().map_or(planned, |b| b.schema());
        let batch = concat_batches(&produced, &batches)?;
        let named = super::with_postgres_column_names(statement, produced);
        Ok(RecordBatch::try_new(named, batch.columns().to_vec())?)
    }

    /// Run `query` and fit on its rows, on a blocking thread; returns the outcome and the
    /// fit's time in milliseconds.
    async fn fit(
        &self,
        state: &SessionState,
        algorithm: Algorithm,
        target: Option<String>,
        query: &str,
        options: &[(String, String)],
        progress: &Progress,
    ) -> Result<(Outcome, f64)> {
        let started = Instant::now();
        progress.report("running the training query");
        let mut rows = self.training_rows(state, query).await?;
        progress.report(format!(
            "training query: {} rows in {} ms",
            rows.num_rows(),
            started.elapsed().as_millis()
        ));
        // A windowed model trains on the newest window of its query's rows.
        let mut time_range = None;
        if let Some(schedule) = Schedule::from_options(options)? {
            (rows, time_range) = schedule.window_rows(&rows)?;
        }
        progress.report(format!(
            "fitting {} on {} rows (holdout included)",
            algorithm.name(),
            rows.num_rows()
        ));
        let started = Instant::now();
        let options = options.to_vec();
        let mut outcome = tokio::task::spawn_blocking(move || {
            model::train(algorithm, target.as_deref(), &options, &rows)
        })
        .await
        .map_err(|e| Error::Internal(format!("training stopped: {e}")))??;
        outcome.time_range = time_range;
        let training_ms = started.elapsed().as_secs_f64() * 1000.0;
        progress.report(format!(
            "fitted and evaluated in {training_ms:.0} ms; storing the version"
        ));
        Ok((outcome, training_ms))
    }

    /// Record a fit as the model's next version, active unless `promote` says otherwise;
    /// returns a summary for the client (rows, time, the main holdout metric, promotion).
    async fn record(
        &self,
        model: &Model,
        query: &str,
        (outcome, training_ms): (Outcome, f64),
        promote: Promote,
    ) -> Result<String> {
        let (activate, comparison) = promotion(model, &outcome, promote);
        let rows = (outcome.training_rows, outcome.holdout_rows);
        let headline = outcome
            .metrics
            .iter()
            .find(|(name, _)| ["accuracy", "r2", "inertia"].contains(&name.as_str()))
            .map(|(name, value)| format!("; {name} {value:.4}"))
            .unwrap_or_default();
        let version = self
            .models()
            .add_version(model, query, outcome, training_ms, activate)
            .await?;
        Ok(format!(
            "model \"{}\" version {version}: trained on {} rows in {training_ms:.0} ms, \
             evaluated on {} rows{headline}{comparison}",
            model.def().name,
            rows.0,
            if rows.1 > 0 { rows.1 } else { rows.0 }
        ))
    }

    /// `CREATE MODEL`; returns the training summary as a notice. The model is trained before
    /// anything is recorded: `OR REPLACE` keeps the old model serving until the new one is
    /// trained, and a failed or cancelled statement (the fit then finishes in the background
    /// and is discarded) changes nothing.
    pub async fn create_model(
        self: &Arc<Self>,
        state: &SessionState,
        create: &CreateModel,
        progress: &Progress,
    ) -> Result<(Output, Vec<String>)> {
        let name = name_of(&create.name)?;
        let algorithm = Algorithm::parse(&create.algorithm)?;
        model::check_options(algorithm, &create.options)?;
        if Online::from_options(algorithm, &create.options)?.is_some() {
            return self
                .create_online_model(state, create, algorithm, progress)
                .await;
        }
        if let Some(existing) = self.models().get(&name.to_string()) {
            if !create.if_not_exists && create.or_replace {
                // Before the fit, so the refusal is immediate.
                refuse_if_monitored(&existing)?;
            }
            if create.if_not_exists {
                let notice = format!("model \"{}\" already exists, skipping", name.name);
                return Ok((command("CREATE MODEL"), vec![notice]));
            }
            if !create.or_replace {
                return Err(Error::AlreadyExists {
                    kind: "model",
                    name: name.name,
                });
            }
        }
        let fitted = self
            .fit(
                state,
                algorithm,
                create.target.clone(),
                &create.query,
                &create.options,
                progress,
            )
            .await?;
        if let Some(existing) = self.models().get(&name.to_string()) {
            if !create.or_replace {
                // Created by another session meanwhile.
                return Err(Error::AlreadyExists {
                    kind: "model",
                    name: name.name,
                });
            }
            let _turn = existing.changing.lock().await;
            refuse_if_monitored(&existing)?;
            // Views that apply the model keep working only if the new one takes the same
            // features and predicts the same type.
            if let Err(used) = self.refuse_if_used_by_views(
                &existing,
                &format!(
                    "replace model \"{}\" with one of other features or prediction type",
                    name.name
                ),
                false,
            ) && check_compatible(&existing, &fitted.0).is_err()
            {
                return Err(used);
            }
            // A replaced model numbers its versions from 1 again: a pinned version would
            // name another model's.
            self.refuse_if_used_by_views(
                &existing,
                &format!(
                    "replace model \"{}\" while a view pins one of its versions",
                    name.name
                ),
                true,
            )?;
            self.drop_model_objects(&existing).await?;
        }
        let model = self.models().create(ModelDef {
            id: 0,
            schema_name: name.schema.clone(),
            name: name.name.clone(),
            algorithm: algorithm.name().to_string(),
            target: create.target.clone(),
            options: create.options.clone(),
            query: create.query.clone(),
            versions: Vec::new(),
            active: None,
            previously_active: Vec::new(),
            shadow: None,
            monitors: Vec::new(),
            drift_events: Vec::new(),
        })?;
        let _turn = model.changing.lock().await;
        // A model whose first version was not recorded is not left behind.
        let untrained = Untrained {
            models: self.models(),
            model: Some(Arc::clone(&model)),
        };
        let summary = self
            .record(&model, &create.query, fitted, Promote::Always)
            .await?;
        self.start_schedule(&model);
        untrained.trained();
        Ok((command("CREATE MODEL"), vec![summary]))
    }

    /// `RETRAIN MODEL`; returns the training summary as a notice.
    pub async fn retrain_model(
        &self,
        state: &SessionState,
        retrain: &RetrainModel,
        progress: &Progress,
    ) -> Result<(Output, Vec<String>)> {
        let model = self.model(&retrain.name)?;
        let online = {
            let def = model.def();
            Online::from_options(Algorithm::parse(&def.algorithm)?, &def.options)?.is_some()
        };
        if online {
            if retrain.query.is_some() || !retrain.options.is_empty() {
                return Err(Error::InvalidValue(format!(
                    "RETRAIN MODEL of online model \"{}\" records what it has learned as a \
                     version now; it takes no query or options (CREATE OR REPLACE MODEL changes \
                     them)",
                    model.def().name
                )));
            }
            let summary = match self.snapshot_online(&model).await? {
                Some(summary) => summary,
                None => format!(
                    "model \"{}\" has learned nothing since its last version; no version taken",
                    model.def().name
                ),
            };
            return Ok((command("RETRAIN MODEL"), vec![summary]));
        }
        let _turn = model.changing.lock().await;
        let def = model.def();
        let query = retrain.query.clone().unwrap_or(def.query.clone());
        let mut options = def.options.clone();
        options.extend(retrain.options.iter().cloned());
        let algorithm = Algorithm::parse(&def.algorithm)?;
        model::check_options(algorithm, &options)?;
        let fitted = self
            .fit(
                state,
                algorithm,
                def.target.clone(),
                &query,
                &options,
                progress,
            )
            .await?;
        check_compatible(&model, &fitted.0)?;
        // A RETRAIN statement is the user's choice: its version becomes active.
        let summary = self.record(&model, &query, fitted, Promote::Always).await?;
        Ok((command("RETRAIN MODEL"), vec![summary]))
    }

    /// A windowed model's refit: its own query and options, promoted per its policy.
    async fn scheduled_retrain(&self, model: &Model) -> Result<String> {
        let _turn = model.changing.lock().await;
        let def = model.def();
        let schedule = Schedule::from_options(&def.options)?
            .ok_or_else(|| Error::Internal("a batch model was scheduled".to_string()))?;
        let algorithm = Algorithm::parse(&def.algorithm)?;
        let fitted = self
            .fit(
                &self.ctx.state(),
                algorithm,
                def.target.clone(),
                &def.query,
                &def.options,
                &Progress::none(),
            )
            .await?;
        check_compatible(model, &fitted.0)?;
        self.record(model, &def.query, fitted, schedule.promote)
            .await
    }

    /// Start refitting a windowed model every `retrain_every` (nothing for a batch model).
    pub(super) fn start_schedule(self: &Arc<Self>, model: &Arc<Model>) {
        let Ok(Some(schedule)) = Schedule::from_options(&model.def().options) else {
            return;
        };
        let engine = Arc::clone(self);
        let scheduled = Arc::clone(model);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + schedule.every,
                schedule.every,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Dropped or replaced: its schedule ends.
                let current = engine.models().get(&scheduled.qualified());
                if !current.is_some_and(|m| Arc::ptr_eq(&m, &scheduled)) {
                    return;
                }
                match engine.scheduled_retrain(&scheduled).await {
                    Ok(summary) => tracing::info!(%summary, "scheduled retrain"),
                    Err(e) => {
                        tracing::warn!(model = %scheduled.qualified(), error = %e, "scheduled retrain failed")
                    }
                }
            }
        });
        self.start_background(format!("retrain:{}", model.qualified()), task);
    }

    pub async fn drop_models(&self, names: &[ObjectName], if_exists: bool) -> Result<Output> {
        for name in names {
            match self.model(name) {
                Ok(model) => {
                    // After any fit under way; from here nothing records a version meanwhile.
                    let _turn = model.changing.lock().await;
                    self.refuse_if_used_by_views(
                        &model,
                        &format!("drop model \"{}\"", model.def().name),
                        false,
                    )?;
                    self.drop_model_objects(&model).await?;
                }
                Err(Error::NotFound { .. }) if if_exists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(command("DROP MODEL"))
    }

    /// Drop a model with everything that serves it: its monitors, its refits or snapshots,
    /// an online model's learning view.
    pub(super) async fn drop_model_objects(&self, model: &Model) -> Result<()> {
        for monitor in model.def().monitors {
            self.drop_monitor(model, &monitor.name).await?;
        }
        self.stop_background(&format!("retrain:{}", model.qualified()));
        self.stop_background(&format!("online:{}", model.qualified()));
        if let Some(view) = self.learner_view(model) {
            self.catalog.drop_view(&view, true).await?;
        }
        self.models().drop_model(model).await
    }

    pub fn alter_model(&self, name: &ObjectName, action: &AlterModel) -> Result<Output> {
        let model = self.model(name)?;
        match action {
            AlterModel::Activate(version) => self.models().activate(&model, *version)?,
            AlterModel::Rollback => {
                self.models().rollback(&model)?;
            }
            AlterModel::Shadow(version) => self.models().set_shadow(&model, *version)?,
        }
        Ok(command("ALTER MODEL"))
    }

    pub fn show_models(&self) -> Result<Output> {
        Ok(rows(models_table(&self.models().all())?))
    }

    pub fn show_model_versions(&self, name: &ObjectName) -> Result<Output> {
        let model = self.model(name)?;
        Ok(rows(model_versions_table(&[model])?))
    }

    /// `DESCRIBE MODEL`: one row per property.
    pub fn describe_model(&self, name: &ObjectName) -> Result<Output> {
        let model = self.model(name)?;
        let def = model.def();
        let mut properties: Vec<(String, String)> = vec![
            ("name".into(), format!("{}.{}", def.schema_name, def.name)),
            ("algorithm".into(), def.algorithm.clone()),
            ("target".into(), def.target.clone().unwrap_or_default()),
            (
                "active_version".into(),
                def.active.map(|v| v.to_string()).unwrap_or_default(),
            ),
            (
                "shadow_version".into(),
                def.shadow.map(|v| v.to_string()).unwrap_or_default(),
            ),
            ("query".into(), def.query.clone()),
        ];
        if let Some(stats) = model.learner_stats() {
            properties.push(("rows_learned".into(), stats.rows_learned.to_string()));
            properties.push(("rows_pending".into(), stats.pending_rows.to_string()));
            properties.push(("rows_skipped".into(), stats.skipped.to_string()));
            properties.push(("retractions_ignored".into(), stats.retractions.to_string()));
        }
        if let Some(record) = def.versions.iter().find(|v| Some(v.version) == def.active) {
            properties.push(("features".into(), record.features.clone()));
            for (k, v) in &record.options {
                properties.push((format!("option.{k}"), v.clone()));
            }
            for (k, v) in &record.metrics {
                properties.push((format!("metric.{k}"), v.to_string()));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("property", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    properties.iter().map(|(k, _)| k.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    properties.iter().map(|(_, v)| v.as_str()),
                )),
            ],
        )?;
        Ok(rows(batch))
    }
}

/// Forgets a model created by a `CREATE MODEL` that did not finish training.
struct Untrained<'a> {
    models: &'a Models,
    model: Option<Arc<Model>>,
}

impl Untrained<'_> {
    fn trained(mut self) {
        self.model = None;
    }
}

impl Drop for Untrained<'_> {
    fn drop(&mut self) {
        if let Some(model) = self.model.take()
            && let Err(e) = self.models.forget_untrained(&model)
        {
            tracing::error!(model = %model.qualified(), error = %e, "untrained model not removed");
        }
    }
}

impl Engine {
    /// Materialized views that apply `model` (its monitors' views aside) depend on it.
    /// `refused` says what was refused (`drop model "m"`).
    /// With `pinned_only`, only views pinned to one of its versions count.
    pub(super) fn refuse_if_used_by_views(
        &self,
        model: &Model,
        refused: &str,
        pinned_only: bool,
    ) -> Result<()> {
        let def = model.def();
        let qualified = model.qualified();
        let applies = |reference: &String| {
            let (name, pinned) = reference
                .rsplit_once('$')
                .map_or((reference.as_str(), false), |(name, _)| (name, true));
            name == qualified && (pinned || !pinned_only)
        };
        let user = self.catalog.views().all().into_iter().find(|view| {
            view.def.models.iter().any(applies)
                && !(view.def.schema_name == def.schema_name
                    && def.monitors.iter().any(|m| m.name == view.def.name))
        });
        match user {
            Some(view) => Err(Error::DependentObjects(format!(
                "cannot {refused}: materialized view \"{}\" applies it (drop the view first)",
                view.def.name
            ))),
            None => Ok(()),
        }
    }
}

/// Queries and views planned against the model keep working only if a new version keeps
/// its inputs and output.
fn check_compatible(model: &Model, outcome: &Outcome) -> Result<()> {
    let Ok((active, trained)) = model.trained(None) else {
        return Ok(());
    };
    let inputs = |t: &crate::ml::model::Trained| -> Vec<(String, bool)> {
        t.featurizer
            .features
            .iter()
            .map(|f| (f.name.clone(), f.kind == FeatureKind::Numeric))
            .collect()
    };
    let new = &outcome.trained;
    if inputs(new) != inputs(&trained) || new.output_type() != trained.output_type() {
        return Err(Error::DatatypeMismatch(format!(
            "RETRAIN must keep the features and the prediction type of version {active} \
             ({}); this query gives {}. CREATE OR REPLACE MODEL changes them",
            trained.featurizer.signature(),
            new.featurizer.signature()
        )));
    }
    Ok(())
}

/// Whether a new version becomes active, and a note on the comparison for the summary.
fn promotion(model: &Model, outcome: &Outcome, promote: Promote) -> (bool, String) {
    match promote {
        Promote::Always => (true, String::new()),
        Promote::Manual => (
            false,
            "; not promoted (promote = 'manual': ALTER MODEL ... SET ACTIVE VERSION)".to_string(),
        ),
        Promote::IfBetter => {
            let Ok((active, trained)) = model.trained(None) else {
                return (true, "; promoted (no active version)".to_string());
            };
            let def = model.def();
            let schedule = Schedule::from_options(&def.options).ok().flatten();
            let Some(metric) = schedule
                .and_then(|s| s.metric)
                .or_else(|| headline_metric(&outcome.metrics).map(str::to_string))
            else {
                return (true, "; promoted (no metric to compare)".to_string());
            };
            let candidate = metric_value(&outcome.metrics, &metric);
            let incumbent = model::evaluate_by_name(&trained, &def.name, &outcome.evaluated_on)
                .ok()
                .and_then(|m| metric_value(&m, &metric));
            match (candidate, incumbent) {
                (Some(new), Some(old)) => {
                    let better = if higher_is_better(&metric) {
                        new > old
                    } else {
                        new < old
                    };
                    let verdict = if better { "promoted" } else { "not promoted" };
                    (
                        better,
                        format!(
                            "; {verdict}: {metric} {new:.4} against {old:.4} for active version {active} on the same rows"
                        ),
                    )
                }
                (Some(_), None) => (
                    true,
                    format!("; promoted (active version {active} could not be measured)"),
                ),
                (None, _) => (
                    false,
                    format!("; not promoted (it has no {metric} to compare)"),
                ),
            }
        }
    }
}

/// `CREATE OR REPLACE MODEL` may change the features its monitors watch.
pub(super) fn refuse_if_monitored(model: &Model) -> Result<()> {
    let def = model.def();
    match def.monitors.first() {
        Some(monitor) => Err(Error::DependentObjects(format!(
            "cannot replace model \"{}\": model monitor \"{}\" watches it (DROP MODEL MONITOR {} first, or RETRAIN MODEL, which keeps the features)",
            def.name, monitor.name, monitor.name
        ))),
        None => Ok(()),
    }
}

/// Schemas of `eddy_catalog.models` and `eddy_catalog.model_versions`.
pub fn system_schema(table: &str) -> SchemaRef {
    Arc::new(Schema::new(match table {
        "models" => vec![
            Field::new("schema", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("algorithm", DataType::Utf8, false),
            Field::new("target", DataType::Utf8, true),
            Field::new("active_version", DataType::UInt32, true),
            Field::new("shadow_version", DataType::UInt32, true),
            Field::new("versions", DataType::UInt32, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("mode", DataType::Utf8, false),
            Field::new("rows_learned", DataType::UInt64, true),
            Field::new("rows_skipped", DataType::UInt64, true),
        ],
        _ => vec![
            Field::new("schema", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("version", DataType::UInt32, false),
            Field::new("active", DataType::Boolean, false),
            Field::new("created_at", timestamp_type(), false),
            Field::new("training_rows", DataType::UInt64, false),
            Field::new("holdout_rows", DataType::UInt64, false),
            Field::new("training_ms", DataType::Float64, false),
            Field::new("blob_bytes", DataType::UInt64, false),
            Field::new("features", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("options", DataType::Utf8, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("promoted", DataType::Boolean, false),
            Field::new("trained_from", timestamp_type(), true),
            Field::new("trained_to", timestamp_type(), true),
        ],
    }))
}

/// `eddy_catalog.models` / `SHOW MODELS`.
pub fn models_table(models: &[Arc<Model>]) -> Result<RecordBatch> {
    let defs: Vec<ModelDef> = models.iter().map(|m| m.def()).collect();
    let learners: Vec<Option<LearnerStats>> = models.iter().map(|m| m.learner_stats()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            defs.iter().map(|d| d.schema_name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            defs.iter().map(|d| d.name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            defs.iter().map(|d| d.algorithm.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            defs.iter().map(|d| d.target.as_deref()),
        )),
        Arc::new(UInt32Array::from_iter(defs.iter().map(|d| d.active))),
        Arc::new(UInt32Array::from_iter(defs.iter().map(|d| d.shadow))),
        Arc::new(UInt32Array::from_iter_values(
            defs.iter().map(|d| d.versions.len() as u32),
        )),
        Arc::new(StringArray::from_iter_values(
            defs.iter().map(|d| d.query.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(defs.iter().map(|d| {
            d.options
                .iter()
                .rev()
                .find(|(k, _)| k == "mode")
                .map_or_else(
                    || "batch".to_string(),
                    |(_, v)| v.trim().to_ascii_lowercase(),
                )
        }))),
        Arc::new(UInt64Array::from_iter(
            learners.iter().map(|l| l.as_ref().map(|l| l.rows_learned)),
        )),
        Arc::new(UInt64Array::from_iter(
            learners.iter().map(|l| l.as_ref().map(|l| l.skipped)),
        )),
    ];
    Ok(RecordBatch::try_new(system_schema("models"), columns)?)
}

/// `eddy_catalog.model_versions` / `SHOW MODEL VERSIONS`.
pub fn model_versions_table(models: &[Arc<Model>]) -> Result<RecordBatch> {
    let defs: Vec<ModelDef> = models.iter().map(|m| m.def()).collect();
    let versions: Vec<(&ModelDef, &crate::storage::ModelVersion)> = defs
        .iter()
        .flat_map(|d| d.versions.iter().map(move |v| (d, v)))
        .collect();
    let pairs = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let created = versions
        .iter()
        .map(|(_, v)| {
            chrono::DateTime::parse_from_rfc3339(&v.created_at)
                .map(|t| t.timestamp_micros())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|(d, _)| d.schema_name.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|(d, _)| d.name.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(
            versions.iter().map(|(_, v)| v.version),
        )),
        Arc::new(BooleanArray::from(
            versions
                .iter()
                .map(|(d, v)| d.active == Some(v.version))
                .collect::<Vec<_>>(),
        )),
        Arc::new(TimestampMicrosecondArray::from(created).with_timezone("UTC")),
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|(_, v)| v.training_rows),
        )),
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|(_, v)| v.holdout_rows),
        )),
        Arc::new(Float64Array::from_iter_values(
            versions.iter().map(|(_, v)| v.training_ms),
        )),
        Arc::new(UInt64Array::from_iter_values(
            versions.iter().map(|(_, v)| v.blob_bytes),
        )),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|(_, v)| v.features.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(versions.iter().map(
            |(_, v)| {
                pairs(
                    &v.metrics
                        .iter()
                        .map(|(k, x)| (k.clone(), format!("{x:.6}")))
                        .collect::<Vec<_>>(),
                )
            },
        ))),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|(_, v)| pairs(&v.options)),
        )),
        Arc::new(StringArray::from_iter_values(
            versions.iter().map(|(_, v)| v.query.as_str()),
        )),
        Arc::new(BooleanArray::from(
            versions.iter().map(|(_, v)| v.promoted).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                versions
                    .iter()
                    .map(|(_, v)| v.time_range.map(|(from, _)| from))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                versions
                    .iter()
                    .map(|(_, v)| v.time_range.map(|(_, to)| to))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(
        system_schema("model_versions"),
        columns,
    )?)
}
