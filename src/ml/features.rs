//! Features: how a model turns a query's columns into the matrix linfa fits on, the same way
//! at training and at `PREDICT`.
//!
//! Numeric columns (integers, floats, decimals; booleans as 0/1) are one feature each; text
//! columns are one-hot encoded over the categories seen in training (sorted; a category
//! training never saw encodes as all zeros). With `standardize = true` every encoded column is
//! shifted by its training mean and divided by its standard deviation (a constant column keeps
//! scale 1), and the same offsets and scales are applied at `PREDICT`. NULLs are refused with
//! the column's name: the algorithms have no notion of a missing value.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How one input column becomes features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureKind {
    /// One feature: the value as a float.
    Numeric,
    /// One feature per training category (sorted), 1.0 where the value is that category.
    Categorical(Vec<String>),
}

/// One input column of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub kind: FeatureKind,
}

/// Per numeric input column, its training distribution: the baseline drift is measured
/// against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub name: String,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Deciles (the 10%, 20%, ..., 90% quantiles) of the training values.
    pub deciles: Vec<f64>,
    /// Share of the training values in each of the ten bins the deciles split (about 10%
    /// each, unless values repeat), see [`Baseline::bin`].
    #[serde(default)]
    pub shares: Vec<f64>,
    /// The 0%, 1%, ..., 100% quantiles, for the distribution function.
    #[serde(default)]
    pub percentiles: Vec<f64>,
}

impl Baseline {
    /// The bin of `value`: how many deciles lie below it (0 to 9).
    pub fn bin(&self, value: f64) -> usize {
        self.deciles.iter().filter(|d| value > **d).count()
    }
}

/// The input columns of a model and how they are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Featurizer {
    pub features: Vec<Feature>,
    /// Per encoded column, (offset, scale) when standardized.
    pub scaling: Option<Vec<(f64, f64)>>,
}

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_numeric() || *data_type == DataType::Boolean
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The values of a numeric column as floats; NULLs refused.
fn numeric_values(name: &str, column: &ArrayRef) -> Result<Vec<f64>> {
    if column.logical_null_count() > 0 {
        return Err(null_feature(name));
    }
    let floats = cast(column, &DataType::Float64)?;
    Ok(floats.as_primitive::<Float64Type>().values().to_vec())
}

/// The values of a text column; NULLs refused.
fn text_values(name: &str, column: &ArrayRef) -> Result<Vec<String>> {
    if column.logical_null_count() > 0 {
        return Err(null_feature(name));
    }
    let text = cast(column, &DataType::Utf8)?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect())
}

fn null_feature(name: &str) -> Error {
    Error::NullValueNotAllowed(format!(
        "feature \"{name}\" is NULL; models take no missing values (filter the rows or use \
         COALESCE)"
    ))
}

impl Featurizer {
    /// Learn the encoding from the training columns (name, values).
    pub fn fit(columns: &[(String, ArrayRef)], standardize: bool) -> Result<Featurizer> {
        let mut features = Vec::with_capacity(columns.len());
        for (name, column) in columns {
            let kind = if is_numeric(column.data_type()) {
                FeatureKind::Numeric
            } else if is_text(column.data_type()) {
                let mut categories = text_values(name, column)?;
                categories.sort();
                categories.dedup();
                FeatureKind::Categorical(categories)
            } else {
                return Err(Error::DatatypeMismatch(format!(
                    "feature \"{name}\" has type {}; features must be numbers, booleans or text \
                     (cast timestamps to numbers, e.g. EXTRACT(EPOCH FROM ts))",
                    column.data_type()
                )));
            };
            features.push(Feature {
                name: name.clone(),
                kind,
            });
        }
        let mut featurizer = Featurizer {
            features,
            scaling: None,
        };
        if standardize {
            let arrays: Vec<ArrayRef> = columns.iter().map(|(_, c)| ArrayRef::clone(c)).collect();
            let x = featurizer.encode(&arrays)?;
            let scaling = x
                .columns()
                .into_iter()
                .map(|column| {
                    let n = column.len().max(1) as f64;
                    let mean = column.sum() / n;
                    let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let std = var.sqrt();
                    (
                        mean,
                        if std > 0.0 && std.is_finite() {
                            std
                        } else {
                            1.0
                        },
                    )
                })
                .collect();
            featurizer.scaling = Some(scaling);
        }
        Ok(featurizer)
    }

    /// Width of the encoded matrix.
    pub fn width(&self) -> usize {
        self.features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Numeric => 1,
                FeatureKind::Categorical(categories) => categories.len(),
            })
            .sum()
    }

    /// What the model takes, for errors and DESCRIBE: `amount (number), channel (text)`.
    pub fn signature(&self) -> String {
        self.features
            .iter()
            .map(|f| {
                let kind = match f.kind {
                    FeatureKind::Numeric => "number",
                    FeatureKind::Categorical(_) => "text",
                };
                format!("{} ({kind})", f.name)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Check that `types` can be this model's features (count and kinds), at planning.
    pub fn check_types(&self, model: &str, types: &[DataType]) -> Result<()> {
        if types.len() != self.features.len() {
            return Err(Error::InvalidValue(format!(
                "model \"{model}\" takes {} features ({}), got {}",
                self.features.len(),
                self.signature(),
                types.len()
            )));
        }
        for (feature, data_type) in self.features.iter().zip(types) {
            let fits = match feature.kind {
                FeatureKind::Numeric => is_numeric(data_type) || *data_type == DataType::Null,
                FeatureKind::Categorical(_) => is_text(data_type) || *data_type == DataType::Null,
            };
            if !fits {
                return Err(Error::DatatypeMismatch(format!(
                    "feature \"{}\" of model \"{model}\" is {}, got {data_type}",
                    feature.name,
                    match feature.kind {
                        FeatureKind::Numeric => "a number",
                        FeatureKind::Categorical(_) => "text",
                    }
                )));
            }
        }
        Ok(())
    }

    /// Per row, whether every feature has a value a model can take (not NULL; finite when
    /// numeric). `PREDICT` gives NULL for the other rows.
    pub fn usable_rows(&self, columns: &[ArrayRef]) -> Result<Vec<bool>> {
        let rows = columns.first().map_or(0, |c| c.len());
        let mut usable = vec![true; rows];
        for (feature, column) in self.features.iter().zip(columns) {
            if let Some(nulls) = column.logical_nulls() {
                for (row, ok) in usable.iter_mut().enumerate() {
                    *ok &= nulls.is_valid(row);
                }
            }
            if feature.kind == FeatureKind::Numeric && is_numeric(column.data_type()) {
                let floats = cast(column, &DataType::Float64)?;
                for (row, v) in floats
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .enumerate()
                {
                    usable[row] &= v.is_finite();
                }
            }
        }
        Ok(usable)
    }

    /// The encoded (and scaled) matrix of `columns`, one per feature, all of one length.
    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Array2<f64>> {
        if columns.len() != self.features.len() {
            return Err(Error::InvalidValue(format!(
                "expected {} features ({}), got {}",
                self.features.len(),
                self.signature(),
                columns.len()
            )));
        }
        let rows = columns.first().map_or(0, |c| c.len());
        let mut x = Array2::<f64>::zeros((rows, self.width()));
        let mut at = 0;
        for (feature, column) in self.features.iter().zip(columns) {
            match &feature.kind {
                FeatureKind::Numeric => {
                    if !is_numeric(column.data_type()) && *column.data_type() != DataType::Null {
                        return Err(Error::DatatypeMismatch(format!(
                            "feature \"{}\" is a number, got {}",
                            feature.name,
                            column.data_type()
                        )));
                    }
                    for (i, v) in numeric_values(&feature.name, column)?
                        .into_iter()
                        .enumerate()
                    {
                        if !v.is_finite() {
                            return Err(Error::InvalidValue(format!(
                                "feature \"{}\" is {v}; models take finite numbers",
                                feature.name
                            )));
                        }
                        x[[i, at]] = v;
                    }
                    at += 1;
                }
                FeatureKind::Categorical(categories) => {
                    if !is_text(column.data_type()) && *column.data_type() != DataType::Null {
                        return Err(Error::DatatypeMismatch(format!(
                            "feature \"{}\" is text, got {}",
                            feature.name,
                            column.data_type()
                        )));
                    }
                    for (i, v) in text_values(&feature.name, column)?.iter().enumerate() {
                        if let Ok(c) = categories.binary_search(v) {
                            x[[i, at + c]] = 1.0;
                        }
                    }
                    at += categories.len();
                }
            }
        }
        if let Some(scaling) = &self.scaling {
            for (mut column, (offset, scale)) in x.columns_mut().into_iter().zip(scaling) {
                column.mapv_inplace(|v| (v - offset) / scale);
            }
        }
        Ok(x)
    }

    /// The training distribution of each numeric input column.
    pub fn baselines(&self, columns: &[ArrayRef]) -> Result<Vec<Baseline>> {
        let mut baselines = Vec::new();
        for (feature, column) in self.features.iter().zip(columns) {
            if feature.kind != FeatureKind::Numeric {
                continue;
            }
            let mut values = numeric_values(&feature.name, column)?;
            values.sort_by(f64::total_cmp);
            let n = values.len();
            if n == 0 {
                continue;
            }
            let mean = values.iter().sum::<f64>() / n as f64;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            let quantile = |q: usize, of: usize| values[((n - 1) * q) / of];
            let mut baseline = Baseline {
                name: feature.name.clone(),
                mean,
                std,
                min: values[0],
                max: values[n - 1],
                deciles: (1..10).map(|d| quantile(d, 10)).collect(),
                shares: Vec::new(),
                percentiles: (0..=100).map(|p| quantile(p, 100)).collect(),
            };
            let mut counts = [0usize; 10];
            for v in &values {
                counts[baseline.bin(*v)] += 1;
            }
            baseline.shares = counts.iter().map(|c| *c as f64 / n as f64).collect();
            baselines.push(baseline);
        }
        Ok(baselines)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};

    use super::*;

    #[test]
    fn numbers_pass_through_and_text_is_one_hot() {
        let columns: Vec<(String, ArrayRef)> = vec![
            ("n".into(), Arc::new(Int64Array::from(vec![1, 2, 3]))),
            ("c".into(), Arc::new(StringArray::from(vec!["b", "a", "b"]))),
        ];
        let featurizer = Featurizer::fit(&columns, false).expect("fit");
        assert_eq!(featurizer.width(), 3);
        let x = featurizer
            .encode(&[
                Arc::new(Float64Array::from(vec![5.0])),
                Arc::new(StringArray::from(vec!["z"])),
            ])
            .expect("encode");
        assert_eq!(x.row(0).to_vec(), vec![5.0, 0.0, 0.0]);
        let x = featurizer
            .encode(&[
                Arc::new(Int64Array::from(vec![7])),
                Arc::new(StringArray::from(vec!["b"])),
            ])
            .expect("encode");
        assert_eq!(x.row(0).to_vec(), vec![7.0, 0.0, 1.0]);
        let nulls = featurizer.encode(&[
            Arc::new(Int64Array::from(vec![None])),
            Arc::new(StringArray::from(vec!["b"])),
        ]);
        assert!(matches!(nulls, Err(Error::NullValueNotAllowed(_))));
    }

    #[test]
    fn standardizing_uses_the_training_mean_and_deviation() {
        let columns: Vec<(String, ArrayRef)> = vec![
            ("n".into(), Arc::new(Float64Array::from(vec![1.0, 3.0]))),
            ("k".into(), Arc::new(Float64Array::from(vec![4.0, 4.0]))),
        ];
        let featurizer = Featurizer::fit(&columns, true).expect("fit");
        let x = featurizer
            .encode(&[
                Arc::new(Float64Array::from(vec![3.0])),
                Arc::new(Float64Array::from(vec![5.0])),
            ])
            .expect("encode");
        // Mean 2, deviation 1; the constant column keeps scale 1.
        assert_eq!(x.row(0).to_vec(), vec![1.0, 1.0]);
    }
}
