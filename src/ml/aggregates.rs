//! Streaming model-quality aggregates: `ML_ACCURACY`, `ML_PRECISION`, `ML_RECALL`, `ML_F1`,
//! `ML_AUC`, `ML_LOG_LOSS`, `ML_MAE`, `ML_RMSE`, `ML_R2`, usable in any GROUP BY (windows,
//! materialized views) over predictions joined with the labels that arrived.
//!
//! Each keeps a few running sums (an accuracy: rows and correct rows; a regression metric:
//! rows, absolute and squared errors, and the sums the variance of the actual values needs),
//! so partial states merge by adding and rows retract by subtracting; `ML_AUC` keeps its
//! (score, label) pairs, since the area needs their ranks. Rows with a NULL argument are left
//! out. The formulas are those of [`super::metrics`], which a version's holdout metrics use.

use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::metrics;
use crate::error::Error;

/// Which metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    Accuracy,
    Precision,
    Recall,
    F1,
    Auc,
    LogLoss,
    Mae,
    Rmse,
    R2,
}

/// What the arguments are: two labels of one type, two booleans, a boolean and a score, or
/// two numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Arguments {
    Labels,
    Booleans,
    LabelAndScore,
    Numbers,
}

impl Metric {
    const ALL: [Metric; 9] = [
        Metric::Accuracy,
        Metric::Precision,
        Metric::Recall,
        Metric::F1,
        Metric::Auc,
        Metric::LogLoss,
        Metric::Mae,
        Metric::Rmse,
        Metric::R2,
    ];

    fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "ml_accuracy",
            Metric::Precision => "ml_precision",
            Metric::Recall => "ml_recall",
            Metric::F1 => "ml_f1",
            Metric::Auc => "ml_auc",
            Metric::LogLoss => "ml_log_loss",
            Metric::Mae => "ml_mae",
            Metric::Rmse => "ml_rmse",
            Metric::R2 => "ml_r2",
        }
    }

    fn arguments(self) -> Arguments {
        match self {
            Metric::Accuracy => Arguments::Labels,
            Metric::Precision | Metric::Recall | Metric::F1 => Arguments::Booleans,
            Metric::Auc | Metric::LogLoss => Arguments::LabelAndScore,
            Metric::Mae | Metric::Rmse | Metric::R2 => Arguments::Numbers,
        }
    }

    /// Running sums kept (ML_AUC keeps pairs instead).
    fn sums(self) -> usize {
        match self {
            Metric::Accuracy | Metric::LogLoss => 2,
            Metric::Precision | Metric::Recall | Metric::F1 => 3,
            Metric::Auc => 0,
            Metric::Mae | Metric::Rmse | Metric::R2 => 5,
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MlMetric {
    metric: Metric,
    signature: Signature,
}

impl AggregateUDFImpl for MlMetric {
    fn name(&self) -> &str {
        self.metric.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::error::Result<Vec<DataType>> {
        let name = self.metric.name().to_uppercase();
        let [actual, predicted] = arg_types else {
            return Err(Error::InvalidValue(format!("{name} takes (actual, predicted)")).into());
        };
        let number = |t: &DataType| t.is_numeric() || *t == DataType::Null;
        let boolean = |t: &DataType| matches!(t, DataType::Boolean | DataType::Null);
        let fits = match self.metric.arguments() {
            Arguments::Labels => true,
            Arguments::Booleans => boolean(actual) && boolean(predicted),
            Arguments::LabelAndScore => boolean(actual) && number(predicted),
            Arguments::Numbers => number(actual) && number(predicted),
        };
        if !fits {
            let wanted = match self.metric.arguments() {
                Arguments::Labels => "two labels",
                Arguments::Booleans => "(actual boolean, predicted boolean)",
                Arguments::LabelAndScore => "(actual boolean, probability or score)",
                Arguments::Numbers => "(actual number, predicted number)",
            };
            return Err(Error::DatatypeMismatch(format!(
                "{name} takes {wanted}, got ({actual}, {predicted})"
            ))
            .into());
        }
        Ok(match self.metric.arguments() {
            // Labels are compared as text, so a boolean matches 'true' and 1 matches 1.0 no
            // more than PostgreSQL would; same-typed labels compare exactly.
            Arguments::Labels => vec![DataType::Utf8, DataType::Utf8],
            Arguments::Booleans => vec![DataType::Boolean, DataType::Boolean],
            Arguments::LabelAndScore => vec![DataType::Boolean, DataType::Float64],
            Arguments::Numbers => vec![DataType::Float64, DataType::Float64],
        })
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> datafusion::error::Result<Box<dyn Accumulator>> {
        Ok(Box::new(MetricAccumulator {
            metric: self.metric,
            sums: vec![0.0; self.metric.sums()],
            pairs: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::error::Result<Vec<FieldRef>> {
        if self.metric == Metric::Auc {
            return Ok(vec![
                Arc::new(Field::new_list(
                    format_state_name(args.name, "scores"),
                    Field::new_list_field(DataType::Float64, true),
                    true,
                )),
                Arc::new(Field::new_list(
                    format_state_name(args.name, "labels"),
                    Field::new_list_field(DataType::Boolean, true),
                    true,
                )),
            ]);
        }
        Ok((0..self.metric.sums())
            .map(|i| {
                Arc::new(Field::new(
                    format_state_name(args.name, &format!("sum{i}")),
                    DataType::Float64,
                    false,
                ))
            })
            .collect())
    }
}

#[derive(Debug)]
struct MetricAccumulator {
    metric: Metric,
    sums: Vec<f64>,
    /// ML_AUC: (score, positive) pairs.
    pairs: Vec<(f64, bool)>,
}

impl MetricAccumulator {
    /// Add (`sign` 1) or retract (-1) the rows of `values`.
    fn add(&mut self, values: &[ArrayRef], sign: f64) -> datafusion::error::Result<()> {
        let [actual, predicted] = values else {
            return Err(Error::Internal("a metric takes two arguments".into()).into());
        };
        for row in 0..actual.len() {
            if actual.is_null(row) || predicted.is_null(row) {
                continue;
            }
            let s = &mut self.sums;
            match self.metric.arguments() {
                Arguments::Labels => {
                    let (a, p) = (actual.as_string::<i32>(), predicted.as_string::<i32>());
                    s[0] += sign;
                    s[1] += sign * f64::from(u8::from(a.value(row) == p.value(row)));
                }
                Arguments::Booleans => {
                    let (a, p) = (
                        actual.as_boolean().value(row),
                        predicted.as_boolean().value(row),
                    );
                    match (a, p) {
                        (true, true) => s[0] += sign,
                        (false, true) => s[1] += sign,
                        (true, false) => s[2] += sign,
                        (false, false) => {}
                    }
                }
                Arguments::LabelAndScore => {
                    let a = actual.as_boolean().value(row);
                    let p = predicted.as_primitive::<Float64Type>().value(row);
                    if self.metric == Metric::Auc {
                        if sign > 0.0 {
                            self.pairs.push((p, a));
                        } else if let Some(i) = self.pairs.iter().position(|x| *x == (p, a)) {
                            self.pairs.swap_remove(i);
                        }
                    } else {
                        let of_actual = if a { p } else { 1.0 - p };
                        s[0] += sign;
                        s[1] -= sign * of_actual.clamp(1e-15, 1.0).ln();
                    }
                }
                Arguments::Numbers => {
                    let a = actual.as_primitive::<Float64Type>().value(row);
                    let p = predicted.as_primitive::<Float64Type>().value(row);
                    s[0] += sign;
                    s[1] += sign * (a - p).abs();
                    s[2] += sign * (a - p).powi(2);
                    s[3] += sign * a;
                    s[4] += sign * a * a;
                }
            }
        }
        Ok(())
    }
}

/// The arguments as the types [`MlMetric::coerce_types`] promised (a cast when a caller
/// bypassed coercion).
fn as_types(
    values: &[ArrayRef],
    types: [&DataType; 2],
) -> datafusion::error::Result<Vec<ArrayRef>> {
    values
        .iter()
        .zip(types)
        .map(|(v, t)| {
            if v.data_type() == t {
                Ok(ArrayRef::clone(v))
            } else {
                Ok(cast(v, t)?)
            }
        })
        .collect()
}

impl Accumulator for MetricAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        let values = self.typed(values)?;
        self.add(&values, 1.0)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        let values = self.typed(values)?;
        self.add(&values, -1.0)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        let s = &self.sums;
        let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
        let value = match self.metric {
            Metric::Accuracy => ratio(s[1], s[0]),
            Metric::Precision => ratio(s[0], s[0] + s[1]),
            Metric::Recall => ratio(s[0], s[0] + s[2]),
            Metric::F1 => ratio(2.0 * s[0], 2.0 * s[0] + s[1] + s[2]),
            Metric::LogLoss => ratio(s[1], s[0]),
            Metric::Mae => ratio(s[1], s[0]),
            Metric::Rmse => ratio(s[2], s[0]).map(f64::sqrt),
            Metric::R2 => {
                let total = s[4] - s[3] * s[3] / s[0].max(1.0);
                (s[0] > 0.0 && total > 0.0).then(|| 1.0 - s[2] / total)
            }
            Metric::Auc => {
                let (scores, labels): (Vec<f64>, Vec<bool>) = self.pairs.iter().copied().unzip();
                metrics::auc(&labels, &scores)
            }
        };
        Ok(ScalarValue::Float64(value))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sums.capacity() * 8 + self.pairs.capacity() * 16
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        if self.metric == Metric::Auc {
            let scores: Vec<ScalarValue> = self
                .pairs
                .iter()
                .map(|p| ScalarValue::Float64(Some(p.0)))
                .collect();
            let labels: Vec<ScalarValue> = self
                .pairs
                .iter()
                .map(|p| ScalarValue::Boolean(Some(p.1)))
                .collect();
            return Ok(vec![
                ScalarValue::List(ScalarValue::new_list_nullable(&scores, &DataType::Float64)),
                ScalarValue::List(ScalarValue::new_list_nullable(&labels, &DataType::Boolean)),
            ]);
        }
        Ok(self
            .sums
            .iter()
            .map(|v| ScalarValue::Float64(Some(*v)))
            .collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        if self.metric == Metric::Auc {
            let (Some(scores), Some(labels)) = (states.first(), states.get(1)) else {
                return Err(Error::Internal("ML_AUC state".into()).into());
            };
            let scores: &ListArray = scores.as_list::<i32>();
            let labels: &ListArray = labels.as_list::<i32>();
            for row in 0..scores.len() {
                let s = scores.value(row);
                let l = labels.value(row);
                let s = s.as_primitive::<Float64Type>();
                let l = l.as_boolean();
                for i in 0..s.len() {
                    self.pairs.push((s.value(i), l.value(i)));
                }
            }
            return Ok(());
        }
        for (sum, column) in self.sums.iter_mut().zip(states) {
            *sum += column
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .sum::<f64>();
        }
        Ok(())
    }
}

impl MetricAccumulator {
    fn typed(&self, values: &[ArrayRef]) -> datafusion::error::Result<Vec<ArrayRef>> {
        match self.metric.arguments() {
            Arguments::Labels => as_types(values, [&DataType::Utf8, &DataType::Utf8]),
            Arguments::Booleans => as_types(values, [&DataType::Boolean, &DataType::Boolean]),
            Arguments::LabelAndScore => as_types(values, [&DataType::Boolean, &DataType::Float64]),
            Arguments::Numbers => as_types(values, [&DataType::Float64, &DataType::Float64]),
        }
    }
}

/// Register the metric aggregates on `ctx`.
pub fn register(ctx: &SessionContext) {
    for metric in Metric::ALL {
        ctx.register_udaf(AggregateUDF::new_from_impl(MlMetric {
            metric,
            signature: Signature::user_defined(Volatility::Immutable),
        }));
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{BooleanArray, Float64Array};

    use super::*;

    fn accumulate(metric: Metric, a: ArrayRef, p: ArrayRef) -> Option<f64> {
        let mut acc = MetricAccumulator {
            metric,
            sums: vec![0.0; metric.sums()],
            pairs: Vec::new(),
        };
        acc.update_batch(&[a, p]).expect("update");
        // Through a partial state and a merge, as a two-phase plan does.
        let state: Vec<ArrayRef> = acc
            .state()
            .expect("state")
            .iter()
            .map(|v| v.to_array().expect("array"))
            .collect();
        let mut merged = MetricAccumulator {
            metric,
            sums: vec![0.0; metric.sums()],
            pairs: Vec::new(),
        };
        merged.merge_batch(&state).expect("merge");
        match merged.evaluate().expect("evaluate") {
            ScalarValue::Float64(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn metrics_agree_with_the_holdout_formulas() {
        let a: ArrayRef = Arc::new(BooleanArray::from(vec![true, true, false, false]));
        let p: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true, false]));
        assert_eq!(
            accumulate(Metric::Precision, Arc::clone(&a), Arc::clone(&p)),
            Some(0.5)
        );
        assert_eq!(accumulate(Metric::F1, Arc::clone(&a), p), Some(0.5));
        let scores: ArrayRef = Arc::new(Float64Array::from(vec![0.9, 0.8, 0.3, 0.1]));
        assert_eq!(accumulate(Metric::Auc, a, scores), Some(1.0));
        let y: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
        let yhat: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 4.0]));
        let expected = metrics::regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]);
        assert_eq!(
            accumulate(Metric::Mae, Arc::clone(&y), Arc::clone(&yhat)),
            Some(expected[0].1)
        );
        assert_eq!(accumulate(Metric::R2, y, yhat), Some(expected[2].1));
    }
}
