//! Online models in the planner: `CREATE MODEL ... WITH (mode = 'online') AS <query>` records
//! the model and starts its learning view (`<model>_learner`, [`crate::ml::online`]), whose
//! changes train the model's learner; every `snapshot_every`, and on `RETRAIN MODEL`, the
//! learner's model so far becomes the next version.
//!
//! The view is an ordinary stored, checkpointed view, so its backfill, its progress in
//! `eddy_catalog.materialized_views` and its recovery after a crash are those of any view; it
//! keeps no rows (a `SELECT` on it returns none) and is dropped with its model only.

use std::sync::Arc;

use datafusion::execution::SessionState;

use super::views::name_of;
use super::{Engine, Output, Progress};
use crate::catalog::QualifiedName;
use crate::error::{Error, Result};
use crate::ml::algorithms::Algorithm;
use crate::ml::online::{Online, learner_view_name};
use crate::ml::registry::Model;
use crate::ml::schedule::Promote;
use crate::parser::extensions::CreateModel;
use crate::storage::{ModelDef, ViewDef};
use crate::streaming::view::Status;

fn command(tag: &str) -> Output {
    Output::Command {
        tag: tag.to_string(),
    }
}

impl Engine {
    /// `CREATE MODEL ... WITH (mode = 'online')`: returns once the view has learned from its
    /// inputs' stored history, with version 1 taken from that (if there was any).
    pub(super) async fn create_online_model(
        self: &Arc<Self>,
        state: &SessionState,
        create: &CreateModel,
        algorithm: Algorithm,
        progress: &Progress,
    ) -> Result<(Output, Vec<String>)> {
        let name = name_of(&create.name)?;
        if let Some(existing) = self.models().get(&name.to_string()) {
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
            let _turn = existing.changing.lock().await;
            super::models::refuse_if_monitored(&existing)?;
            // A new online model has no version until it has learned: views would fail.
            self.refuse_if_used_by_views(
                &existing,
                &format!(
                    "replace model \"{}\" with an online model (it has no version until it has learned)",
                    name.name
                ),
                false,
            )?;
            self.drop_model_objects(&existing).await?;
        }
        let view_name = QualifiedName {
            schema: name.schema.clone(),
            name: learner_view_name(&name.name),
        };
        if self.catalog.table(&view_name).await.is_ok() {
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: format!(
                    "{}\" (the learning view online model \"{}\" needs",
                    view_name.name, name.name
                ),
            });
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
        // Snapshots start now: a statement cancelled during the backfill leaves a model that
        // learns and is recorded as any other.
        self.start_online(&model);
        let view = ViewDef {
            id: 0,
            schema_name: name.schema.clone(),
            name: view_name.name.clone(),
            query: create.query.clone(),
            emit_on_close: false,
            depends_on: Vec::new(),
            models: Vec::new(),
            learns: Some(model.qualified()),
        };
        if let Err(e) = self.create_view_from(state, view, progress).await {
            self.stop_background(&format!("online:{}", model.qualified()));
            let _ = self.models().drop_model(&model).await;
            return Err(e);
        }
        let summary = match self.snapshot_online(&model).await? {
            Some(summary) => summary,
            None => format!(
                "model \"{}\" learns online from view \"{}\"; its inputs hold no usable rows yet, \
                 so it has no version: one is taken every {} ms once it has learned",
                name.name,
                view_name.name,
                learner_snapshot_ms(&model)
            ),
        };
        Ok((command("CREATE MODEL"), vec![summary]))
    }

    /// Record an online model's model so far as its next version, unless it has learned
    /// nothing since the last one; returns a summary for the client.
    pub(super) async fn snapshot_online(&self, model: &Model) -> Result<Option<String>> {
        let _turn = model.changing.lock().await;
        let def = model.def();
        let learner = model.learner().ok_or_else(|| {
            Error::NotInPrerequisiteState(format!(
                "online model \"{}\" is not learning: its view \"{}\" is not running",
                def.name,
                learner_view_name(&def.name)
            ))
        })?;
        let (snapshot, promote) = {
            let mut learner = learner.lock().unwrap_or_else(|e| e.into_inner());
            let learned = learner.stats().rows_learned;
            if def
                .versions
                .last()
                .is_some_and(|v| v.training_rows == learned)
            {
                return Ok(None);
            }
            (learner.version(&def.options)?, learner.promote())
        };
        let Some((outcome, learning_ms)) = snapshot else {
            return Ok(None);
        };
        let rows = outcome.training_rows;
        let measured = outcome
            .metrics
            .iter()
            .find(|(name, _)| name == "evaluated_rows")
            .map_or(0.0, |(_, v)| *v);
        let headline = outcome
            .metrics
            .iter()
            .find(|(name, _)| name == "accuracy" || name == "inertia")
            .map(|(name, value)| {
                format!(
                    "; {name} {value:.4} over the {measured} rows since the previous version, \
                     each measured before it was learned"
                )
            })
            .unwrap_or_default();
        let activate = promote == Promote::Always;
        let version = self
            .models()
            .add_version(model, &def.query, outcome, learning_ms, activate)
            .await?;
        let promoted = if activate {
            ""
        } else {
            "; not promoted (promote = 'manual': ALTER MODEL ... SET ACTIVE VERSION)"
        };
        Ok(Some(format!(
            "model \"{}\" version {version}: learned online from {rows} rows \
             ({learning_ms:.0} ms learning){headline}{promoted}",
            def.name
        )))
    }

    /// Snapshot an online model every `snapshot_every` (nothing for other models).
    pub(super) fn start_online(self: &Arc<Self>, model: &Arc<Model>) {
        let def = model.def();
        let Ok(Some(online)) =
            Algorithm::parse(&def.algorithm).and_then(|a| Online::from_options(a, &def.options))
        else {
            return;
        };
        let engine = Arc::clone(self);
        let scheduled = Arc::clone(model);
        let task = tokio::spawn(async move {
            let every = online.snapshot_every;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let current = engine.models().get(&scheduled.qualified());
                if !current.is_some_and(|m| Arc::ptr_eq(&m, &scheduled)) {
                    return;
                }
                // Versions come from the whole history: none while the view backfills.
                let backfilling = engine
                    .learner_view(&scheduled)
                    .and_then(|view| engine.catalog.view(&view).ok())
                    .is_some_and(|view| view.status() == Status::Backfilling);
                if backfilling {
                    continue;
                }
                match engine.snapshot_online(&scheduled).await {
                    Ok(Some(summary)) => tracing::info!(%summary, "online model snapshot"),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(model = %scheduled.qualified(), error = %e, "online model snapshot failed")
                    }
                }
            }
        });
        self.start_background(format!("online:{}", model.qualified()), task);
    }

    /// The online model a view trains, if any (its view is dropped with the model only).
    pub(super) fn learner_of_view(&self, view: &QualifiedName) -> Option<String> {
        self.catalog
            .view(view)
            .ok()
            .and_then(|view| view.def.learns.clone())
    }

    /// An online model's learning view, if it has one.
    pub(super) fn learner_view(&self, model: &Model) -> Option<QualifiedName> {
        let def = model.def();
        let view = QualifiedName {
            schema: def.schema_name.clone(),
            name: learner_view_name(&def.name),
        };
        (self.learner_of_view(&view) == Some(model.qualified())).then_some(view)
    }
}

fn learner_snapshot_ms(model: &Model) -> u128 {
    let def = model.def();
    Algorithm::parse(&def.algorithm)
        .and_then(|a| Online::from_options(a, &def.options))
        .ok()
        .flatten()
        .map_or(0, |o| o.snapshot_every.as_millis())
}
