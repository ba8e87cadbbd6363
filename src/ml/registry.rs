//! Every model and its versions: records in the catalog (durable, [`ModelDef`]), fitted models
//! as blobs on the object store, and in memory the decoded versions `PREDICT` runs.
//!
//! A new version's blob is written (durably) before the catalog records it, so a recorded
//! version always has its blob; a crash in between leaves an unrecorded blob that the next
//! version of that number overwrites. Which version is active is one field of the record,
//! changed under the model's lock and read by `PREDICT` per batch: promotion and rollback swap
//! the model under running views between two batches, without a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::model::{Outcome, Trained};
use crate::catalog::DEFAULT_SCHEMA;
use crate::error::{Error, Result};
use crate::storage::{DRIFT_EVENTS_KEPT, DriftEvent, ModelDef, ModelVersion, MonitorDef, Storage};

/// One model.
#[derive(Debug)]
pub struct Model {
    def: Mutex<ModelDef>,
    versions: RwLock<BTreeMap<u32, Arc<Trained>>>,
    /// Held while training or changing the model, so versions are numbered and recorded in
    /// turn.
    pub changing: tokio::sync::Mutex<()>,
    /// How it has been used since the server started (for `/metrics` and the system tables).
    usage: Mutex<ModelUsage>,
    /// An online model's learner, once its view runs.
    learner: Mutex<Option<super::online::SharedLearner>>,
}

/// What a version has scored since the server started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VersionUsage {
    /// Rows scored by PREDICT, PREDICT_PROBA or PREDICT_DISTANCE.
    pub rows: u64,
    /// Calls (one per batch of rows).
    pub batches: u64,
    /// Time spent scoring.
    pub seconds: f64,
    /// Rows scored as the shadow version beside the active one.
    pub shadow_rows: u64,
    /// Of those, rows where the shadow's prediction agreed with the active version's.
    pub shadow_agreeing: u64,
}

/// A model's use since the server started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelUsage {
    pub versions: BTreeMap<u32, VersionUsage>,
    /// The latest drift measured per (monitor, feature).
    pub drift: BTreeMap<(String, String), f64>,
}

impl Model {
    fn new(def: ModelDef, versions: BTreeMap<u32, Arc<Trained>>) -> Model {
        Model {
            def: Mutex::new(def),
            versions: RwLock::new(versions),
            changing: tokio::sync::Mutex::new(()),
            usage: Mutex::new(ModelUsage::default()),
            learner: Mutex::new(None),
        }
    }

    /// An online model's learner (its view feeds it).
    pub fn learner(&self) -> Option<super::online::SharedLearner> {
        self.learner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What an online model's learner has done, if it runs.
    pub fn learner_stats(&self) -> Option<super::online::LearnerStats> {
        self.learner()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).stats())
    }

    pub fn set_learner(&self, learner: super::online::SharedLearner) {
        *self.learner.lock().unwrap_or_else(|e| e.into_inner()) = Some(learner);
    }

    pub fn usage(&self) -> ModelUsage {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Count `rows` scored by `version` in `seconds`.
    pub fn record_scoring(&self, version: u32, rows: usize, seconds: f64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let entry = usage.versions.entry(version).or_default();
        entry.rows += rows as u64;
        entry.batches += 1;
        entry.seconds += seconds;
    }

    /// Count `rows` scored by shadow `version`, `agreeing` of them like the active version.
    pub fn record_shadow(&self, version: u32, rows: usize, agreeing: usize) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let entry = usage.versions.entry(version).or_default();
        entry.shadow_rows += rows as u64;
        entry.shadow_agreeing += agreeing as u64;
    }

    /// Remember the drift a monitor measured last.
    pub fn record_drift_measure(&self, monitor: &str, feature: &str, value: f64) {
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drift
            .insert((monitor.to_string(), feature.to_string()), value);
    }

    /// The shadow version, without copying the whole record (read at every scored batch).
    pub fn shadow(&self) -> Option<u32> {
        self.def.lock().unwrap_or_else(|e| e.into_inner()).shadow
    }

    pub fn def(&self) -> ModelDef {
        self.def.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn qualified(&self) -> String {
        let def = self.def.lock().unwrap_or_else(|e| e.into_inner());
        format!("{}.{}", def.schema_name, def.name)
    }

    /// The active version, or `pinned`.
    pub fn trained(&self, pinned: Option<u32>) -> Result<(u32, Arc<Trained>)> {
        let def = self.def();
        let version = match pinned.or(def.active) {
            Some(v) => v,
            None if def.versions.is_empty() => {
                return Err(Error::NotInPrerequisiteState(format!(
                    "model \"{}\" is still training; it has no version yet",
                    def.name
                )));
            }
            None => {
                return Err(Error::NotInPrerequisiteState(format!(
                    "model \"{}\" has no active version",
                    def.name
                )));
            }
        };
        let versions = self.versions.read().unwrap_or_else(|e| e.into_inner());
        match versions.get(&version) {
            Some(trained) => Ok((version, Arc::clone(trained))),
            None if def.versions.iter().any(|v| v.version == version) => {
                Err(Error::Storage(format!(
                    "version {version} of model \"{}\" could not be loaded (see the server log)",
                    def.name
                )))
            }
            None => Err(Error::NotFound {
                kind: "model version",
                name: format!("{}${version}", def.name),
            }),
        }
    }
}

/// All models.
#[derive(Debug)]
pub struct Models {
    storage: Arc<Storage>,
    models: RwLock<HashMap<String, Arc<Model>>>,
}

/// `name`, `name$3`, `schema.name$3` as (schema.name, pinned version).
pub fn parse_reference(reference: &str) -> Result<(String, Option<u32>)> {
    let (name, version) = match reference.rsplit_once('$') {
        Some((name, version)) => {
            let version = version.parse::<u32>().map_err(|_| {
                Error::InvalidValue(format!(
                    "\"{reference}\": a pinned model version is name$number"
                ))
            })?;
            (name, Some(version))
        }
        None => (reference, None),
    };
    let qualified = if name.contains('.') {
        name.to_string()
    } else {
        format!("{DEFAULT_SCHEMA}.{name}")
    };
    Ok((qualified, version))
}

impl Models {
    /// No models loaded yet; see [`Models::load`].
    pub fn new(storage: Arc<Storage>) -> Models {
        Models {
            storage,
            models: RwLock::new(HashMap::new()),
        }
    }

    /// Load every model's record and versions (a version whose blob cannot be read is logged
    /// and left out; using it is an error that says so).
    pub async fn load(&self) {
        let storage = &self.storage;
        let mut models = HashMap::new();
        for def in storage.models() {
            let mut versions = BTreeMap::new();
            for version in &def.versions {
                let path = def.blob_path(version.version);
                let loaded = match storage.cold_store().get(&path).await {
                    Ok(Some(bytes)) => Trained::decode(&bytes),
                    Ok(None) => Err(Error::Storage(format!("{path} is missing"))),
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok(trained) => {
                        versions.insert(version.version, Arc::new(trained));
                    }
                    Err(e) => {
                        tracing::error!(model = %def.name, version = version.version, error = %e, "model version unreadable");
                    }
                }
            }
            let qualified = format!("{}.{}", def.schema_name, def.name);
            models.insert(qualified, Arc::new(Model::new(def, versions)));
        }
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = models;
    }

    pub fn get(&self, qualified: &str) -> Option<Arc<Model>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(qualified)
            .cloned()
    }

    /// The model a reference names, or an error naming it.
    pub fn resolve(&self, reference: &str) -> Result<(Arc<Model>, Option<u32>)> {
        let (qualified, pinned) = parse_reference(reference)?;
        let model = self.get(&qualified).ok_or_else(|| Error::NotFound {
            kind: "model",
            name: reference.to_string(),
        })?;
        Ok((model, pinned))
    }

    /// Every model, in creation order.
    pub fn all(&self) -> Vec<Arc<Model>> {
        let mut all: Vec<Arc<Model>> = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|m| m.def().id);
        all
    }

    /// Record a new model (no versions yet).
    pub fn create(&self, def: ModelDef) -> Result<Arc<Model>> {
        let def = self.storage.put_model(def)?;
        let qualified = format!("{}.{}", def.schema_name, def.name);
        let model = Arc::new(Model::new(def, BTreeMap::new()));
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(qualified, Arc::clone(&model));
        Ok(model)
    }

    /// Store `outcome` as the model's next version, made active when `activate`; returns its
    /// number. Callers hold the model's `changing` lock, so version numbers are taken in turn.
    pub async fn add_version(
        &self,
        model: &Model,
        query: &str,
        outcome: Outcome,
        training_ms: f64,
        activate: bool,
    ) -> Result<u32> {
        let def = model.def();
        let version = def.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let blob = outcome.trained.encode()?;
        let blob_bytes = blob.len() as u64;
        self.storage
            .cold_store()
            .put_durably(&def.blob_path(version), blob)
            .await?;
        let record = ModelVersion {
            version,
            created_at: chrono::Utc::now().to_rfc3339(),
            query: query.to_string(),
            options: outcome.options,
            training_rows: outcome.training_rows,
            holdout_rows: outcome.holdout_rows,
            metrics: outcome.metrics,
            features: outcome.trained.featurizer.signature(),
            blob_bytes,
            training_ms,
            time_range: outcome.time_range,
            promoted: activate,
        };
        let trained = Arc::new(outcome.trained);
        // Applied to the record as it is now: an ALTER during the upload is kept.
        self.change(
            model,
            |def| {
                def.versions.push(record);
                if activate {
                    if let Some(active) = def.active {
                        def.previously_active.push(active);
                    }
                    def.active = Some(version);
                }
                Ok(())
            },
            |versions| {
                versions.insert(version, trained);
            },
        )?;
        Ok(version)
    }

    /// Read, edit and record the model's state in one step (under its record's lock), then
    /// publish it with `loaded` applied to the in-memory versions.
    fn change<R>(
        &self,
        model: &Model,
        edit: impl FnOnce(&mut ModelDef) -> Result<R>,
        loaded: impl FnOnce(&mut BTreeMap<u32, Arc<Trained>>),
    ) -> Result<R> {
        let mut current = model.def.lock().unwrap_or_else(|e| e.into_inner());
        let mut def = current.clone();
        let result = edit(&mut def)?;
        let def = self.storage.put_model(def)?;
        loaded(&mut model.versions.write().unwrap_or_else(|e| e.into_inner()));
        *current = def;
        Ok(result)
    }

    fn check_version(def: &ModelDef, version: u32) -> Result<()> {
        if def.versions.iter().any(|v| v.version == version) {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "model version",
                name: format!("{}${version}", def.name),
            })
        }
    }

    /// `ALTER MODEL m SET ACTIVE VERSION n`.
    pub fn activate(&self, model: &Model, version: u32) -> Result<()> {
        model.trained(Some(version))?;
        self.change(
            model,
            |def| {
                Self::check_version(def, version)?;
                if def.active != Some(version) {
                    if let Some(active) = def.active {
                        def.previously_active.push(active);
                    }
                    def.active = Some(version);
                }
                Ok(())
            },
            |_| {},
        )
    }

    /// `ALTER MODEL m ROLLBACK`: the version active before the current one; returns it.
    pub fn rollback(&self, model: &Model) -> Result<u32> {
        self.change(
            model,
            |def| {
                let Some(previous) = def.previously_active.pop() else {
                    return Err(Error::NotInPrerequisiteState(format!(
                        "model \"{}\" has no earlier active version to roll back to",
                        def.name
                    )));
                };
            if !model
                .versions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&previous)
            {
                return Err(Error::Storage(format!(
                    "version {previous} of model \"{}\" could not be loaded (see the server log)",
                    def.name
                )));
            }
            def.active = Some(previous);
            Ok(previous)
            },
            |_| {},
        )
    }

    /// `ALTER MODEL m SET SHADOW VERSION n` (None: `RESET SHADOW`).
    pub fn set_shadow(&self, model: &Model, version: Option<u32>) -> Result<()> {
        self.change(
            model,
            |def| {
                if let Some(version) = version {
                    Self::check_version(def, version)?;
                }
                def.shadow = version;
                Ok(())
            },
            |_| {},
        )
    }

    /// Record a new monitor of `model`.
    pub fn add_monitor(&self, model: &Model, monitor: MonitorDef) -> Result<()> {
        self.change(
            model,
            |def| {
                def.monitors.push(monitor);
                Ok(())
            },
            |_| {},
        )
    }

    /// Forget monitor `name` of `model` (its drift events stay).
    pub fn remove_monitor(&self, model: &Model, name: &str) -> Result<()> {
        self.change(
            model,
            |def| {
                def.monitors.retain(|m| m.name != name);
                Ok(())
            },
            |_| {},
        )
    }

    /// Append the drift events of monitor `monitor`'s window starting `window_start` (keeping
    /// the newest [`DRIFT_EVENTS_KEPT`]) and mark the window judged, and when `acted_at` is
    /// given, the monitor's last action, in one catalog write.
    pub fn record_drift(
        &self,
        model: &Model,
        monitor: &str,
        window_start: i64,
        acted_at: Option<i64>,
        events: Vec<DriftEvent>,
    ) -> Result<()> {
        self.change(
            model,
            |def| {
                if let Some(m) = def.monitors.iter_mut().find(|m| m.name == monitor) {
                    m.judged_until = Some(window_start);
                    if acted_at.is_some() {
                        m.acted_at = acted_at;
                    }
                }
                def.drift_events.extend(events);
                let excess = def.drift_events.len().saturating_sub(DRIFT_EVENTS_KEPT);
                def.drift_events.drain(..excess);
                Ok(())
            },
            |_| {},
        )
    }

    /// The model with monitor `name` (`schema.name`), and the monitor.
    pub fn monitor(&self, schema: &str, name: &str) -> Option<(Arc<Model>, MonitorDef)> {
        self.all().into_iter().find_map(|model| {
            let def = model.def();
            if def.schema_name != schema {
                return None;
            }
            let monitor = def.monitors.into_iter().find(|m| m.name == name)?;
            Some((model, monitor))
        })
    }

    /// Remove a model that has no versions (its `CREATE MODEL` failed or was cancelled).
    pub fn forget_untrained(&self, model: &Model) -> Result<()> {
        let def = model.def();
        if !def.versions.is_empty() {
            return Ok(());
        }
        self.storage.drop_model(def.id)?;
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{}.{}", def.schema_name, def.name));
        Ok(())
    }

    /// `DROP MODEL`: the record first, then the blobs.
    pub async fn drop_model(&self, model: &Model) -> Result<()> {
        let def = model.def();
        self.storage.drop_model(def.id)?;
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{}.{}", def.schema_name, def.name));
        let blobs: Vec<String> = def
            .versions
            .iter()
            .map(|v| def.blob_path(v.version))
            .collect();
        if let Err(e) = self.storage.cold_store().delete(&blobs).await {
            tracing::warn!(model = %def.name, error = %e, "model blobs not deleted");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_model_and_maybe_a_version() {
        assert_eq!(
            parse_reference("fraud").expect("plain"),
            ("public.fraud".to_string(), None)
        );
        assert_eq!(
            parse_reference("s.fraud$3").expect("pinned"),
            ("s.fraud".to_string(), Some(3))
        );
        assert!(parse_reference("fraud$x").is_err());
    }
}
