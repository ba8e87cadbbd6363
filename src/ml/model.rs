//! One trained model version: its features, its target, the fitted linfa model and the
//! training baseline, and how it is trained from a query's rows and stored as a blob.
//!
//! Training ([`train`]): the query's columns other than the target are the features, in
//! order. Rows are split at random (a seeded shuffle, `seed`, default 42) into training and
//! holdout rows (`test_fraction`, default 0.2); the encoding is learned from the training rows
//! only; the holdout rows give the version's metrics. With no holdout rows (`test_fraction =
//! 0`, or too few rows) every row trains, in the query's order, and the metrics are those of
//! the training rows (`holdout_rows` says 0). A classifier's labels are the target's distinct
//! values, sorted (false < true, numbers by value, text by bytes); the greater of two is the
//! positive class that `PREDICT_PROBA`, precision and recall refer to.
//!
//! A blob is `EDDYMODEL` + a format number + MessagePack of [`Trained`]; a blob of another
//! format is refused with a clear error rather than misread.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt32Array,
};
use datafusion::arrow::compute::{cast, filter, take};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use ndarray::Array1;
use serde::{Deserialize, Serialize};

use super::algorithms::{self, Algorithm, Fitted, Hyperparameters, Predictions, Targets, Task};
use super::features::{Baseline, Featurizer};
use super::metrics;
use crate::error::{Error, Result};

/// What a version predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// k-means: a cluster number.
    None,
    /// Regression: a float.
    Value { name: String },
    /// Classification: one of the training labels, in the target's type.
    Classes {
        name: String,
        kind: LabelKind,
        labels: Vec<String>,
    },
}

/// The type of a classifier's labels (and of what `PREDICT` returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelKind {
    Boolean,
    Integer,
    Text,
}

/// A trained version, as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Trained {
    pub algorithm: Algorithm,
    pub featurizer: Featurizer,
    pub target: Target,
    pub fitted: Fitted,
    pub baselines: Vec<Baseline>,
}

const MAGIC: &[u8] = b"EDDYMODEL";
const FORMAT: u32 = 1;

impl Trained {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT.to_le_bytes());
        let body =
            rmp_serde::to_vec(self).map_err(|e| Error::Internal(format!("model encoding: {e}")))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Trained> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| Error::Storage("not an EddyDB model blob".into()))?;
        let (format, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::Storage("model blob truncated".into()))?;
        let format = u32::from_le_bytes(*format);
        if format != FORMAT {
            return Err(Error::Storage(format!(
                "model blob format {format}; this server reads format {FORMAT}"
            )));
        }
        rmp_serde::from_slice(body)
            .map_err(|e| Error::Storage(format!("model blob unreadable: {e}")))
    }

    /// The type `PREDICT` returns.
    pub fn output_type(&self) -> DataType {
        match &self.target {
            Target::None => DataType::Int64,
            Target::Value { .. } => DataType::Float64,
            Target::Classes { kind, .. } => match kind {
                LabelKind::Boolean => DataType::Boolean,
                LabelKind::Integer => DataType::Int64,
                LabelKind::Text => DataType::Utf8,
            },
        }
    }

    /// Run the fitted model; linfa asserts on shapes, so a bug there fails the statement
    /// instead of the server.
    fn guarded<T>(&self, run: impl FnOnce() -> Result<T>) -> Result<T> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
            Err(Error::Internal(format!(
                "the {} model failed on these features",
                self.algorithm.name()
            )))
        })
    }

    /// Score the rows whose features are all usable; the others get NULL (as a strict SQL
    /// function does: one bad event must not stop a view).
    fn strict(
        &self,
        features: &[ArrayRef],
        score: impl FnOnce(&[ArrayRef]) -> Result<ArrayRef>,
    ) -> Result<ArrayRef> {
        if features.len() != self.featurizer.features.len() {
            // encode reports the count.
            return score(features);
        }
        let usable = self.featurizer.usable_rows(features)?;
        if usable.iter().all(|u| *u) {
            return score(features);
        }
        let mask = BooleanArray::from(usable.clone());
        let kept = features
            .iter()
            .map(|c| Ok(filter(c, &mask)?))
            .collect::<Result<Vec<_>>>()?;
        let scored = score(&kept)?;
        let mut next = 0u32;
        let indices: UInt32Array = usable
            .iter()
            .map(|u| {
                u.then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        Ok(take(&scored, &indices, None)?)
    }

    /// `PREDICT`: the label, value or cluster per row.
    pub fn predict(&self, features: &[ArrayRef]) -> Result<ArrayRef> {
        self.strict(features, |features| self.predict_usable(features))
    }

    fn predict_usable(&self, features: &[ArrayRef]) -> Result<ArrayRef> {
        let x = self.featurizer.encode(features)?;
        let predictions = self.guarded(|| Ok(self.fitted.predict(&x)))?;
        match (predictions, &self.target) {
            (Predictions::Values(values), _) => Ok(Arc::new(Float64Array::from(values.to_vec()))),
            (Predictions::Classes(classes), Target::Classes { kind, labels, .. }) => {
                let texts: Vec<&str> = classes
                    .iter()
                    .map(|c| labels.get(*c).map(String::as_str).unwrap_or_default())
                    .collect();
                label_array(*kind, &texts)
            }
            (Predictions::Classes(clusters), _) => Ok(Arc::new(Int64Array::from_iter_values(
                clusters.iter().map(|c| *c as i64),
            ))),
        }
    }

    /// `PREDICT_PROBA`: with two classes the probability of the positive (greater) one, with
    /// more the probability of the predicted class.
    pub fn predict_proba(&self, features: &[ArrayRef]) -> Result<ArrayRef> {
        self.strict(features, |features| self.predict_proba_usable(features))
    }

    fn predict_proba_usable(&self, features: &[ArrayRef]) -> Result<ArrayRef> {
        let Target::Classes { labels, .. } = &self.target else {
            return Err(Error::Unsupported(format!(
                "PREDICT_PROBA of a {} model (it is not a classifier)",
                self.algorithm.name()
            )));
        };
        let x = self.featurizer.encode(features)?;
        let p = self.guarded(|| self.fitted.probabilities(&x, labels.len()))?;
        let values: Vec<f64> = if labels.len() == 2 {
            p.column(1).to_vec()
        } else {
            p.rows()
                .into_iter()
                .map(|row| row.iter().copied().fold(0.0, f64::max))
                .collect()
        };
        Ok(Arc::new(Float64Array::from(values)))
    }

    /// `PREDICT_DISTANCE`: distance to the nearest centroid (k-means), an anomaly score.
    pub fn distance(&self, features: &[ArrayRef]) -> Result<ArrayRef> {
        self.strict(features, |features| {
            let x = self.featurizer.encode(features)?;
            let d = self.guarded(|| self.fitted.distances(&x))?;
            Ok(Arc::new(Float64Array::from(d.to_vec())) as ArrayRef)
        })
    }
}

/// Labels as an array of their kind.
fn label_array(kind: LabelKind, texts: &[&str]) -> Result<ArrayRef> {
    let text: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
    Ok(match kind {
        LabelKind::Text => text,
        LabelKind::Boolean => Arc::new(BooleanArray::from(
            texts.iter().map(|t| *t == "true").collect::<Vec<_>>(),
        )),
        LabelKind::Integer => cast(&text, &DataType::Int64)?,
    })
}

/// A classifier's labels from the target column: (kind, sorted distinct labels, index per row).
fn classes_of(name: &str, column: &ArrayRef) -> Result<(LabelKind, Vec<String>, Vec<usize>)> {
    let kind = match column.data_type() {
        DataType::Boolean => LabelKind::Boolean,
        t if t.is_integer() => LabelKind::Integer,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => LabelKind::Text,
        other => {
            return Err(Error::DatatypeMismatch(format!(
                "the target \"{name}\" of a classifier must be boolean, integer or text, not \
                 {other}"
            )));
        }
    };
    let texts: Vec<String> = match kind {
        LabelKind::Boolean => column
            .as_boolean()
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect(),
        LabelKind::Integer => cast(column, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(i64::to_string)
            .collect(),
        LabelKind::Text => cast(column, &DataType::Utf8)?
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect(),
    };
    let mut labels = texts.clone();
    match kind {
        LabelKind::Integer => labels.sort_by_key(|l| l.parse::<i64>().unwrap_or_default()),
        _ => labels.sort(),
    }
    labels.dedup();
    let index: Vec<usize> = texts
        .iter()
        .map(|t| {
            labels
                .iter()
                .position(|l| l == t)
                .ok_or_else(|| Error::Internal("label vanished".into()))
        })
        .collect::<Result<_>>()?;
    Ok((kind, labels, index))
}

/// A version's training, as recorded with it.
#[derive(Debug)]
pub struct Outcome {
    pub trained: Trained,
    pub training_rows: u64,
    pub holdout_rows: u64,
    pub metrics: Vec<(String, f64)>,
    /// Hyperparameters and common options, defaults filled in.
    pub options: Vec<(String, String)>,
    /// The rows `metrics` were measured on (the holdout, or the training rows without one),
    /// with the target: promotion measures the active version on them too.
    pub evaluated_on: RecordBatch,
    /// The event-time range a windowed fit saw (microseconds since the epoch).
    pub time_range: Option<(i64, i64)>,
}

/// Options of a `CREATE MODEL` that are not hyperparameters.
#[derive(Debug, Clone)]
struct Common {
    test_fraction: f64,
    standardize: bool,
    seed: u64,
}

fn common_options(options: &[(String, String)]) -> Result<Common> {
    let get = |name: &str| {
        options
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let test_fraction = match get("test_fraction") {
        None => 0.2,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| (0.0..1.0).contains(f))
            .ok_or_else(|| {
                Error::InvalidValue(format!(
                    "test_fraction must be at least 0 and below 1, got \"{v}\""
                ))
            })?,
    };
    let standardize = match get("standardize") {
        None => false,
        Some(v) => super::parse_bool("standardize", v)?,
    };
    let seed = match get("seed") {
        None => 42,
        Some(v) => v.trim().parse().map_err(|_| {
            Error::InvalidValue(format!("seed must be a whole number, got \"{v}\""))
        })?,
    };
    Ok(Common {
        test_fraction,
        standardize,
        seed,
    })
}

/// Every option is one the algorithm or all algorithms know.
pub fn check_options(algorithm: Algorithm, options: &[(String, String)]) -> Result<()> {
    for (name, _) in options {
        let known = algorithms::COMMON_OPTIONS.contains(&name.as_str())
            || super::schedule::OPTIONS.contains(&name.as_str())
            || super::online::OPTIONS.contains(&name.as_str())
            || algorithm.hyperparameters().iter().any(|(h, _)| h == name);
        if !known {
            let mut all: Vec<&str> = algorithms::COMMON_OPTIONS.to_vec();
            all.extend(super::schedule::OPTIONS);
            all.extend(super::online::OPTIONS);
            all.extend(algorithm.hyperparameters().iter().map(|(h, _)| *h));
            return Err(Error::InvalidValue(format!(
                "unknown option \"{name}\" for {}; known: {}",
                algorithm.name(),
                all.join(", ")
            )));
        }
    }
    super::schedule::Schedule::from_options(options)?;
    super::online::Online::from_options(algorithm, options)?;
    common_options(options).map(|_| ())
}

/// Row order after a seeded shuffle (SplitMix64 driving a Fisher-Yates shuffle).
fn shuffled(rows: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<u32> = (0..rows as u32).collect();
    for i in (1..rows).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Train `algorithm` on `rows` (the training query's result) predicting `target`.
pub fn train(
    algorithm: Algorithm,
    target: Option<&str>,
    options: &[(String, String)],
    rows: &RecordBatch,
) -> Result<Outcome> {
    check_options(algorithm, options)?;
    let common = common_options(options)?;
    let hyper = Hyperparameters::resolve(algorithm, options);
    let schema = rows.schema();
    let target_index = match (algorithm.task(), target) {
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
        (_, Some(t)) => Some(schema.index_of(t).map_err(|_| Error::NotFound {
            kind: "column",
            name: format!(
                "{t}\" in the training query's result (PREDICT names one of its columns)"
            ),
        })?),
    };
    let feature_indices: Vec<usize> = (0..schema.fields().len())
        .filter(|i| Some(*i) != target_index)
        .collect();
    if feature_indices.is_empty() {
        return Err(Error::InvalidValue(
            "the training query returns no feature columns besides the target".into(),
        ));
    }
    if let Some(t) = target_index {
        let column = rows.column(t);
        let name = schema.field(t).name();
        if column.logical_null_count() > 0 {
            return Err(Error::NullValueNotAllowed(format!(
                "the target \"{name}\" is NULL in some rows; filter them out"
            )));
        }
        if algorithm.task() == Task::Regression && column.data_type().is_floating() {
            let values = cast(column, &DataType::Float64)?;
            if values
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .any(|v| !v.is_finite())
            {
                return Err(Error::InvalidValue(format!(
                    "the target \"{name}\" has NaN or infinite values"
                )));
            }
        }
    }
    // Split: the first (1 - test_fraction) of a seeded shuffle trains; without holdout rows
    // every row trains, in the query's order.
    let holdout = ((rows.num_rows() as f64) * common.test_fraction).floor() as usize;
    let order = if holdout == 0 {
        (0..rows.num_rows() as u32).collect()
    } else {
        shuffled(rows.num_rows(), common.seed)
    };
    let training = rows.num_rows() - holdout;
    let pick = |indices: &[u32]| -> Result<RecordBatch> {
        let indices = UInt32Array::from(indices.to_vec());
        let columns = rows
            .columns()
            .iter()
            .map(|c| Ok(take(c, &indices, None)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
    };
    let train_rows = pick(&order[..training])?;
    let test_rows = pick(&order[training..])?;
    let eval_rows = if holdout > 0 { &test_rows } else { &train_rows };
    let features_of = |batch: &RecordBatch| -> Vec<ArrayRef> {
        feature_indices
            .iter()
            .map(|i| ArrayRef::clone(batch.column(*i)))
            .collect()
    };
    let named: Vec<(String, ArrayRef)> = feature_indices
        .iter()
        .map(|i| {
            (
                schema.field(*i).name().clone(),
                ArrayRef::clone(train_rows.column(*i)),
            )
        })
        .collect();
    let featurizer = Featurizer::fit(&named, common.standardize)?;
    let x = featurizer.encode(&features_of(&train_rows))?;
    let (target_kind, targets) = match target_index {
        None => (Target::None, Targets::None),
        Some(t) => {
            let name = schema.field(t).name().clone();
            let column = train_rows.column(t);
            if column.null_count() > 0 {
                return Err(Error::NullValueNotAllowed(format!(
                    "the target \"{name}\" is NULL in some rows; filter them out"
                )));
            }
            match algorithm.task() {
                Task::Regression => {
                    if !column.data_type().is_numeric() {
                        return Err(Error::DatatypeMismatch(format!(
                            "the target \"{name}\" of a regression must be a number, not {}",
                            column.data_type()
                        )));
                    }
                    let values = cast(column, &DataType::Float64)?;
                    let values = values.as_primitive::<Float64Type>().values().to_vec();
                    (
                        Target::Value { name },
                        Targets::Values(Array1::from(values)),
                    )
                }
                _ => {
                    let (kind, labels, index) = classes_of(&name, column)?;
                    let n = labels.len();
                    (
                        Target::Classes { name, kind, labels },
                        Targets::Classes(Array1::from(index), n),
                    )
                }
            }
        }
    };
    let fitted = algorithms::fit(algorithm, &hyper, &x, &targets)?;
    let baselines = featurizer.baselines(&features_of(&train_rows))?;
    let trained = Trained {
        algorithm,
        featurizer,
        target: target_kind,
        fitted,
        baselines,
    };
    let metrics = evaluate(&trained, eval_rows, target_index, &feature_indices)?;
    let mut used = hyper.0;
    used.push(("test_fraction".into(), common.test_fraction.to_string()));
    used.push(("standardize".into(), common.standardize.to_string()));
    used.push(("seed".into(), common.seed.to_string()));
    Ok(Outcome {
        trained,
        training_rows: training as u64,
        holdout_rows: holdout as u64,
        metrics,
        options: used,
        evaluated_on: eval_rows.clone(),
        time_range: None,
    })
}

/// Metrics of `trained` (of model `model`) over any `rows` whose columns name its features and
/// its target; rows with a NULL feature or label are left out.
pub fn evaluate_by_name(
    trained: &Trained,
    model: &str,
    rows: &RecordBatch,
) -> Result<Vec<(String, f64)>> {
    let schema = rows.schema();
    let index_of = |name: &str, what: &str| {
        schema.index_of(name).map_err(|_| Error::NotFound {
            kind: "column",
            name: format!(
                "{name}\" ({what} of model \"{model}\") in the EVALUATE query, whose columns are \"{}",
                super::quoted_column_names(&schema)
            ),
        })
    };
    let features = trained
        .featurizer
        .features
        .iter()
        .map(|f| index_of(&f.name, "a feature"))
        .collect::<Result<Vec<_>>>()?;
    let types: Vec<DataType> = features
        .iter()
        .map(|i| schema.field(*i).data_type().clone())
        .collect();
    trained.featurizer.check_types(model, &types)?;
    let target = match &trained.target {
        Target::None => None,
        Target::Value { name } | Target::Classes { name, .. } => {
            Some(index_of(name, "the target")?)
        }
    };
    let mut usable = trained.featurizer.usable_rows(
        &features
            .iter()
            .map(|i| ArrayRef::clone(rows.column(*i)))
            .collect::<Vec<_>>(),
    )?;
    if let Some(t) = target {
        let labels = rows.column(t);
        for (row, keep) in usable.iter_mut().enumerate() {
            *keep &= labels.is_valid(row);
        }
    }
    let rows = datafusion::arrow::compute::filter_record_batch(
        rows,
        &datafusion::arrow::array::BooleanArray::from(usable),
    )?;
    evaluate(trained, &rows, target, &features)
}

/// Metrics of `trained` over `rows` (holdout rows, or any rows with the target column).
pub fn evaluate(
    trained: &Trained,
    rows: &RecordBatch,
    target_index: Option<usize>,
    feature_indices: &[usize],
) -> Result<Vec<(String, f64)>> {
    let features: Vec<ArrayRef> = feature_indices
        .iter()
        .map(|i| ArrayRef::clone(rows.column(*i)))
        .collect();
    let x = trained.featurizer.encode(&features)?;
    let mut out = vec![("evaluated_rows".to_string(), rows.num_rows() as f64)];
    if rows.num_rows() == 0 {
        return Ok(out);
    }
    match (&trained.target, target_index) {
        (Target::None, _) => {
            let d = trained.fitted.distances(&x)?;
            let inertia = d.iter().map(|d| d * d).sum::<f64>() / d.len().max(1) as f64;
            out.push(("inertia".into(), inertia));
        }
        (Target::Value { .. }, Some(t)) => {
            let actual = cast(rows.column(t), &DataType::Float64)?;
            let actual = actual.as_primitive::<Float64Type>().values().to_vec();
            let Predictions::Values(predicted) = trained.fitted.predict(&x) else {
                return Err(Error::Internal("a regression predicted classes".into()));
            };
            out.extend(metrics::regression(&actual, &predicted.to_vec()));
        }
        (Target::Classes { labels, name, .. }, Some(t)) => {
            let (_, seen, index) = classes_of(name, rows.column(t))?;
            // Rows whose label training never saw count as wrong.
            let actual: Vec<usize> = index
                .iter()
                .map(|i| {
                    labels
                        .iter()
                        .position(|l| *l == seen[*i])
                        .unwrap_or(usize::MAX)
                })
                .collect();
            let Predictions::Classes(predicted) = trained.fitted.predict(&x) else {
                return Err(Error::Internal("a classifier predicted values".into()));
            };
            out.extend(metrics::classification(
                &actual,
                &predicted.to_vec(),
                labels.len(),
            ));
            if let Ok(p) = trained.fitted.probabilities(&x, labels.len()) {
                let of_actual: Vec<f64> = actual
                    .iter()
                    .enumerate()
                    .map(|(row, class)| {
                        if *class < labels.len() {
                            p[[row, *class]]
                        } else {
                            0.0
                        }
                    })
                    .collect();
                out.push(("log_loss".into(), metrics::log_loss(&actual, &of_actual)));
                if labels.len() == 2 {
                    let positive: Vec<bool> = actual.iter().map(|c| *c == 1).collect();
                    if let Some(auc) = metrics::auc(&positive, &p.column(1).to_vec()) {
                        out.push(("auc".into(), auc));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(out)
}
