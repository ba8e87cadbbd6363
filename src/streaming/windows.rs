//! Window table functions: `TUMBLE(rel, ts, size)`, `HOP(rel, ts, slide, size)` and
//! `SESSION(rel, ts, gap [, partition columns...])`, each adding `window_start` and
//! `window_end` to the relation's columns. The ANSI spellings (`TABLE(TUMBLE(TABLE rel,
//! DESCRIPTOR(ts), size))`, `SESSION(TABLE rel PARTITION BY k, DESCRIPTOR(ts), gap)`) are
//! rewritten to these by the parser.
//!
//! Each call returns a [`WindowedTable`] whose rows are defined by a SQL query over the relation
//! (`date_bin` for tumbling windows, one `UNION ALL` branch per overlapping window for hopping
//! ones, `lag` and running sums for sessions). Ad-hoc queries run that query over the stored
//! history; the streaming planner compiles the same query for tumbling and hopping windows and
//! uses its session operator for sessions, so a view and the batch oracle agree by construction.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{Column, TableReference};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::FutureExt;

use crate::catalog::DEFAULT_SCHEMA;
use crate::error::{Error, Result};

/// The longest window, gap or slide (100 years): window arithmetic stays far from overflow.
const MAX_WINDOW_MICROS: i64 = 100 * 366 * 86_400_000_000;

/// Which window function.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowKind {
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
    Session { gap: i64, partition: Vec<String> },
}

impl WindowKind {
    /// The window length (sessions vary: None).
    pub fn size(&self) -> Option<i64> {
        match self {
            WindowKind::Tumble { size } | WindowKind::Hop { size, .. } => Some(*size),
            WindowKind::Session { .. } => None,
        }
    }
}

/// A relation with window columns.
#[derive(Debug)]
pub struct WindowedTable {
    pub source: TableReference,
    pub source_provider: Arc<dyn TableProvider>,
    pub time_column: String,
    pub kind: WindowKind,
    schema: SchemaRef,
}

impl WindowedTable {
    /// The query that defines the rows.
    pub fn sql(&self) -> String {
        let source = quoted_reference(&self.source);
        let ts = quote(&self.time_column);
        let columns: Vec<String> = self
            .source_provider
            .schema()
            .fields()
            .iter()
            .map(|f| quote(f.name()))
            .collect();
        let columns = columns.join(", ");
        match &self.kind {
            WindowKind::Tumble { size } => {
                let start = format!("date_bin({}, {ts})", interval(*size));
                format!(
                    "SELECT {columns}, {start} AS window_start, {start} + {} AS window_end FROM {source}",
                    interval(*size)
                )
            }
            WindowKind::Hop { .. } => {
                let branches: Vec<String> = self
                    .hop_branches()
                    .into_iter()
                    .map(|(start, end)| {
                        format!(
                            "SELECT {columns}, {start} AS window_start, {end} AS window_end \
                             FROM {source} WHERE {ts} < {end}"
                        )
                    })
                    .collect();
                branches.join(" UNION ALL ")
            }
            WindowKind::Session { gap, partition } => {
                let partition_by = if partition.is_empty() {
                    String::new()
                } else {
                    let keys: Vec<String> = partition.iter().map(|p| quote(p)).collect();
                    format!("PARTITION BY {}", keys.join(", "))
                };
                let session_key = if partition.is_empty() {
                    "PARTITION BY eddy_session".to_string()
                } else {
                    format!("{partition_by}, eddy_session")
                };
                let gap = interval(*gap);
                format!(
                    "SELECT {columns}, min({ts}) OVER ({session_key}) AS window_start, \
                     max({ts}) OVER ({session_key}) + {gap} AS window_end FROM (\
                     SELECT *, sum(CASE WHEN eddy_previous IS NULL OR {ts} >= eddy_previous + {gap} \
                     THEN 1 ELSE 0 END) OVER ({partition_by} ORDER BY {ts}) AS eddy_session FROM (\
                     SELECT *, lag({ts}) OVER ({partition_by} ORDER BY {ts}) AS eddy_previous \
                     FROM {source} WHERE {ts} IS NOT NULL) eddy_lagged) eddy_numbered"
                )
            }
        }
    }

    /// HOP's (window_start, window_end) expressions per overlapping window, as SQL over the
    /// relation's columns; the same ones [`WindowedTable::sql`] uses.
    pub fn hop_branches(&self) -> Vec<(String, String)> {
        let WindowKind::Hop { slide, size } = self.kind else {
            return Vec::new();
        };
        let ts = quote(&self.time_column);
        (0..(size - 1) / slide + 1)
            .map(|i| {
                let start = format!(
                    "date_bin({}, {ts}) - {}",
                    interval(slide),
                    interval(i * slide)
                );
                let end = format!("{start} + {}", interval(size));
                (start, end)
            })
            .collect()
    }

    /// The defining query as an optimized logical plan.
    pub async fn plan(&self, state: &SessionState) -> Result<LogicalPlan> {
        let plan = state.create_logical_plan(&self.sql()).await?;
        Ok(state.optimize(&plan)?)
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quoted_reference(reference: &TableReference) -> String {
    match reference {
        TableReference::Bare { table } => quote(table),
        TableReference::Partial { schema, table } => format!("{}.{}", quote(schema), quote(table)),
        TableReference::Full {
            catalog,
            schema,
            table,
        } => format!("{}.{}.{}", quote(catalog), quote(schema), quote(table)),
    }
}

/// An interval literal of `micros` microseconds.
fn interval(micros: i64) -> String {
    format!("INTERVAL '{micros} microseconds'")
}

#[async_trait]
impl TableProvider for WindowedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
            return Err(Error::Internal("window functions need a session state".into()).into());
        };
        let ctx = SessionContext::new_with_state(state.clone());
        let mut df = ctx.sql(&self.sql()).await?;
        if let Some(projection) = projection {
            let columns: Vec<Expr> = projection
                .iter()
                .map(|i| Expr::Column(Column::from_name(self.schema.field(*i).name())))
                .collect();
            df = df.select(columns)?;
        }
        df.create_physical_plan().await
    }
}

/// The table functions, resolving relation names in the user schema of `ctx`'s catalog.
#[derive(Debug)]
pub struct WindowFunction {
    name: &'static str,
}

/// Register TUMBLE, HOP and SESSION (also as `session_window`), and `eddy_temporal`.
pub fn register(ctx: &SessionContext) {
    for name in ["tumble", "hop", "session", "session_window"] {
        ctx.register_udtf(name, Arc::new(WindowFunction { name }));
    }
    ctx.register_udtf("eddy_temporal", Arc::new(TemporalFunction));
}

fn usage(name: &str) -> String {
    match name {
        "tumble" => "TUMBLE(relation, time_column, INTERVAL 'size')".to_string(),
        "hop" => "HOP(relation, time_column, INTERVAL 'slide', INTERVAL 'size')".to_string(),
        _ => "SESSION(relation, time_column, INTERVAL 'gap' [, partition_column ...])".to_string(),
    }
}

impl WindowFunction {
    fn wrong(&self, detail: &str) -> Error {
        Error::InvalidValue(format!("{detail}; usage: {}", usage(self.name)))
    }

    fn column_name(&self, expr: &Expr, what: &str) -> Result<Column> {
        match expr {
            Expr::Column(c) => Ok(c.clone()),
            Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Ok(Column::from_name(s)),
            other => Err(self.wrong(&format!("{what} must be a name, found {other}"))),
        }
    }

    fn duration(&self, expr: &Expr, what: &str) -> Result<i64> {
        let micros = match expr {
            Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
                i64::from(v.days)
                    .checked_mul(86_400_000_000)
                    .and_then(|d| d.checked_add(v.nanoseconds / 1000))
                    .filter(|m| *m <= MAX_WINDOW_MICROS)
                    .or(Some(-1))
            }
            Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => i64::from(v.days)
                .checked_mul(86_400_000_000)
                .and_then(|d| d.checked_add(i64::from(v.milliseconds) * 1000))
                .filter(|m| *m <= MAX_WINDOW_MICROS)
                .or(Some(-1)),
            Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(_)), _)
            | Expr::Literal(ScalarValue::IntervalYearMonth(Some(_)), _) => {
                return Err(self.wrong(&format!(
                    "{what} must be a fixed duration (days or less), not months or years"
                )));
            }
            _ => None,
        };
        match micros {
            Some(m) if m > 0 => Ok(m),
            Some(-1) => Err(self.wrong(&format!("{what} must be at most 100 years"))),
            Some(_) => Err(self.wrong(&format!("{what} must be positive"))),
            None => Err(self.wrong(&format!("{what} must be an INTERVAL literal, found {expr}"))),
        }
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        Ok(self.build(args.exprs(), args.session())?)
    }
}

impl WindowFunction {
    fn build(&self, exprs: &[Expr], session: &dyn Session) -> Result<Arc<dyn TableProvider>> {
        let min_args = if self.name == "hop" { 4 } else { 3 };
        if exprs.len() < min_args
            || (self.name != "session" && self.name != "session_window" && exprs.len() > min_args)
        {
            return Err(self.wrong(&format!(
                "{} takes {min_args} arguments",
                self.name.to_uppercase()
            )));
        }
        let relation = self.column_name(&exprs[0], "the first argument (relation)")?;
        let reference = match relation.relation {
            Some(schema) => TableReference::partial(schema.table(), relation.name.as_str()),
            None => TableReference::bare(relation.name.as_str()),
        };
        let source_provider = lookup(session, &reference)?;
        let time_column = self.column_name(&exprs[1], "the time column")?.name;
        let schema = source_provider.schema();
        let time_field = schema
            .field_with_name(&time_column)
            .map_err(|_| Error::NotFound {
                kind: "column",
                name: format!("{time_column}\" of relation \"{}", reference.table()),
            })?;
        if !matches!(
            time_field.data_type(),
            datafusion::arrow::datatypes::DataType::Timestamp(..)
        ) {
            return Err(self.wrong(&format!(
                "the time column \"{time_column}\" must be a timestamp, not {}",
                time_field.data_type()
            )));
        }
        let kind = match self.name {
            "tumble" => WindowKind::Tumble {
                size: self.duration(&exprs[2], "the window size")?,
            },
            "hop" => {
                let slide = self.duration(&exprs[2], "the slide")?;
                let size = self.duration(&exprs[3], "the window size")?;
                if size / slide > 1000 {
                    return Err(
                        self.wrong("a window may overlap at most 1000 others (size / slide)")
                    );
                }
                WindowKind::Hop { slide, size }
            }
            _ => {
                let gap = self.duration(&exprs[2], "the session gap")?;
                let partition = exprs[3..]
                    .iter()
                    .map(|e| {
                        let name = self.column_name(e, "a partition column")?.name;
                        schema.field_with_name(&name).map_err(|_| Error::NotFound {
                            kind: "column",
                            name: name.clone(),
                        })?;
                        Ok(name)
                    })
                    .collect::<Result<Vec<_>>>()?;
                WindowKind::Session { gap, partition }
            }
        };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for name in ["window_start", "window_end"] {
            if schema.field_with_name(name).is_ok() {
                return Err(self.wrong(&format!(
                    "\"{}\" already has a column named {name}",
                    reference.table()
                )));
            }
            fields.push(Field::new(name, time_field.data_type().clone(), true));
        }
        Ok(Arc::new(WindowedTable {
            source: reference,
            source_provider,
            time_column,
            kind,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

/// A user relation (stream, table or view) by name, from the session's catalog.
fn lookup(session: &dyn Session, reference: &TableReference) -> Result<Arc<dyn TableProvider>> {
    let state = session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| Error::Internal("window functions need a session state".into()))?;
    let options = state.config_options();
    let catalog_name = options.catalog.default_catalog.clone();
    let schema_name = reference.schema().unwrap_or(DEFAULT_SCHEMA).to_string();
    let not_found = || Error::NotFound {
        kind: "relation",
        name: reference.table().to_string(),
    };
    let schema = state
        .catalog_list()
        .catalog(&catalog_name)
        .and_then(|c| c.schema(&schema_name))
        .ok_or_else(not_found)?;
    // User schemas are in memory: the lookup is ready at once.
    match schema.table(reference.table()).now_or_never() {
        Some(Ok(Some(provider))) => Ok(provider),
        Some(Err(e)) => Err(e.into()),
        _ => Err(not_found()),
    }
}

/// `table FOR SYSTEM_TIME AS OF probe.time`, as the parser rewrites it:
/// `eddy_temporal(table, 'time')`. Ad-hoc queries read the table as it is now; in a view the
/// join becomes a temporal join on `time`.
#[derive(Debug)]
pub struct TemporalTable {
    pub table: Arc<dyn TableProvider>,
    pub time_column: String,
}

#[async_trait]
impl TableProvider for TemporalTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![
            TableProviderFilterPushDown::Unsupported;
            filters.len()
        ])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.table.scan(state, projection, filters, limit).await
    }
}

/// The table function behind `FOR SYSTEM_TIME AS OF`.
#[derive(Debug)]
struct TemporalFunction;

impl TableFunctionImpl for TemporalFunction {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let name = |e: &Expr| match e {
            Expr::Column(c) => Some(c.clone()),
            Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(Column::from_name(s)),
            _ => None,
        };
        let (Some(table), Some(time)) = (exprs.first().and_then(name), exprs.get(1).and_then(name))
        else {
            return Err(Error::InvalidValue(
                "FOR SYSTEM_TIME AS OF needs a table and a column of the other side".into(),
            )
            .into());
        };
        let reference = match table.relation {
            Some(schema) => TableReference::partial(schema.table(), table.name.as_str()),
            None => TableReference::bare(table.name.as_str()),
        };
        let provider = lookup(args.session(), &reference)?;
        Ok(Arc::new(TemporalTable {
            table: provider,
            time_column: time.name,
        }))
    }
}
