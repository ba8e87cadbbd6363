//! Drift of a feature against the training baseline of a model's active version:
//! `DRIFT_PSI(model, 'feature', value)` and `DRIFT_KS(model, 'feature', value)`, aggregates
//! usable in windows.
//!
//! The baseline is what the version recorded at training ([`super::features::Baseline`]): the
//! minimum, the nine deciles and the maximum of the feature's training values. PSI compares
//! the share of observed values in each of the ten decile bins with the 10% the training rows
//! had there: Σ (observed − expected) · ln(observed / expected), shares floored at 0.0001 so an
//! empty bin counts as a large but finite shift (below 0.1 is commonly read as stable, above
//! 0.25 as drift). KS is the largest distance between the observed values' empirical
//! distribution function and the baseline's, which is interpolated linearly between the
//! recorded quantiles.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;

use super::features::Baseline;
use super::registry::Models;
use crate::error::{Error, Result};

/// Shares below this count as this (an empty bin would make PSI infinite).
const MIN_SHARE: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Measure {
    Psi,
    Ks,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Psi => "drift_psi",
            Measure::Ks => "drift_ks",
        }
    }
}

#[derive(Debug)]
struct Drift {
    measure: Measure,
    models: Arc<Models>,
    signature: Signature,
}

impl PartialEq for Drift {
    fn eq(&self, other: &Self) -> bool {
        self.measure == other.measure
    }
}

impl Eq for Drift {}

impl Hash for Drift {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.measure.hash(state);
    }
}

impl Drift {
    /// The baseline named by the literal model and feature arguments.
    fn baseline(
        &self,
        model: Option<&ScalarValue>,
        feature: Option<&ScalarValue>,
    ) -> Result<Baseline> {
        let name = self.measure.name().to_uppercase();
        let text = |v: Option<&ScalarValue>| match v {
            Some(ScalarValue::Utf8(Some(s)))
            | Some(ScalarValue::LargeUtf8(Some(s)))
            | Some(ScalarValue::Utf8View(Some(s))) => Some(s.clone()),
            _ => None,
        };
        let (Some(model), Some(feature)) = (text(model), text(feature)) else {
            return Err(Error::InvalidValue(format!(
                "{name} takes (model, 'feature', value) with the model and feature named by \
                 constants"
            )));
        };
        let (entry, pinned) = self.models.resolve(&model)?;
        let (_, trained) = entry.trained(pinned)?;
        trained
            .baselines
            .iter()
            .find(|b| b.name == feature)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidValue(format!(
                    "model \"{model}\" has no numeric feature \"{feature}\" (its features: {})",
                    trained.featurizer.signature()
                ))
            })
    }
}

impl AggregateUDFImpl for Drift {
    fn name(&self) -> &str {
        self.measure.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::error::Result<Vec<DataType>> {
        match arg_types {
            [_, _, value] if value.is_numeric() || *value == DataType::Null => {
                Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Float64])
            }
            _ => Err(Error::DatatypeMismatch(format!(
                "{} takes (model, 'feature', number)",
                self.measure.name().to_uppercase()
            ))
            .into()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> datafusion::error::Result<Box<dyn Accumulator>> {
        let literal = |i: usize| {
            args.exprs
                .get(i)
                .and_then(|e| e.downcast_ref::<Literal>())
                .map(|l| l.value())
        };
        let baseline = self.baseline(literal(0), literal(1))?;
        Ok(Box::new(DriftAccumulator {
            measure: self.measure,
            baseline,
            values: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::error::Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new_list(
            format_state_name(args.name, "values"),
            Field::new_list_field(DataType::Float64, true),
            true,
        ))])
    }
}

#[derive(Debug)]
struct DriftAccumulator {
    measure: Measure,
    baseline: Baseline,
    values: Vec<f64>,
}

/// The baseline's distribution function at `x`: 0 below the minimum, 1 above the maximum,
/// linear between the recorded quantiles (min = 0, deciles = 0.1 ... 0.9, max = 1).
fn baseline_cdf(baseline: &Baseline, x: f64) -> f64 {
    let mut points: Vec<(f64, f64)> = vec![(baseline.min, 0.0)];
    points.extend(
        baseline
            .deciles
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, (i + 1) as f64 / 10.0)),
    );
    points.push((baseline.max, 1.0));
    if x < baseline.min {
        return 0.0;
    }
    if x >= baseline.max {
        return 1.0;
    }
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x < x1 {
            return if x1 > x0 {
                y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            } else {
                y1
            };
        }
    }
    1.0
}

impl DriftAccumulator {
    fn psi(&self) -> f64 {
        // Bins split at the deciles: (-inf, d1], (d1, d2], ..., (d9, inf).
        let mut counts = [0usize; 10];
        for v in &self.values {
            let bin = self.baseline.deciles.iter().filter(|d| v > *d).count();
            counts[bin] += 1;
        }
        let n = self.values.len() as f64;
        counts
            .iter()
            .map(|c| {
                let observed = (*c as f64 / n).max(MIN_SHARE);
                let expected = 0.1;
                (observed - expected) * (observed / expected).ln()
            })
            .sum()
    }

    fn ks(&self) -> f64 {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        sorted
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let base = baseline_cdf(&self.baseline, *v);
                // The empirical function jumps at v: compare both sides of the step.
                (base - i as f64 / n)
                    .abs()
                    .max(((i + 1) as f64 / n - base).abs())
            })
            .fold(0.0, f64::max)
    }
}

impl Accumulator for DriftAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        let Some(column) = values.get(2) else {
            return Err(Error::Internal("drift takes three arguments".into()).into());
        };
        let column = cast(column, &DataType::Float64)?;
        self.values
            .extend(column.as_primitive::<Float64Type>().iter().flatten());
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        let Some(column) = values.get(2) else {
            return Err(Error::Internal("drift takes three arguments".into()).into());
        };
        let column = cast(column, &DataType::Float64)?;
        for v in column.as_primitive::<Float64Type>().iter().flatten() {
            if let Some(i) = self.values.iter().position(|x| *x == v) {
                self.values.swap_remove(i);
            }
        }
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        if self.values.is_empty() {
            return Ok(ScalarValue::Float64(None));
        }
        Ok(ScalarValue::Float64(Some(match self.measure {
            Measure::Psi => self.psi(),
            Measure::Ks => self.ks(),
        })))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * 8
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self
            .values
            .iter()
            .map(|v| ScalarValue::Float64(Some(*v)))
            .collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &DataType::Float64,
        ))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        let Some(lists) = states.first() else {
            return Err(Error::Internal("drift state".into()).into());
        };
        let lists = lists.as_list::<i32>();
        for row in 0..lists.len() {
            let values = lists.value(row);
            self.values
                .extend(values.as_primitive::<Float64Type>().iter().flatten());
        }
        Ok(())
    }
}

/// Register `DRIFT_PSI` and `DRIFT_KS` on `ctx`.
pub fn register(ctx: &SessionContext, models: &Arc<Models>) {
    for measure in [Measure::Psi, Measure::Ks] {
        ctx.register_udaf(AggregateUDF::new_from_impl(Drift {
            measure,
            models: Arc::clone(models),
            signature: Signature::user_defined(Volatility::Stable),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_baseline() -> Baseline {
        Baseline {
            name: "x".into(),
            mean: 50.0,
            std: 28.0,
            min: 0.0,
            max: 100.0,
            deciles: (1..10).map(|d| d as f64 * 10.0).collect(),
        }
    }

    #[test]
    fn the_same_distribution_does_not_drift_and_a_shifted_one_does() {
        let same = DriftAccumulator {
            measure: Measure::Psi,
            baseline: uniform_baseline(),
            values: (0..1000).map(|i| i as f64 / 10.0).collect(),
        };
        assert!(same.psi() < 0.01, "{}", same.psi());
        assert!(same.ks() < 0.01, "{}", same.ks());
        let shifted = DriftAccumulator {
            measure: Measure::Psi,
            baseline: uniform_baseline(),
            values: (0..1000).map(|i| 50.0 + i as f64 / 10.0).collect(),
        };
        assert!(shifted.psi() > 0.25, "{}", shifted.psi());
        assert!((shifted.ks() - 0.5).abs() < 0.01, "{}", shifted.ks());
    }
}
