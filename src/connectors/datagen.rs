//! The built-in random-rows generator as a stream source (`WITH (connector = 'datagen', ...)`).
//!
//! The user declares the stream's columns; each column gets its values from a `kind` set with
//! `fields.<column>.<property>` options (the Flink and RisingWave spelling):
//!
//! | kind         | values                                                       | properties |
//! |--------------|--------------------------------------------------------------|------------|
//! | `sequence`   | `start`, `start + 1`, ... (row number plus start)            | `start` (1) |
//! | `random`     | uniform: integers in `[min, max]`, floats in `[min, max)`, booleans true with `true_fraction`, text of `length` letters, or one of `values` (with `weights`) | `min`, `max`, `true_fraction`, `length`, `values`, `weights` |
//! | `normal`     | Gaussian numbers (integers rounded)                          | `mean` (0), `stddev` (1) |
//! | `event_time` | `start_time + row / rows_per_second`, up to `max_past` earlier | `max_past` |
//! | `expression` | a SQL expression over the other columns and `_row`           | `expression` |
//!
//! Timestamp columns default to `event_time`, others to `random`. Any field takes
//! `null_fraction`. A field with a generating kind may also have an `expression`, which then
//! sees the generated value under the column's own name: that is how a distribution shifts
//! mid-stream (`CASE WHEN _row >= 5000 THEN amount * 3 ELSE amount END`) or a label follows a
//! rule over the features. Expressions run in column order; each sees the final values of the
//! columns before it and the generated values of the columns after it.
//!
//! Data flow: rows are cut into chunks of [`DatagenSource::rows_per_chunk`] consecutive row
//! numbers, and chunk `c` is always the same rows (its random values come from a generator
//! seeded with `seed`, the column and `c`). Each chunk is appended as one log record, so after
//! a restart the source resumes at chunk `records appended so far`, like the Nexmark source:
//! no row is written twice or skipped. Paced (the default), a chunk is appended when the wall
//! clock reaches its last row's event time; unpaced, as fast as storage takes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options, nullif};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, Volatility};
use datafusion::physical_expr::PhysicalExpr;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::error::{Error, Result};

/// Options of a datagen stream besides `connector`; `fields.*` stands for every
/// `fields.<column>.<property>`.
pub const OPTIONS: &[&str] = &[
    "rows_per_second",
    "rows",
    "paced",
    "seed",
    "start_time",
    "fields.*",
];

/// The name expressions use for the row number (0 for the first row).
pub const ROW_NUMBER: &str = "_row";

/// Properties a field accepts.
const FIELD_PROPERTIES: &[&str] = &[
    "kind",
    "start",
    "min",
    "max",
    "mean",
    "stddev",
    "true_fraction",
    "length",
    "values",
    "weights",
    "max_past",
    "null_fraction",
    "expression",
];

/// How a column's values are generated before its expression (if any) runs.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Sequence {
        start: i64,
    },
    /// Uniform integers in `[min, max]`.
    UniformInt {
        min: i64,
        max: i64,
    },
    /// Uniform floats in `[min, max)`.
    UniformFloat {
        min: f64,
        max: f64,
    },
    Normal {
        mean: f64,
        stddev: f64,
        round: bool,
    },
    Boolean {
        true_fraction: f64,
    },
    Letters {
        length: usize,
    },
    /// One of `values`, picked with probability proportional to its weight.
    Choice {
        values: Vec<String>,
        cumulative_weights: Vec<f64>,
    },
    EventTime {
        max_past_micros: u64,
    },
    /// No generated value: the expression gives it (NULL for expressions that read it).
    Computed,
}

/// One column's generator.
#[derive(Debug)]
struct FieldGenerator {
    name: String,
    data_type: DataType,
    kind: Kind,
    null_fraction: f64,
    expression: Option<Arc<dyn PhysicalExpr>>,
}

/// What one datagen stream generates.
#[derive(Debug)]
pub struct DatagenSource {
    /// Rows per second of event time.
    rate: u64,
    /// Rows to generate; None runs forever.
    rows: Option<u64>,
    paced: bool,
    seed: u64,
    /// Event time of row 0, in microseconds since the epoch.
    start_micros: i64,
    fields: Vec<FieldGenerator>,
    /// The stream's columns (nullable) plus `_row`: what expressions are evaluated against.
    expression_schema: SchemaRef,
    schema: SchemaRef,
}

fn bad(name: &str, value: &str, want: &str) -> Error {
    Error::InvalidValue(format!(
        "invalid value for datagen option \"{name}\": \"{value}\" ({want})"
    ))
}

/// The session state datagen expressions are planned with: DataFusion's built-in functions.
fn expression_state() -> SessionState {
    datafusion::prelude::SessionContext::new().state()
}

impl DatagenSource {
    /// Read and check the options against the stream's columns (`options` holds every `WITH`
    /// option, names lower-cased; `start_time` is filled in at creation).
    pub fn new(options: &BTreeMap<String, String>, schema: &SchemaRef) -> Result<Self> {
        let number = |name: &str| -> Result<Option<u64>> {
            options
                .get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| bad(name, v, "a whole number"))
                })
                .transpose()
        };
        let rate = number("rows_per_second")?.unwrap_or(1000);
        if rate == 0 || rate > 100_000_000 {
            return Err(bad(
                "rows_per_second",
                &rate.to_string(),
                "between 1 and 100000000",
            ));
        }
        let paced = match options.get("paced") {
            None => true,
            Some(v) => crate::server::encode::parse_bool(v.trim())
                .ok_or_else(|| bad("paced", v, "true or false"))?,
        };
        let start_micros = match options.get("start_time") {
            Some(text) => {
                datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
                    .map_err(|_| {
                        bad(
                            "start_time",
                            text,
                            "a timestamp such as '2026-01-01 00:00:00+00'",
                        )
                    })?
                    / 1000
            }
            None => return Err(Error::Internal("datagen start_time not set".to_string())),
        };
        // Every fields.<column>.<property>, grouped by column.
        let mut properties: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (key, value) in options {
            let Some(rest) = key.strip_prefix("fields.") else {
                continue;
            };
            let Some((column, property)) = rest.rsplit_once('.') else {
                return Err(Error::InvalidValue(format!(
                    "datagen option \"{key}\" should be fields.<column>.<property>"
                )));
            };
            if schema.field_with_name(column).is_err() {
                return Err(Error::NotFound {
                    kind: "column",
                    name: format!("{column} (in datagen option \"{key}\")"),
                });
            }
            if !FIELD_PROPERTIES.contains(&property) {
                return Err(Error::InvalidValue(format!(
                    "unrecognized datagen field property \"{property}\" in \"{key}\" (known: {})",
                    FIELD_PROPERTIES.join(", ")
                )));
            }
            properties
                .entry(column)
                .or_default()
                .insert(property, value.as_str());
        }
        let has_expressions = properties.values().any(|p| p.contains_key("expression"));
        if has_expressions && schema.field_with_name(ROW_NUMBER).is_ok() {
            return Err(Error::InvalidValue(format!(
                "a datagen stream whose fields have expressions cannot have a column named {ROW_NUMBER} (expressions use it for the row number)"
            )));
        }
        let expression_schema: SchemaRef = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .chain([Field::new(ROW_NUMBER, DataType::Int64, false)])
                .collect::<Vec<_>>(),
        ));
        let state = has_expressions.then(expression_state);
        let fields = schema
            .fields()
            .iter()
            .map(|field| {
                let empty = BTreeMap::new();
                let props = properties.get(field.name().as_str()).unwrap_or(&empty);
                field_generator(field, props, state.as_ref(), &expression_schema)
            })
            .collect::<Result<Vec<_>>>()?;
        let source = DatagenSource {
            rate,
            rows: number("rows")?,
            paced,
            seed: number("seed")?.unwrap_or(42),
            start_micros,
            fields,
            expression_schema,
            schema: Arc::clone(schema),
        };
        // Type errors in values or expressions show at creation, not in the running source.
        source.chunk(0)?;
        Ok(source)
    }

    /// Rows per appended record: a tenth of a second of rows, at least 1, at most 10000.
    pub fn rows_per_chunk(&self) -> u64 {
        (self.rate / 10).clamp(1, 10_000)
    }

    /// Chunks in all, when bounded.
    pub fn chunks(&self) -> Option<u64> {
        self.rows.map(|n| n.div_ceil(self.rows_per_chunk()))
    }

    /// Rows generated by the first `chunks` chunks.
    pub fn rows_within(&self, chunks: u64) -> u64 {
        let end = chunks.saturating_mul(self.rows_per_chunk());
        self.rows.map_or(end, |n| end.min(n))
    }

    /// Nominal event time of row `row`, in microseconds since the epoch.
    fn event_micros(&self, row: u64) -> i64 {
        let offset = u128::from(row) * 1_000_000 / u128::from(self.rate);
        self.start_micros
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// How long to wait before appending chunk `chunk` (zero unpaced or when late).
    pub fn delay_before(&self, chunk: u64) -> Duration {
        if !self.paced {
            return Duration::ZERO;
        }
        let last_row = self.rows_within(chunk + 1).saturating_sub(1);
        let now_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let wait = self.event_micros(last_row).saturating_sub(now_micros);
        Duration::from_micros(u64::try_from(wait).unwrap_or(0))
    }

    /// The rows of chunk `chunk`, always the same for the same options.
    pub fn chunk(&self, chunk: u64) -> Result<RecordBatch> {
        let first = self.rows_within(chunk);
        let end = self.rows_within(chunk + 1);
        let rows: Vec<u64> = (first..end).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.fields.len() + 1);
        for (index, field) in self.fields.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(mix(self.seed, index as u64, chunk));
            let generated = self.generate(field, &rows, &mut rng)?;
            columns.push(cast_strict(&generated, &field.data_type).map_err(|e| {
                Error::DatatypeMismatch(format!(
                    "datagen column \"{}\" of type {}: {e}",
                    field.name, field.data_type
                ))
            })?);
        }
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|&r| r as i64),
        )));
        for (index, field) in self.fields.iter().enumerate() {
            if let Some(expression) = &field.expression {
                let batch =
                    RecordBatch::try_new(Arc::clone(&self.expression_schema), columns.clone())?;
                let value = expression.evaluate(&batch)?.into_array(rows.len())?;
                columns[index] = cast_strict(&value, &field.data_type).map_err(|e| {
                    Error::DatatypeMismatch(format!(
                        "datagen expression of column \"{}\" gives {}, not {}: {e}",
                        field.name,
                        value.data_type(),
                        field.data_type
                    ))
                })?;
            }
            if field.null_fraction > 0.0 {
                // Its own random sequence, so adding nulls leaves the other values alone.
                let mut rng =
                    StdRng::seed_from_u64(mix(self.seed ^ 0x6e75_6c6c, index as u64, chunk));
                let null_here = BooleanArray::from_iter(
                    rows.iter()
                        .map(|_| Some(rng.random_bool(field.null_fraction))),
                );
                columns[index] = nullif(&columns[index], &null_here)?;
            }
        }
        columns.pop();
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// A column's generated values for `rows`, before its expression and nulls.
    fn generate(&self, field: &FieldGenerator, rows: &[u64], rng: &mut StdRng) -> Result<ArrayRef> {
        let n = rows.len();
        Ok(match &field.kind {
            Kind::Sequence { start } => Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|&r| start.saturating_add(r as i64)),
            )),
            Kind::UniformInt { min, max } => Arc::new(Int64Array::from_iter_values(
                (0..n).map(|_| rng.random_range(*min..=*max)),
            )),
            Kind::UniformFloat { min, max } => Arc::new(Float64Array::from_iter_values(
                (0..n).map(|_| min + (max - min) * rng.random::<f64>()),
            )),
            Kind::Normal {
                mean,
                stddev,
                round,
            } => {
                let values = (0..n).map(|_| {
                    let v = mean + stddev * standard_normal(rng);
                    if *round { v.round() } else { v }
                });
                Arc::new(Float64Array::from_iter_values(values))
            }
            Kind::Boolean { true_fraction } => Arc::new(BooleanArray::from_iter(
                (0..n).map(|_| Some(rng.random_bool(*true_fraction))),
            )),
            Kind::Letters { length } => {
                const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
                Arc::new(StringArray::from_iter_values((0..n).map(|_| {
                    (0..*length)
                        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
                        .collect::<String>()
                })))
            }
            Kind::Choice {
                values,
                cumulative_weights,
            } => {
                let total = cumulative_weights.last().copied().unwrap_or(1.0);
                Arc::new(StringArray::from_iter_values((0..n).map(|_| {
                    let at = rng.random::<f64>() * total;
                    let index = cumulative_weights
                        .partition_point(|&w| w <= at)
                        .min(values.len() - 1);
                    values[index].as_str()
                })))
            }
            Kind::EventTime { max_past_micros } => Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|&r| {
                    let past = if *max_past_micros > 0 {
                        rng.random_range(0..=*max_past_micros) as i64
                    } else {
                        0
                    };
                    self.event_micros(r).saturating_sub(past)
                })),
            ),
            Kind::Computed => datafusion::arrow::array::new_null_array(&field.data_type, n),
        })
    }
}

/// Cast that fails on a value the type cannot hold (a text value that is no number, an
/// overflow) instead of turning it into NULL.
fn cast_strict(
    array: &ArrayRef,
    data_type: &DataType,
) -> std::result::Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(array, data_type, &options)
}

/// A seed for (stream seed, column, chunk): SplitMix64 over the three.
fn mix(seed: u64, column: u64, chunk: u64) -> u64 {
    let mut z = seed
        .wrapping_add(column.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(chunk.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One draw of the standard normal distribution (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// Read one column's `fields.<column>.*` properties.
fn field_generator(
    field: &Field,
    props: &BTreeMap<&str, &str>,
    state: Option<&SessionState>,
    expression_schema: &SchemaRef,
) -> Result<FieldGenerator> {
    let column = field.name();
    let option = |property: &str| format!("fields.{column}.{property}");
    let float = |property: &str| -> Result<Option<f64>> {
        props
            .get(property)
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(&option(property), v, "a number"))
            })
            .transpose()
    };
    let fraction = |property: &str, default: f64| -> Result<f64> {
        let value = float(property)?.unwrap_or(default);
        if !(0.0..=1.0).contains(&value) {
            return Err(bad(
                &option(property),
                &value.to_string(),
                "a fraction between 0 and 1",
            ));
        }
        Ok(value)
    };
    let data_type = field.data_type();
    let is_integer = data_type.is_integer();
    let is_time = matches!(data_type, DataType::Timestamp(..) | DataType::Date32);
    let expression_text = props.get("expression").copied();
    let kind_name = match props.get("kind") {
        Some(kind) => kind.trim().to_ascii_lowercase(),
        None if expression_text.is_some() => "expression".to_string(),
        None if is_time => "event_time".to_string(),
        None => "random".to_string(),
    };
    // Which properties each kind reads; others are refused so a typo does not pass silently.
    let reads: &[&str] = match kind_name.as_str() {
        "sequence" => &["start"],
        "random" => &["min", "max", "true_fraction", "length", "values", "weights"],
        "normal" => &["mean", "stddev"],
        "event_time" => &["max_past"],
        "expression" => &[],
        other => {
            return Err(bad(
                &option("kind"),
                other,
                "sequence, random, normal, event_time or expression",
            ));
        }
    };
    for property in props.keys() {
        if !matches!(*property, "kind" | "null_fraction" | "expression")
            && !reads.contains(property)
        {
            return Err(Error::InvalidValue(format!(
                "datagen option \"{}\" does not apply to kind {kind_name} (it reads: {})",
                option(property),
                if reads.is_empty() {
                    "nothing".to_string()
                } else {
                    reads.join(", ")
                }
            )));
        }
    }
    let kind = match kind_name.as_str() {
        "sequence" => Kind::Sequence {
            start: props
                .get("start")
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(&option("start"), v, "a whole number"))
                })
                .transpose()?
                .unwrap_or(1),
        },
        "normal" => {
            let stddev = float("stddev")?.unwrap_or(1.0);
            if stddev < 0.0 {
                return Err(bad(&option("stddev"), &stddev.to_string(), "not negative"));
            }
            Kind::Normal {
                mean: float("mean")?.unwrap_or(0.0),
                stddev,
                round: is_integer,
            }
        }
        "event_time" => Kind::EventTime {
            max_past_micros: match props.get("max_past") {
                Some(v) => {
                    let micros = crate::storage::parse_duration(v)?.as_micros();
                    // A year back is plenty, and keeps the arithmetic far from overflow.
                    if micros > 366 * 86_400 * 1_000_000 {
                        return Err(bad(&option("max_past"), v, "at most a year"));
                    }
                    micros as u64
                }
                None => 0,
            },
        },
        "expression" => Kind::Computed,
        _ if props.contains_key("values") => {
            let values: Vec<String> = props["values"]
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            let weights: Vec<f64> = match props.get("weights") {
                Some(text) => text
                    .split(',')
                    .map(|w| {
                        w.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|w| w.is_finite() && *w >= 0.0)
                            .ok_or_else(|| bad(&option("weights"), text, "non-negative numbers"))
                    })
                    .collect::<Result<_>>()?,
                None => vec![1.0; values.len()],
            };
            if weights.len() != values.len() || weights.iter().sum::<f64>() <= 0.0 {
                return Err(bad(
                    &option("weights"),
                    props.get("weights").copied().unwrap_or(""),
                    "one weight per value, not all zero",
                ));
            }
            let cumulative_weights = weights
                .iter()
                .scan(0.0, |sum, w| {
                    *sum += w;
                    Some(*sum)
                })
                .collect();
            Kind::Choice {
                values,
                cumulative_weights,
            }
        }
        _ if props.contains_key("weights") => {
            return Err(Error::InvalidValue(format!(
                "datagen option \"{}\" needs {} (the values to weigh)",
                option("weights"),
                option("values")
            )));
        }
        _ if *data_type == DataType::Boolean => Kind::Boolean {
            true_fraction: fraction("true_fraction", 0.5)?,
        },
        _ if matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) =>
        {
            Kind::Letters {
                length: props
                    .get("length")
                    .map(|v| {
                        v.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n <= 10_000)
                            .ok_or_else(|| bad(&option("length"), v, "0 to 10000"))
                    })
                    .transpose()?
                    .unwrap_or(8),
            }
        }
        _ if is_integer => {
            let whole = |property: &str, default: i64| -> Result<i64> {
                props
                    .get(property)
                    .map(|v| {
                        v.trim()
                            .parse::<i64>()
                            .map_err(|_| bad(&option(property), v, "a whole number"))
                    })
                    .transpose()
                    .map(|v| v.unwrap_or(default))
            };
            let (min, max) = (whole("min", 0)?, whole("max", 1000)?);
            if min > max {
                return Err(bad(
                    &option("max"),
                    &max.to_string(),
                    &format!("at least min ({min})"),
                ));
            }
            Kind::UniformInt { min, max }
        }
        _ if data_type.is_numeric() => {
            let (min, max) = (float("min")?.unwrap_or(0.0), float("max")?.unwrap_or(1.0));
            if min > max {
                return Err(bad(
                    &option("max"),
                    &max.to_string(),
                    &format!("at least min ({min})"),
                ));
            }
            Kind::UniformFloat { min, max }
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "random values for datagen column \"{column}\" of type {data_type} (give it a kind: sequence, normal, event_time or expression, or values)"
            )));
        }
    };
    let expression = match (expression_text, state) {
        (Some(text), Some(state)) => Some(plan_expression(column, text, state, expression_schema)?),
        _ => None,
    };
    Ok(FieldGenerator {
        name: column.clone(),
        data_type: data_type.clone(),
        kind,
        null_fraction: fraction("null_fraction", 0.0)?,
        expression,
    })
}

/// Plan a field's expression; it must be deterministic, so a restart regenerates the same rows.
fn plan_expression(
    column: &str,
    text: &str,
    state: &SessionState,
    schema: &SchemaRef,
) -> Result<Arc<dyn PhysicalExpr>> {
    let df_schema = DFSchema::try_from(Arc::clone(schema))?;
    let expr = state.create_logical_expr(text, &df_schema).map_err(|e| {
        Error::InvalidValue(format!(
            "datagen expression of column \"{column}\" ({text}): {e}"
        ))
    })?;
    let mut volatile = None;
    expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && f.func.signature().volatility == Volatility::Volatile
        {
            volatile = Some(f.func.name().to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(function) = volatile {
        return Err(Error::InvalidValue(format!(
            "datagen expression of column \"{column}\" calls {function}(), which gives other values after a restart; use a random field (kind random or normal) and refer to it"
        )));
    }
    Ok(state.create_physical_expr(expr, &df_schema)?)
}
