//! `mode = 'online'`: a model that learns from a continuous query's changes as they arrive, and
//! is snapshotted as a new version every `snapshot_every`.
//!
//! ```text
//!  CREATE MODEL m PREDICT y USING ftrl WITH (mode = 'online') AS <continuous query>
//!     │ the query runs as materialized view m_learner, which keeps no rows: its changes go to
//!     ▼ the model's Learner (a ChangeSink) under the view's lock
//!  Learner: inserted rows ─► encode ─► pending mini-batch ─► score it (prequential metrics)
//!     │                                                     ─► learn from it (linfa step)
//!     │ its state (model, pending rows, counters) is part of the view's checkpoints: after a
//!     ▼ crash the view restores it and replays the streams after the checkpoint's positions
//!  every snapshot_every (and RETRAIN MODEL m): the model so far ─► version n (promote)
//! ```
//!
//! FTRL, naive Bayes and mini-batch k-means learn online ([`Algorithm::learns_online`]).
//! Features must be numbers or booleans: one-hot categories and standardization need the data
//! up front. A classifier's labels are fixed when the model is created: `false`/`true` for a
//! boolean target, otherwise the `classes` option; rows with another label, or a NULL feature
//! or label, are skipped and counted. Retractions (a query whose rows change) cannot be
//! unlearned: they are counted and ignored. Rows are learned in mini-batches of `batch_size`
//! in the order the view applies them, so a replay after a restore learns exactly what the
//! uninterrupted run learned.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::algorithms::{self, Algorithm, Fitted, Hyperparameters, Predictions, Targets, Task};
use super::features::{FeatureKind, Featurizer};
use super::model::{LabelKind, Outcome, Target, Trained};
use super::schedule::Promote;
use crate::error::{Error, Result};
use crate::storage::ModelDef;
use crate::streaming::ChangeBatch;

/// Options only `mode = 'online'` takes.
pub const OPTIONS: &[&str] = &["snapshot_every", "batch_size", "classes"];

/// Rows kept for a version's feature baseline (the newest ones).
const BASELINE_ROWS: usize = 10_000;

/// The name of an online model's learning view.
pub fn learner_view_name(model: &str) -> String {
    format!("{model}_learner")
}

use crate::parser::last_option as option;

fn bad(name: &str, value: &str, want: &str) -> Error {
    Error::InvalidValue(format!(
        "invalid value for model option \"{name}\": \"{value}\" ({want})"
    ))
}

/// How an online model learns and is snapshotted.
#[derive(Debug, Clone, PartialEq)]
pub struct Online {
    pub snapshot_every: Duration,
    /// Rows per learning step.
    pub batch_size: usize,
    /// A non-boolean classifier's labels, as given.
    pub classes: Option<Vec<String>>,
    pub promote: Promote,
    /// A column of the query whose range each version records (not a feature).
    pub time_column: Option<String>,
}

impl Online {
    /// The online settings the options ask for; None for another mode. Online options in
    /// another mode are refused, so they never silently do nothing.
    pub fn from_options(
        algorithm: Algorithm,
        options: &[(String, String)],
    ) -> Result<Option<Online>> {
        let online =
            option(options, "mode").is_some_and(|m| m.trim().eq_ignore_ascii_case("online"));
        if !online {
            if let Some(name) = OPTIONS.iter().find(|name| option(options, name).is_some()) {
                return Err(Error::InvalidValue(format!(
                    "option \"{name}\" applies to mode = 'online' only"
                )));
            }
            return Ok(None);
        }
        if !algorithm.learns_online() {
            return Err(Error::Unsupported(format!(
                "mode = 'online' with {} (ftrl, naive_bayes and kmeans learn online; use mode = \
                 'windowed' to refit {} on recent rows)",
                algorithm.name(),
                algorithm.name()
            )));
        }
        for name in ["standardize", "test_fraction", "epochs"] {
            if let Some(value) = option(options, name) {
                let harmless = match name {
                    "standardize" => super::parse_bool(name, value).is_ok_and(|b| !b),
                    "test_fraction" => value.trim().parse::<f64>().is_ok_and(|f| f == 0.0),
                    _ => false,
                };
                if !harmless {
                    return Err(Error::InvalidValue(format!(
                        "option \"{name}\" does not apply to mode = 'online' (an online model \
                         learns each row once, from raw feature values, and is measured on \
                         each row before it learns from it)"
                    )));
                }
            }
        }
        let snapshot_every = match option(options, "snapshot_every") {
            None => Duration::from_secs(60),
            Some(text) => {
                let every = crate::storage::parse_duration(text)?;
                if every < Duration::from_millis(100) {
                    return Err(bad("snapshot_every", text, "at least 100 milliseconds"));
                }
                every
            }
        };
        let default_batch = match algorithm {
            Algorithm::Ftrl => 1,
            _ => 256,
        };
        let batch_size = match option(options, "batch_size") {
            None => default_batch,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| bad("batch_size", text, "a whole number from 1 to 1000000"))?,
        };
        if algorithm == Algorithm::KMeans {
            let k = option(options, "k")
                .and_then(|k| k.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if k == 0 || k > batch_size {
                return Err(bad(
                    "k",
                    option(options, "k").unwrap_or(""),
                    &format!(
                        "a whole number from 1 to batch_size ({batch_size}): the first \
                         mini-batch places the k centroids"
                    ),
                ));
            }
        }
        if algorithm == Algorithm::NaiveBayes && batch_size < 2 {
            return Err(bad(
                "batch_size",
                &batch_size.to_string(),
                "naive_bayes needs at least 2 rows per step to measure variances",
            ));
        }
        let classes = option(options, "classes").map(|list| {
            list.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        });
        let promote = match option(options, "promote").map(|p| p.trim().to_ascii_lowercase()) {
            None => Promote::Always,
            Some(p) if p == "always" => Promote::Always,
            Some(p) if p == "manual" => Promote::Manual,
            Some(other) => {
                return Err(bad(
                    "promote",
                    &other,
                    "always or manual; an online model has no holdout for if_better",
                ));
            }
        };
        Ok(Some(Online {
            snapshot_every,
            batch_size,
            classes,
            promote,
            time_column: option(options, "time_column").map(|c| c.trim().to_ascii_lowercase()),
        }))
    }
}

/// What a learner has learned and measured; all of it is checkpointed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    fitted: Option<Fitted>,
    /// Encoded rows waiting for a full mini-batch, row after row.
    pending: Vec<f64>,
    pending_classes: Vec<usize>,
    rows_learned: u64,
    retractions: u64,
    skipped: u64,
    /// Prequential measures since the last version: each row scored before it is learned.
    scored: u64,
    correct: u64,
    log_loss: f64,
    squared_distance: f64,
    /// The newest rows' encoded features, for a version's baseline.
    recent: VecDeque<Vec<f64>>,
    /// Microseconds since the epoch.
    time_range: Option<(i64, i64)>,
    learn_seconds: f64,
}

/// What `eddy_catalog` and the snapshot summary show of a learner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnerStats {
    pub rows_learned: u64,
    pub pending_rows: u64,
    pub retractions: u64,
    pub skipped: u64,
}

/// An online model's learning state, fed by its view.
#[derive(Debug)]
pub struct Learner {
    model: String,
    algorithm: Algorithm,
    hyper: Hyperparameters,
    online: Online,
    featurizer: Featurizer,
    target: Target,
    feature_indices: Vec<usize>,
    target_index: Option<usize>,
    time_index: Option<usize>,
    state: State,
}

/// A learner shared by its view (which feeds it) and the snapshot task.
pub type SharedLearner = Arc<Mutex<Learner>>;

impl Learner {
    /// The learner of online model `def` over its query's result `schema`; checks the
    /// columns.
    pub fn new(def: &ModelDef, schema: &Schema) -> Result<Learner> {
        let algorithm = Algorithm::parse(&def.algorithm)?;
        let online = Online::from_options(algorithm, &def.options)?
            .ok_or_else(|| Error::Internal(format!("model \"{}\" is not online", def.name)))?;
        let column = |name: &str, what: &str| {
            schema.index_of(name).map_err(|_| Error::NotFound {
                kind: "column",
                name: format!(
                    "{name}\" ({what}) in the query's result, whose columns are \"{}",
                    super::quoted_column_names(schema)
                ),
            })
        };
        let target_index = match (algorithm.task(), &def.target) {
            (Task::Clustering, Some(t)) => {
                return Err(Error::InvalidValue(format!(
                    "kmeans learns no target; drop PREDICT {t}"
                )));
            }
            (Task::Clustering, None) => None,
            (_, None) => {
                return Err(Error::InvalidValue(format!(
                    "{} needs the column to learn: CREATE MODEL ... PREDICT column",
                    algorithm.name()
                )));
            }
            (_, Some(t)) => Some(column(t, "PREDICT names it")?),
        };
        let time_index = match &online.time_column {
            Some(t) => Some(column(t, "time_column names it")?),
            None => None,
        };
        let feature_indices: Vec<usize> = (0..schema.fields().len())
            .filter(|i| Some(*i) != target_index && Some(*i) != time_index)
            .collect();
        if feature_indices.is_empty() {
            return Err(Error::InvalidValue(
                "the query returns no feature columns besides the target".into(),
            ));
        }
        let empty: Vec<(String, ArrayRef)> = feature_indices
            .iter()
            .map(|i| {
                let field = schema.field(*i);
                (
                    field.name().clone(),
                    datafusion::arrow::array::new_empty_array(field.data_type()),
                )
            })
            .collect();
        let featurizer = Featurizer::fit(&empty, false)?;
        if let Some(text) = featurizer
            .features
            .iter()
            .find(|f| matches!(f.kind, FeatureKind::Categorical(_)))
        {
            return Err(Error::Unsupported(format!(
                "text feature \"{}\" in an online model (its categories would have to be known \
                 before the first row; map it to numbers in the query, or use mode = 'windowed')",
                text.name
            )));
        }
        let target = match target_index {
            None => Target::None,
            Some(t) => {
                let field = schema.field(t);
                let name = field.name().clone();
                let kind = match field.data_type() {
                    DataType::Boolean => LabelKind::Boolean,
                    d if d.is_integer() => LabelKind::Integer,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => LabelKind::Text,
                    other => {
                        return Err(Error::DatatypeMismatch(format!(
                            "the target \"{name}\" of a classifier must be boolean, integer or \
                             text, not {other}"
                        )));
                    }
                };
                let labels = match (kind, &online.classes) {
                    (LabelKind::Boolean, None) => vec!["false".to_string(), "true".to_string()],
                    (LabelKind::Boolean, Some(_)) => {
                        return Err(Error::InvalidValue(
                            "option \"classes\" is for integer or text targets; a boolean \
                             target's classes are false and true"
                                .into(),
                        ));
                    }
                    (_, None) => {
                        return Err(Error::InvalidValue(format!(
                            "an online classifier of the {} target \"{name}\" needs its labels \
                             up front: classes = 'a, b, ...'",
                            if kind == LabelKind::Integer {
                                "integer"
                            } else {
                                "text"
                            }
                        )));
                    }
                    (LabelKind::Integer, Some(classes)) => {
                        let mut numbers = classes
                            .iter()
                            .map(|c| {
                                c.parse::<i64>()
                                    .map_err(|_| bad("classes", c, "whole numbers"))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        numbers.sort_unstable();
                        numbers.dedup();
                        numbers.iter().map(i64::to_string).collect()
                    }
                    (LabelKind::Text, Some(classes)) => {
                        let mut labels = classes.clone();
                        labels.sort();
                        labels.dedup();
                        labels
                    }
                };
                if labels.len() < 2 {
                    return Err(bad("classes", &labels.join(","), "at least two labels"));
                }
                if algorithm == Algorithm::Ftrl && labels.len() != 2 {
                    return Err(Error::InvalidValue(format!(
                        "ftrl is a binary classifier; the target \"{name}\" has {} classes",
                        labels.len()
                    )));
                }
                Target::Classes { name, kind, labels }
            }
        };
        Ok(Learner {
            model: format!("{}.{}", def.schema_name, def.name),
            algorithm,
            hyper: Hyperparameters::resolve(algorithm, &def.options),
            online,
            featurizer,
            target,
            feature_indices,
            target_index,
            time_index,
            state: State::default(),
        })
    }

    pub fn stats(&self) -> LearnerStats {
        LearnerStats {
            rows_learned: self.state.rows_learned,
            pending_rows: self.state.pending_classes.len() as u64,
            retractions: self.state.retractions,
            skipped: self.state.skipped,
        }
    }

    /// Each row's class index, None for a label outside the model's classes.
    fn classes(&self, column: &ArrayRef) -> Result<Vec<Option<usize>>> {
        let Target::Classes { kind, labels, .. } = &self.target else {
            return Ok(vec![None; column.len()]);
        };
        let texts: Vec<Option<String>> = match kind {
            LabelKind::Boolean => column
                .as_boolean()
                .iter()
                .map(|v| v.map(|b| b.to_string()))
                .collect(),
            LabelKind::Integer => cast(column, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|n| n.to_string()))
                .collect(),
            LabelKind::Text => cast(column, &DataType::Utf8)?
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect(),
        };
        Ok(texts
            .iter()
            .map(|t| t.as_ref().and_then(|t| labels.iter().position(|l| l == t)))
            .collect())
    }

    /// Learn from the rows `changes` inserts.
    pub fn learn(&mut self, changes: &ChangeBatch) -> Result<()> {
        let rows = &changes.rows;
        let inserted: Vec<bool> = (0..changes.num_rows())
            .map(|row| !changes.is_delete(row))
            .collect();
        self.state.retractions += inserted.iter().filter(|i| !**i).count() as u64;
        let features: Vec<ArrayRef> = self
            .feature_indices
            .iter()
            .map(|i| ArrayRef::clone(rows.column(*i)))
            .collect();
        let mut usable = self.featurizer.usable_rows(&features)?;
        let classes = match self.target_index {
            Some(t) => self.classes(rows.column(t))?,
            None => vec![None; rows.num_rows()],
        };
        for (row, keep) in usable.iter_mut().enumerate() {
            if self.target_index.is_some() && classes[row].is_none() {
                *keep = false;
            }
            if inserted[row] && !*keep {
                self.state.skipped += 1;
            }
            *keep &= inserted[row];
        }
        let mask = datafusion::arrow::array::BooleanArray::from(usable.clone());
        let kept: Vec<ArrayRef> = features
            .iter()
            .map(|c| Ok(datafusion::arrow::compute::filter(c, &mask)?))
            .collect::<Result<_>>()?;
        if kept.first().is_none_or(|c| c.is_empty()) {
            return Ok(());
        }
        if let Some(t) = self.time_index {
            let micros = super::timestamp_micros(rows.column(t))?;
            for (row, keep) in usable.iter().enumerate() {
                if *keep && micros.is_valid(row) {
                    let at = micros.value(row);
                    self.state.time_range = Some(match self.state.time_range {
                        None => (at, at),
                        Some((from, to)) => (from.min(at), to.max(at)),
                    });
                }
            }
        }
        let x = self.featurizer.encode(&kept)?;
        for encoded in x.rows() {
            self.state.pending.extend(encoded.iter());
            if self.state.recent.len() == BASELINE_ROWS {
                self.state.recent.pop_front();
            }
            self.state.recent.push_back(encoded.to_vec());
        }
        self.state.pending_classes.extend(
            classes
                .iter()
                .zip(&usable)
                .filter(|(_, keep)| **keep)
                .map(|(class, _)| class.unwrap_or(0)),
        );
        self.step_full_batches()
    }

    /// Learn from every full mini-batch pending.
    fn step_full_batches(&mut self) -> Result<()> {
        let width = self.featurizer.width();
        let batch = self.online.batch_size;
        let pending_rows = self.state.pending.len() / width.max(1);
        let full = pending_rows - pending_rows % batch;
        if full == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let x = Array2::from_shape_vec((full, width), self.state.pending[..full * width].to_vec())
            .map_err(|e| Error::Internal(format!("online rows: {e}")))?;
        let classes: Vec<usize> = self.state.pending_classes.drain(..full).collect();
        self.state.pending.drain(..full * width);
        // Each mini-batch is scored by the model before it learns from it.
        for start in (0..full).step_by(batch) {
            let rows = x.slice(ndarray::s![start..start + batch, ..]).to_owned();
            let truth = classes.get(start..start + batch).unwrap_or_default();
            if let Some(fitted) = &self.state.fitted {
                self.score(fitted.clone(), &rows, truth)?;
            }
            let targets = match &self.target {
                Target::None => Targets::None,
                Target::Classes { labels, .. } => {
                    Targets::Classes(Array1::from(truth.to_vec()), labels.len())
                }
                Target::Value { .. } => {
                    return Err(Error::Internal("an online regression".into()));
                }
            };
            let fitted = algorithms::learn(
                self.algorithm,
                &self.hyper,
                // Kept as it was if the step fails.
                self.state.fitted.clone(),
                &rows,
                &targets,
                batch,
            )?;
            self.state.fitted = Some(fitted);
            self.state.rows_learned += batch as u64;
        }
        self.state.learn_seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Prequential measures of `fitted` on rows it has not learned yet.
    fn score(&mut self, fitted: Fitted, x: &Array2<f64>, truth: &[usize]) -> Result<()> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let predictions = fitted.predict(x);
            let probabilities = match &self.target {
                Target::Classes { labels, .. } => fitted.probabilities(x, labels.len()).ok(),
                _ => None,
            };
            let distances = match self.target {
                Target::None => fitted.distances(x).ok(),
                _ => None,
            };
            (predictions, probabilities, distances)
        }))
        .map_err(|_| Error::Internal(format!("online model \"{}\" failed to score", self.model)))?;
        let (predictions, probabilities, distances) = outcome;
        self.state.scored += x.nrows() as u64;
        if let Predictions::Classes(predicted) = &predictions
            && self.target_index.is_some()
        {
            self.state.correct +=
                predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as u64;
        }
        if let Some(p) = probabilities {
            for (row, class) in truth.iter().enumerate() {
                let of_truth = p.get([row, *class]).copied().unwrap_or(0.0);
                self.state.log_loss -= of_truth.clamp(1e-15, 1.0).ln();
            }
        }
        if let Some(d) = distances {
            self.state.squared_distance += d.iter().map(|d| d * d).sum::<f64>();
        }
        Ok(())
    }

    /// The model so far as a version to record, with the measures since the last one (which
    /// then start again); None before it has learned anything.
    pub fn version(&mut self, options: &[(String, String)]) -> Result<Option<(Outcome, f64)>> {
        let Some(fitted) = self.state.fitted.clone() else {
            return Ok(None);
        };
        let width = self.featurizer.width();
        let columns: Vec<ArrayRef> = (0..width)
            .map(|c| {
                Arc::new(Float64Array::from_iter_values(
                    self.state.recent.iter().map(|row| row[c]),
                )) as ArrayRef
            })
            .collect();
        let baselines = self.featurizer.baselines(&columns)?;
        let mut metrics = vec![("evaluated_rows".to_string(), self.state.scored as f64)];
        if self.state.scored > 0 {
            let n = self.state.scored as f64;
            match &self.target {
                Target::Classes { .. } => {
                    metrics.push(("accuracy".into(), self.state.correct as f64 / n));
                    if self.algorithm != Algorithm::KMeans {
                        metrics.push(("log_loss".into(), self.state.log_loss / n));
                    }
                }
                Target::None => metrics.push(("inertia".into(), self.state.squared_distance / n)),
                Target::Value { .. } => {}
            }
        }
        let trained = Trained {
            algorithm: self.algorithm,
            featurizer: self.featurizer.clone(),
            target: self.target.clone(),
            fitted,
            baselines,
        };
        let mut used = self.hyper.0.clone();
        used.push(("batch_size".into(), self.online.batch_size.to_string()));
        used.push((
            "snapshot_every".into(),
            format!("{} ms", self.online.snapshot_every.as_millis()),
        ));
        used.extend(
            options
                .iter()
                .filter(|(k, _)| k == "mode" || k == "classes" || k == "time_column")
                .cloned(),
        );
        let schema = Arc::new(Schema::empty());
        let outcome = Outcome {
            trained,
            training_rows: self.state.rows_learned,
            holdout_rows: 0,
            metrics,
            options: used,
            evaluated_on: RecordBatch::new_empty(schema),
            time_range: self.state.time_range,
        };
        self.state.scored = 0;
        self.state.correct = 0;
        self.state.log_loss = 0.0;
        self.state.squared_distance = 0.0;
        Ok(Some((outcome, self.state.learn_seconds * 1000.0)))
    }

    pub fn snapshot_every(&self) -> Duration {
        self.online.snapshot_every
    }

    pub fn promote(&self) -> Promote {
        self.online.promote
    }

    /// The state as checkpointed.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec(&self.state)
            .map_err(|e| Error::Internal(format!("online model state encoding: {e}")))
    }

    pub fn restore(&mut self, bytes: &[u8]) -> Result<()> {
        self.state = rmp_serde::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("online model state unreadable: {e}")))?;
        Ok(())
    }
}

impl crate::streaming::view::ChangeSink for SharedLearner {
    fn apply(&mut self, changes: &ChangeBatch) -> Result<()> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .learn(changes)
    }

    fn snapshot(&self) -> Result<Vec<u8>> {
        self.lock().unwrap_or_else(|e| e.into_inner()).snapshot()
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        self.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(state)
    }
}
