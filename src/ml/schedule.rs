//! Training modes: `mode = 'batch'` (the default: one fit per `CREATE` or `RETRAIN`) and
//! `mode = 'windowed'` (refit every `retrain_every` on the rows of the last `window` of event
//! time, each fit a new version, promoted per `promote`).
//!
//! A windowed model's query returns its features, its target and its `time_column`. Every fit
//! runs the query, keeps the rows whose time is within `window` of the newest row's time (event
//! time, so a replayed or generated history trains the same way as a live one), and drops the
//! time column before fitting; the version records the time range it saw. Promotion:
//! `always` activates every new version, `manual` none (`ALTER MODEL ... SET ACTIVE VERSION`),
//! `if_better` one whose `metric` on its own holdout rows (a seeded sample of the window) beats
//! the active version's on the same rows.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Int64Type};

use crate::error::{Error, Result};

/// Options of the training mode (every algorithm takes them).
pub const OPTIONS: &[&str] = &[
    "mode",
    "window",
    "retrain_every",
    "promote",
    "metric",
    "time_column",
];

/// Metrics `if_better` can compare (what evaluation records).
const KNOWN_METRICS: &[&str] = &[
    "accuracy",
    "precision",
    "recall",
    "f1",
    "auc",
    "log_loss",
    "mae",
    "rmse",
    "r2",
    "inertia",
];

/// When a new version becomes the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    Always,
    Manual,
    IfBetter,
}

/// How a windowed model is refit.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub window: Duration,
    pub every: Duration,
    pub promote: Promote,
    /// The holdout metric `if_better` compares; None takes the algorithm's headline metric.
    pub metric: Option<String>,
    pub time_column: String,
}

use crate::parser::last_option as option;

impl Schedule {
    /// The schedule the options ask for; None for a batch model. Schedule options without
    /// `mode = 'windowed'` are refused, so they never silently do nothing.
    pub fn from_options(options: &[(String, String)]) -> Result<Option<Schedule>> {
        let mode = option(options, "mode").map(|m| m.trim().to_ascii_lowercase());
        match mode.as_deref() {
            None | Some("batch") => {
                if let Some(name) = OPTIONS
                    .iter()
                    .skip(1)
                    .find(|name| option(options, name).is_some())
                {
                    return Err(Error::InvalidValue(format!(
                        "option \"{name}\" applies to mode = 'windowed' only"
                    )));
                }
                return Ok(None);
            }
            Some("windowed") => {}
            // Online settings are read by `super::online`.
            Some("online") => {
                if let Some(name) = ["window", "retrain_every", "metric"]
                    .iter()
                    .find(|name| option(options, name).is_some())
                {
                    return Err(Error::InvalidValue(format!(
                        "option \"{name}\" applies to mode = 'windowed' only (an online model \
                         learns every row as it comes; snapshot_every sets how often it is \
                         recorded as a version)"
                    )));
                }
                return Ok(None);
            }
            Some(other) => {
                return Err(Error::InvalidValue(format!(
                    "invalid value for model option \"mode\": \"{other}\" (batch, windowed or online)"
                )));
            }
        }
        let duration = |name: &str| -> Result<Duration> {
            let text = option(options, name).ok_or_else(|| {
                Error::InvalidValue(format!(
                    "mode = 'windowed' needs {name} (a duration such as '10 minutes')"
                ))
            })?;
            let duration = crate::storage::parse_duration(text)?;
            if duration.is_zero() {
                return Err(Error::InvalidValue(format!(
                    "invalid value for model option \"{name}\": \"{text}\" (longer than zero)"
                )));
            }
            Ok(duration)
        };
        let window = duration("window")?;
        let every = duration("retrain_every")?;
        let promote = match option(options, "promote").map(|p| p.trim().to_ascii_lowercase()) {
            None => Promote::IfBetter,
            Some(p) if p == "always" => Promote::Always,
            Some(p) if p == "manual" => Promote::Manual,
            Some(p) if p == "if_better" => Promote::IfBetter,
            Some(other) => {
                return Err(Error::InvalidValue(format!(
                    "invalid value for model option \"promote\": \"{other}\" (always, manual or if_better)"
                )));
            }
        };
        let time_column = option(options, "time_column")
            .map(|c| c.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::InvalidValue(
                    "mode = 'windowed' needs time_column (the query's event-time column)"
                        .to_string(),
                )
            })?;
        let metric = option(options, "metric").map(|m| m.trim().to_ascii_lowercase());
        if let Some(metric) = &metric
            && !KNOWN_METRICS.contains(&metric.as_str())
        {
            return Err(Error::InvalidValue(format!(
                "invalid value for model option \"metric\": \"{metric}\" ({})",
                KNOWN_METRICS.join(", ")
            )));
        }
        let holdout = option(options, "test_fraction")
            .and_then(|f| f.trim().parse::<f64>().ok())
            .unwrap_or(0.2);
        if promote == Promote::IfBetter && holdout <= 0.0 {
            return Err(Error::InvalidValue(
                "promote = 'if_better' compares versions on holdout rows: test_fraction must be above 0".to_string(),
            ));
        }
        Ok(Some(Schedule {
            window,
            every,
            promote,
            metric,
            time_column,
        }))
    }

    /// The rows within `window` of the newest row's time, without the time column, and the
    /// time range they cover (microseconds since the epoch).
    pub fn window_rows(&self, rows: &RecordBatch) -> Result<(RecordBatch, Option<(i64, i64)>)> {
        let schema = rows.schema();
        let index = schema
            .index_of(&self.time_column)
            .map_err(|_| Error::NotFound {
                kind: "column",
                name: format!(
                    "{}\" (time_column) in the training query's result, whose columns are \"{}",
                    self.time_column,
                    super::quoted_column_names(&schema)
                ),
            })?;
        let column = rows.column(index);
        if !matches!(column.data_type(), DataType::Timestamp(..)) {
            return Err(Error::DatatypeMismatch(format!(
                "time_column \"{}\" must be a timestamp, not {}",
                self.time_column,
                column.data_type()
            )));
        }
        let micros = super::timestamp_micros(column)?;
        let newest = micros.iter().flatten().max();
        let window = i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX);
        let keep: BooleanArray = micros
            .iter()
            .map(|t| {
                Some(matches!((t, newest), (Some(t), Some(n)) if t > n.saturating_sub(window)))
            })
            .collect();
        let kept = filter_record_batch(rows, &keep)?;
        let kept_times = filter_record_batch(
            &RecordBatch::try_from_iter([("t", Arc::new(micros.clone()) as _)])?,
            &keep,
        )?;
        let times = kept_times.column(0).as_primitive::<Int64Type>();
        let range = match (times.iter().flatten().min(), times.iter().flatten().max()) {
            (Some(from), Some(to)) => Some((from, to)),
            _ => None,
        };
        let mut kept = kept;
        kept.remove_column(index);
        Ok((kept, range))
    }
}

/// Whether a larger value of `metric` is better.
pub fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "log_loss" | "mae" | "rmse" | "inertia")
}

/// The metric promotion compares by default: the first of these the version has.
pub fn headline_metric(metrics: &[(String, f64)]) -> Option<&str> {
    ["accuracy", "r2", "inertia"]
        .into_iter()
        .find(|m| metrics.iter().any(|(name, _)| name == m))
}

/// The value of `metric` in `metrics`.
pub fn metric_value(metrics: &[(String, f64)], metric: &str) -> Option<f64> {
    metrics
        .iter()
        .find(|(name, _)| name == metric)
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, TimestampMicrosecondArray};

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn windowed_options_are_checked() {
        assert_eq!(Schedule::from_options(&[]).expect("batch"), None);
        assert!(Schedule::from_options(&options(&[("window", "1 minute")])).is_err());
        assert!(Schedule::from_options(&options(&[("mode", "windowed")])).is_err());
        assert_eq!(
            Schedule::from_options(&options(&[("mode", "online")])).ok(),
            Some(None)
        );
        assert!(
            Schedule::from_options(&options(&[("mode", "online"), ("window", "1 minute")]))
                .is_err()
        );
        let schedule = Schedule::from_options(&options(&[
            ("mode", "windowed"),
            ("window", "10 minutes"),
            ("retrain_every", "1 minute"),
            ("time_column", "ts"),
        ]))
        .expect("windowed")
        .expect("a schedule");
        assert_eq!(schedule.promote, Promote::IfBetter);
        assert_eq!(schedule.window, Duration::from_secs(600));
    }

    #[test]
    fn window_rows_keep_the_newest_window_and_drop_the_time() {
        let schedule = Schedule {
            window: Duration::from_secs(2),
            every: Duration::from_secs(1),
            promote: Promote::Always,
            metric: None,
            time_column: "ts".into(),
        };
        let rows = RecordBatch::try_from_iter([
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![
                    0, 1_000_000, 2_000_000, 3_000_000,
                ])) as _,
            ),
            (
                "x",
                Arc::new(Float64Array::from(vec![0.0, 1.0, 2.0, 3.0])) as _,
            ),
        ])
        .expect("rows");
        let (kept, range) = schedule.window_rows(&rows).expect("window");
        assert_eq!(kept.num_columns(), 1);
        assert_eq!(
            kept.column(0)
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .values()
                .to_vec(),
            vec![2.0, 3.0]
        );
        assert_eq!(range, Some((2_000_000, 3_000_000)));
    }
}
