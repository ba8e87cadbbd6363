//! Machine learning in SQL: models trained with linfa on a query's rows, versioned, stored on
//! the object store, and applied by `PREDICT` in any query or materialized view.
//!
//! ```text
//!  CREATE MODEL m PREDICT y USING algo WITH (...) AS query
//!     │ query rows ─► features (encode, standardize) ─► linfa fit ─► holdout metrics
//!     ▼
//!  version n: blob models/<id>/<n>.model on the object store + record in the catalog
//!     │ active version (ALTER MODEL ... SET ACTIVE VERSION / ROLLBACK swap it atomically)
//!     ▼
//!  PREDICT(m, x1, x2, ...) per batch: encode ─► predict ─► label / value / cluster
//! ```
//!
//! [`features`] turns columns into the matrix, [`algorithms`] fits and applies linfa models,
//! [`model`] trains a version from rows and stores it as a blob, [`metrics`] scores
//! predictions (and [`aggregates`] the same as streaming `ML_*` aggregates), [`registry`]
//! holds every model's versions in memory and in the catalog, [`functions`] are the SQL
//! functions, [`drift`] measures a feature's drift from a version's training baseline, and
//! [`schedule`] is the windowed training mode (refit on recent rows, promote if better), and
//! [`online`] the online mode (learn from a continuous query's changes, snapshot versions).

pub mod aggregates;
pub mod algorithms;
pub mod drift;
pub mod features;
pub mod functions;
pub mod metrics;
pub mod model;
pub mod online;
pub mod registry;
pub mod schedule;

use crate::error::{Error, Result};

/// A boolean option (`standardize = true`), spelled as PostgreSQL accepts booleans.
pub(crate) fn parse_bool(name: &str, value: &str) -> Result<bool> {
    crate::server::encode::parse_bool(value.trim()).ok_or_else(|| {
        Error::InvalidValue(format!(
            "option \"{name}\" must be true or false, got \"{value}\""
        ))
    })
}

/// A result's column names as an error message lists them: `a", "b` (between the message's
/// own quotes).
pub(crate) fn quoted_column_names(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join("\", \"")
}

/// A timestamp column's values as microseconds since the epoch.
pub(crate) fn timestamp_micros(
    column: &datafusion::arrow::array::ArrayRef,
) -> Result<datafusion::arrow::array::Int64Array> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
    let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let micros = cast(&micros, &DataType::Int64)?;
    Ok(micros.as_primitive::<Int64Type>().clone())
}
