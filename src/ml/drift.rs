//! Drift of a feature against the training baseline of a model's active version:
//! `DRIFT_PSI(model, 'feature', value)` and `DRIFT_KS(model, 'feature', value)`, aggregates
//! usable in windows.
//!
//! The baseline is what the version recorded at training ([`super::features::Baseline`]): the
//! deciles of the feature's training values with the share of training values in each of the
//! ten bins they split (10% each unless values repeat), and the percentiles. PSI compares the
//! share of observed values per bin with the training share: Σ (observed − expected) ·
//! ln(observed / expected), shares floored at 0.0001 so an empty bin counts as a large but
//! finite shift (below 0.1 is commonly read as stable, above 0.25 as drift). KS is the largest
//! distance between the observed values' distribution function and the baseline's, which is
//! interpolated linearly between percentiles and jumps where training values repeat; both are
//! compared just below and at every observed value.

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
        let text = super::functions::constant_text;
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

/// The baseline's quantile points (x, share of training values at or below), from its
/// percentiles (or, in a baseline without them, min, deciles and max).
fn quantile_points(baseline: &Baseline) -> Vec<(f64, f64)> {
    if baseline.percentiles.len() > 1 {
        let last = (baseline.percentiles.len() - 1) as f64;
        return baseline
            .percentiles
            .iter()
            .enumerate()
            .map(|(i, x)| (*x, i as f64 / last))
            .collect();
    }
    let mut points = vec![(baseline.min, 0.0)];
    points.extend(
        baseline
            .deciles
            .iter()
            .enumerate()
            .map(|(i, d)| (*d, (i + 1) as f64 / 10.0)),
    );
    points.push((baseline.max, 1.0));
    points
}

/// The baseline distribution function at `x` (`left`: just below `x`), linear between
/// quantile points; repeated values make it jump.
fn baseline_cdf(points: &[(f64, f64)], x: f64, left: bool) -> f64 {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return 0.0;
    };
    if x < first.0 || (left && x <= first.0) {
        return 0.0;
    }
    if x > last.0 || (!left && x >= last.0) {
        return 1.0;
    }
    let upper = if left {
        points.iter().position(|p| p.0 >= x)
    } else {
        points.iter().position(|p| p.0 > x)
    };
    match upper {
        Some(j) if j > 0 => {
            let ((x0, y0), (x1, y1)) = (points[j - 1], points[j]);
            if x1 > x0 {
                y0 + (y1 - y0) * (x - x0) / (x1 - x0)
            } else {
                y0
            }
        }
        _ => 1.0,
    }
}

impl DriftAccumulator {
    fn psi(&self) -> f64 {
        let mut counts = [0usize; 10];
        for v in &self.values {
            counts[self.baseline.bin(*v).min(9)] += 1;
        }
        let n = self.values.len() as f64;
        counts
            .iter()
            .enumerate()
            .map(|(bin, c)| {
                let observed = (*c as f64 / n).max(MIN_SHARE);
                // Training shares as recorded (about 10% each, unless values repeat).
                let expected = self
                    .baseline
                    .shares
                    .get(bin)
                    .copied()
                    .unwrap_or(0.1)
                    .max(MIN_SHARE);
                (observed - expected) * (observed / expected).ln()
            })
            .sum()
    }

    fn ks(&self) -> f64 {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let points = quantile_points(&self.baseline);
        let n = sorted.len() as f64;
        let mut gap: f64 = 0.0;
        let mut start = 0;
        // Compare both distribution functions just below and at each distinct value.
        while start < sorted.len() {
            let v = sorted[start];
            let mut end = start;
            while end < sorted.len() && sorted[end] == v {
                end += 1;
            }
            let below = (start as f64 / n - baseline_cdf(&points, v, true)).abs();
            let at = (end as f64 / n - baseline_cdf(&points, v, false)).abs();
            gap = gap.max(below).max(at);
            start = end;
        }
        gap
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

    fn baseline_of(values: &[f64]) -> Baseline {
        use datafusion::arrow::array::Float64Array;
        let column: ArrayRef = Arc::new(Float64Array::from(values.to_vec()));
        let featurizer = super::super::features::Featurizer::fit(
            &[("x".to_string(), ArrayRef::clone(&column))],
            false,
        )
        .expect("fit");
        featurizer.baselines(&[column]).expect("baseline").remove(0)
    }

    fn uniform_baseline() -> Baseline {
        baseline_of(&(0..1000).map(|i| i as f64 / 10.0).collect::<Vec<_>>())
    }

    #[test]
    fn a_discrete_feature_does_not_drift_from_itself() {
        let values: Vec<f64> = (0..1000)
            .map(|i| if i % 10 < 7 { 0.0 } else { 1.0 })
            .collect();
        let same = DriftAccumulator {
            measure: Measure::Psi,
            baseline: baseline_of(&values),
            values: values.clone(),
        };
        assert!(same.psi() < 0.01, "{}", same.psi());
        assert!(same.ks() < 0.02, "{}", same.ks());
        let flipped = DriftAccumulator {
            measure: Measure::Psi,
            baseline: baseline_of(&values),
            values: values.iter().map(|v| 1.0 - v).collect(),
        };
        assert!(flipped.psi() > 0.25, "{}", flipped.psi());
        assert!(flipped.ks() > 0.3, "{}", flipped.ks());
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
