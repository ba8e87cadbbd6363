//! Statements to actions: DDL on the [`Catalog`], DataFusion plans for everything else.
//!
//! The [`Engine`] owns the server-wide DataFusion `SessionContext` (catalog, `pg_catalog`,
//! `information_schema`, PostgreSQL functions). Each client session gets its own `SessionState`
//! cloned from it ([`Engine::session_state`]) carrying the session's settings functions and
//! time zone, while sharing the catalog, so a table created in one session is visible to all.
//!
//! A DataFusion statement is planned ([`Engine::plan`]) with the parameter types the client
//! declared, if any; `CREATE TABLE` and `DROP TABLE` plans are intercepted and carried out by the
//! catalog (so where rows live is the catalog's business); every other plan is executed by
//! DataFusion and its result returned as an [`Output`] with the PostgreSQL command tag.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, TableReference};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::logical_plan::dml::InsertOp;
use datafusion::logical_expr::{
    Cast, DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, TryCast, WriteOp,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{
    self, DataType as SqlType, Ident, TableAlias, TableAliasColumnDef, TableFactor, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use pgwire::api::Type;

use crate::catalog::pg_types::{pg_type_metadata, pg_type_of_field};
use crate::catalog::{Catalog, DATABASE_NAME, DEFAULT_SCHEMA, QualifiedName};
use crate::catalog::{information_schema, pg_attribute, pg_functions};
use crate::error::{Error, Result};
use crate::ingest::{CopyFormat, RowDecoder};
use crate::parser::{normalize_ident, read_as_bytea, text_backed_type_name};
use crate::server::settings::SharedSettings;
use crate::storage::{Relation, RelationKind, Storage};

pub mod models;
pub mod monitors;
mod online;
pub mod relations;
mod sinks;
pub mod views;

pub use relations::on_conflict;

/// What executing a statement produced.
#[derive(Debug)]
pub enum Output {
    /// Rows for the client, with the tag's verb (`SELECT`, `SHOW`, `EXPLAIN`).
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        verb: &'static str,
    },
    /// A command without rows; `tag` is the complete command tag, e.g. `INSERT 0 3`.
    Command { tag: String },
    /// `COPY ... FROM STDIN`: the client sends data next, decoded for `relation`.
    CopyIn {
        relation: Relation,
        decoder: Box<RowDecoder>,
    },
    /// `SUBSCRIBE`: changes as COPY text rows, until the client cancels or the view goes.
    Subscribe(Box<crate::streaming::subscribe::Subscription>),
    /// `COPY ... TO STDOUT`: result rows in a COPY format.
    CopyOut {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        format: CopyFormat,
    },
}

/// Where a long statement (model training, a view's backfill) reports how it is getting on:
/// the client's session, which forwards each report as a NOTICE while the statement runs.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<tokio::sync::mpsc::UnboundedSender<String>>);

impl Progress {
    /// Reports to `sender`.
    pub fn to(sender: tokio::sync::mpsc::UnboundedSender<String>) -> Progress {
        Progress(Some(sender))
    }

    /// Reports nowhere (background work).
    pub fn none() -> Progress {
        Progress(None)
    }

    pub fn report(&self, message: impl Into<String>) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(message.into());
        }
    }
}

/// The server-wide query engine.
pub struct Engine {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    streaming: crate::config::StreamingConfig,
    /// Background work by name (`monitor:schema.name`, `retrain:schema.name`).
    background: std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("session_id", &self.ctx.session_id())
            .finish()
    }
}

impl Engine {
    /// Build the engine: catalog, pg_catalog, information_schema and PostgreSQL functions.
    pub fn new(
        storage: Arc<Storage>,
        streaming: crate::config::StreamingConfig,
    ) -> Result<Arc<Engine>> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE_NAME, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let ctx = SessionContext::new_with_config(config);
        let catalog = Catalog::install(&ctx, storage)?;
        datafusion_pg_catalog::setup_pg_catalog(&ctx, DATABASE_NAME, EmptyContextProvider)
            .map_err(|e| Error::from(*e))?;
        pg_attribute::install(
            Arc::clone(ctx.state().catalog_list()),
            DATABASE_NAME,
            vec![("pg_stat_activity", catalog.pg_stat_activity())],
        )?;
        information_schema::register_information_schema(&ctx, DATABASE_NAME)?;
        pg_functions::register_pg_functions(&ctx);
        ctx.register_udf(pg_functions::pg_cancel_backend(Arc::clone(
            catalog.activity(),
        )));
        crate::streaming::windows::register(&ctx);
        crate::ml::functions::register(&ctx, catalog.models());
        crate::ml::aggregates::register(&ctx);
        crate::ml::drift::register(&ctx, catalog.models());
        Ok(Arc::new(Engine {
            ctx,
            catalog,
            streaming,
            background: Default::default(),
        }))
    }

    /// Run `task` as background work named `name`, replacing (aborting) any of that name.
    fn start_background(&self, name: String, task: tokio::task::JoinHandle<()>) {
        let old = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Stop the background work named `name`, if any.
    fn stop_background(&self, name: &str) {
        let task = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(task) = task {
            task.abort();
        }
    }

    /// The catalog of user objects.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A fresh DataFusion state for one client session, sharing the catalog.
    pub fn session_state(&self, settings: SharedSettings) -> SessionState {
        let mut state = self.ctx.state();
        for udf in pg_functions::session_setting_functions(settings) {
            // Registering replaces the server-wide placeholder of the same name.
            let _ =
                datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(udf));
        }
        state
    }

    /// Plan a DataFusion statement. `param_types` are the parameter types the client declared
    /// in Parse; when all are known they take precedence over inference.
    pub async fn plan(
        &self,
        state: &SessionState,
        statement: &ast::Statement,
        param_types: &[Option<Type>],
    ) -> Result<LogicalPlan> {
        refuse_unsupported(statement)?;
        let statement =
            relations::without_on_conflict(statement).unwrap_or_else(|| statement.clone());
        let (mut statement, declared_types) = with_storage_types(statement);
        functions_in_from(state, &mut statement)?;
        alias_repeated_expressions(&mut statement);
        selected_literals_as_postgres_types(&mut statement);
        self.bytea_literals_in_values(&mut statement).await?;
        let declared: Option<Vec<SqlType>> = if param_types.is_empty() {
            None
        } else {
            param_types
                .iter()
                .map(|t| t.as_ref().and_then(sql_type_for))
                .collect()
        };
        let plan = match declared {
            Some(data_types) => {
                let prepare = ast::Statement::Prepare {
                    name: Ident::new("eddy_unnamed"),
                    data_types,
                    statement: Box::new(statement),
                };
                match state
                    .statement_to_plan(DFStatement::Statement(Box::new(prepare)))
                    .await?
                {
                    LogicalPlan::Statement(datafusion::logical_expr::Statement::Prepare(p)) => {
                        Arc::unwrap_or_clone(p.input)
                    }
                    other => other,
                }
            }
            None => {
                state
                    .statement_to_plan(DFStatement::Statement(Box::new(statement)))
                    .await?
            }
        };
        Ok(restore_declared_types(plan, &declared_types))
    }

    /// PostgreSQL reads an untyped literal by the type of the column it goes into, so
    /// `INSERT INTO t(b) VALUES ('\\x00ff')` stores the two bytes 00 ff in a bytea column, where
    /// DataFusion would store the six characters. String literals in `INSERT ... VALUES` rows
    /// bound for binary columns become hex literals.
    async fn bytea_literals_in_values(&self, statement: &mut ast::Statement) -> Result<()> {
        let ast::Statement::Insert(insert) = statement else {
            return Ok(());
        };
        let (ast::TableObject::TableName(name), Some(source)) = (&insert.table, &mut insert.source)
        else {
            return Ok(());
        };
        let ast::SetExpr::Values(values) = source.body.as_mut() else {
            return Ok(());
        };
        let Ok(reference) = object_name_to_table_reference(name.clone(), true) else {
            return Ok(());
        };
        let Ok(table) = self.ctx.table_provider(reference).await else {
            return Ok(()); // planning reports the missing table
        };
        let schema = table.schema();
        let targets: Vec<Option<&DataType>> = if insert.columns.is_empty() {
            schema
                .fields()
                .iter()
                .map(|f| Some(f.data_type()))
                .collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| {
                    let column = c.0.last().and_then(|p| p.as_ident()).map(normalize_ident)?;
                    schema.field_with_name(&column).ok().map(|f| f.data_type())
                })
                .collect()
        };
        for row in &mut values.rows {
            for (value, target) in row.iter_mut().zip(&targets) {
                if !matches!(
                    target,
                    Some(DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
                ) {
                    continue;
                }
                read_as_bytea(value)?;
            }
        }
        Ok(())
    }

    /// Execute a plan (parameters already bound) in the given session state.
    pub async fn execute(&self, state: &SessionState, plan: LogicalPlan) -> Result<Output> {
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let name = qualified(&create.name)?;
                let schema: SchemaRef = Arc::new(create.input.schema().as_arrow().clone());
                let has_rows = !matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(_));
                // CREATE TABLE ... AS runs its query before the catalog changes, so a failing or
                // cancelled SELECT leaves any existing table (OR REPLACE) in place.
                if create.if_not_exists
                    && !create.or_replace
                    && self.catalog.table(&name).await.is_ok()
                {
                    // As PostgreSQL: nothing to do, and the query is not run.
                    return Ok(Output::Command {
                        tag: "CREATE TABLE".to_string(),
                    });
                }
                let rows = if has_rows {
                    let ctx = SessionContext::new_with_state(state.clone());
                    let df = ctx
                        .execute_logical_plan(Arc::unwrap_or_clone(create.input))
                        .await?;
                    Some(df.collect().await?)
                } else {
                    None
                };
                if create.or_replace {
                    self.catalog
                        .drop_relation(&name, RelationKind::Table, true)
                        .await?;
                }
                let created = self.catalog.create_table(
                    &name,
                    schema,
                    create.constraints.clone(),
                    create.if_not_exists,
                )?;
                if let (true, Some(batches)) = (created, rows) {
                    let inserted = self.insert_batches(state, &name, batches).await;
                    if inserted.is_err() {
                        // No half-made table: PostgreSQL's CREATE TABLE AS is atomic. The
                        // insert's error is the one to report.
                        let _ = self
                            .catalog
                            .drop_relation(&name, RelationKind::Table, true)
                            .await;
                    }
                    return Ok(Output::Command {
                        tag: format!("SELECT {}", inserted?),
                    });
                }
                Ok(Output::Command {
                    tag: "CREATE TABLE".to_string(),
                })
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => {
                self.catalog
                    .drop_relation(&qualified(&drop.name)?, RelationKind::Table, drop.if_exists)
                    .await?;
                Ok(Output::Command {
                    tag: "DROP TABLE".to_string(),
                })
            }
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(_)) => Err(Error::Unsupported(
                "CREATE EXTERNAL TABLE (EddyDB does not read server-side files)".to_string(),
            )),
            LogicalPlan::Copy(_) => {
                Err(Error::Unsupported("COPY to a server-side file".to_string()))
            }
            LogicalPlan::Ddl(ddl) => {
                let tag = ddl_tag(&ddl);
                let ctx = SessionContext::new_with_state(state.clone());
                ctx.execute_logical_plan(LogicalPlan::Ddl(ddl))
                    .await?
                    .collect()
                    .await?;
                Ok(Output::Command { tag })
            }
            LogicalPlan::Dml(dml) => {
                let verb = match dml.op {
                    WriteOp::Insert(_) => "INSERT 0",
                    WriteOp::Update => "UPDATE",
                    WriteOp::Delete => "DELETE",
                    WriteOp::Truncate => "TRUNCATE TABLE",
                    WriteOp::Ctas => "SELECT",
                    other => {
                        return Err(Error::Unsupported(format!("{} statements", other.name())));
                    }
                };
                let rows = self.run_count(state, LogicalPlan::Dml(dml)).await?;
                Ok(Output::Command {
                    tag: if verb == "TRUNCATE TABLE" {
                        verb.to_string()
                    } else {
                        format!("{verb} {rows}")
                    },
                })
            }
            LogicalPlan::Statement(datafusion::logical_expr::Statement::Prepare(_)) => {
                let ctx = SessionContext::new_with_state(state.clone());
                ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(Output::Command {
                    tag: "PREPARE".to_string(),
                })
            }
            plan => {
                let verb = match &plan {
                    LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => "EXPLAIN",
                    _ => "SELECT",
                };
                let ctx = SessionContext::new_with_state(state.clone());
                let df = ctx.execute_logical_plan(plan).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let batches = df.collect().await?;
                Ok(Output::Rows {
                    schema,
                    batches,
                    verb,
                })
            }
        }
    }

    /// Append batches to a catalog table through its insert path; returns the rows written.
    async fn insert_batches(
        &self,
        state: &SessionState,
        name: &QualifiedName,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        let Some(schema) = batches.first().map(RecordBatch::schema) else {
            return Ok(0);
        };
        let source = MemTable::try_new(schema, vec![batches])?;
        let input = LogicalPlanBuilder::scan(
            "create_table_as",
            datafusion::datasource::provider_as_source(Arc::new(source)),
            None,
        )?
        .build()?;
        let table = self.catalog.table(name).await?;
        let insert = LogicalPlanBuilder::insert_into(
            input,
            TableReference::partial(name.schema.as_str(), name.name.as_str()),
            datafusion::datasource::provider_as_source(table),
            InsertOp::Append,
        )?
        .build()?;
        self.run_count(state, insert).await
    }

    /// Run a DML plan and read the affected-row count DataFusion returns.
    async fn run_count(&self, state: &SessionState, plan: LogicalPlan) -> Result<u64> {
        let ctx = SessionContext::new_with_state(state.clone());
        let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
        let mut rows = 0;
        for batch in &batches {
            if batch.num_columns() == 1
                && let Some(counts) = batch.column(0).as_primitive_opt::<UInt64Type>()
            {
                rows += counts.iter().flatten().sum::<u64>();
            }
        }
        Ok(rows)
    }
}

/// Parameter types of a plan, in `$1..$n` order; `None` where nothing constrains one.
pub fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    let mut types = plan.get_parameter_types()?;
    // DataFusion infers a parameter's type from comparisons and inserts; PostgreSQL also from
    // a cast applied to it (`$1::bigint`).
    if types.values().any(Option::is_none) {
        for (name, cast_to) in parameter_casts(plan)? {
            if let Some(slot @ None) = types.get_mut(&name) {
                *slot = Some(cast_to);
            }
        }
    }
    let mut indexed: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(name, t)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|i| (i, t))
        })
        .collect();
    indexed.sort_by_key(|(i, _)| *i);
    let count = indexed.last().map(|(i, _)| *i).unwrap_or(0);
    if count > MAX_PARAMETERS {
        return Err(Error::InvalidValue(format!(
            "parameter ${count} is out of range: a statement takes at most {MAX_PARAMETERS} parameters"
        )));
    }
    let mut out = vec![None; count];
    for (i, t) in indexed {
        if i >= 1 {
            out[i - 1] = t;
        }
    }
    Ok(out)
}

/// The types parameters are cast to, wherever a plan casts one directly.
fn parameter_casts(plan: &LogicalPlan) -> Result<Vec<(String, DataType)>> {
    let mut casts = Vec::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) = e
                    && let Expr::Placeholder(p) = expr.as_ref()
                {
                    casts.push((p.id.clone(), field.data_type().clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(casts)
}

/// The most parameters a statement may take: the wire protocol counts them in 16 bits.
const MAX_PARAMETERS: usize = u16::MAX as usize;

/// Bind parameter values, casting each to the type the plan expects.
pub fn bind_parameters(plan: LogicalPlan, values: Vec<ScalarValue>) -> Result<LogicalPlan> {
    if values.is_empty() {
        return Ok(plan);
    }
    let expected = parameter_types(&plan)?;
    if values.len() < expected.len() {
        return Err(Error::InvalidValue(format!(
            "bind message supplies {} parameters, but prepared statement requires {}",
            values.len(),
            expected.len()
        )));
    }
    let mut cast = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let value = match expected.get(i) {
            Some(Some(t)) if value.data_type() != *t => value.cast_to(t).map_err(|e| {
                Error::InvalidValue(format!("parameter ${}: {}", i + 1, Error::from(e)))
            })?,
            _ => value,
        };
        cast.push(value);
    }
    Ok(plan.with_param_values(ParamValues::from(cast))?)
}

fn ddl_tag(ddl: &DdlStatement) -> String {
    match ddl {
        DdlStatement::CreateView(_) => "CREATE VIEW",
        DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
        DdlStatement::CreateIndex(_) => "CREATE INDEX",
        DdlStatement::DropView(_) => "DROP VIEW",
        DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
        DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
        DdlStatement::DropFunction(_) => "DROP FUNCTION",
        _ => "OK",
    }
    .to_string()
}

fn qualified(name: &TableReference) -> Result<QualifiedName> {
    match name {
        TableReference::Bare { table } => Ok(QualifiedName {
            schema: DEFAULT_SCHEMA.to_string(),
            name: table.to_string(),
        }),
        TableReference::Partial { schema, table } => Ok(QualifiedName {
            schema: schema.to_string(),
            name: table.to_string(),
        }),
        TableReference::Full {
            catalog,
            schema,
            table,
        } => {
            if catalog.as_ref() != DATABASE_NAME {
                return Err(Error::Unsupported(format!(
                    "cross-database references (\"{catalog}\")"
                )));
            }
            Ok(QualifiedName {
                schema: schema.to_string(),
                name: table.to_string(),
            })
        }
    }
}

fn refuse_unsupported(statement: &ast::Statement) -> Result<()> {
    match statement {
        ast::Statement::Copy { .. } | ast::Statement::CopyIntoSnowflake { .. } => {
            Err(Error::Unsupported("COPY".to_string()))
        }
        _ => Ok(()),
    }
}

/// Column declarations of types DataFusion's planner does not know (`json`, `jsonb`, `uuid`) or
/// that it would not remember (`varchar`, `char`) are planned as text; the declared PostgreSQL
/// type is returned per column so it can be put back as field metadata.
fn with_storage_types(mut statement: ast::Statement) -> (ast::Statement, HashMap<String, String>) {
    let mut declared = HashMap::new();
    if let ast::Statement::CreateTable(create) = &mut statement {
        // PRIMARY KEY implies NOT NULL in PostgreSQL; DataFusion records only the key.
        let mut key_columns: Vec<String> = Vec::new();
        for constraint in &create.constraints {
            if let ast::TableConstraint::PrimaryKey(key) = constraint {
                for column in &key.columns {
                    if let ast::Expr::Identifier(ident) = &column.column.expr {
                        key_columns.push(normalize_ident(ident));
                    }
                }
            }
        }
        for column in &mut create.columns {
            let in_key = key_columns.contains(&normalize_ident(&column.name))
                || column
                    .options
                    .iter()
                    .any(|o| matches!(o.option, ast::ColumnOption::PrimaryKey(_)));
            if in_key
                && !column
                    .options
                    .iter()
                    .any(|o| matches!(o.option, ast::ColumnOption::NotNull))
            {
                column.options.push(ast::ColumnOptionDef {
                    name: None,
                    option: ast::ColumnOption::NotNull,
                });
            }
            let pg_name = match &column.data_type {
                t if text_backed_type_name(t).is_some() => text_backed_type_name(t),
                SqlType::Varchar(_) | SqlType::CharacterVarying(_) => Some("varchar"),
                SqlType::Char(_) | SqlType::Character(_) => Some("bpchar"),
                _ => None,
            };
            if let Some(pg_name) = pg_name {
                if text_backed_type_name(&column.data_type).is_some() {
                    column.data_type = SqlType::Text;
                }
                declared.insert(normalize_ident(&column.name), pg_name.to_string());
            }
        }
    }
    (statement, declared)
}

/// PostgreSQL lets any function stand in FROM. A scalar function there yields one row whose
/// column is named after the alias (`string_to_array(..) s` gives a column `s`), and a function
/// with one output column names that column after its alias (`generate_series(1, 3) AS i`
/// gives a column `i`). DataFusion only knows table functions in FROM with fixed column names,
/// so scalar calls become a one-row subquery and single-column table functions get the alias
/// as their column name.
fn functions_in_from(state: &SessionState, statement: &mut ast::Statement) -> Result<()> {
    struct Rewrite<'a> {
        state: &'a SessionState,
    }

    impl VisitorMut for Rewrite<'_> {
        type Break = Error;

        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Error> {
            let TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } = factor
            else {
                return ControlFlow::Continue(());
            };
            let Some(function) = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize_ident)
            else {
                return ControlFlow::Continue(());
            };
            if self.state.table_functions().contains_key(&function) {
                // DataFusion looks table functions up by the name as written.
                *name = ast::ObjectName::from(vec![Ident::new(function.clone())]);
                if let Some(alias) = alias.as_mut()
                    && alias.columns.is_empty()
                    && SINGLE_COLUMN_TABLE_FUNCTIONS.contains(&function.as_str())
                {
                    alias.columns = vec![TableAliasColumnDef {
                        name: alias.name.clone(),
                        data_type: None,
                    }];
                }
                return ControlFlow::Continue(());
            }
            if !self.state.scalar_functions().contains_key(&function) {
                return ControlFlow::Continue(());
            }
            let alias = alias.clone().unwrap_or_else(|| TableAlias {
                explicit: true,
                name: Ident::new(function.clone()),
                columns: Vec::new(),
                at: None,
            });
            let column = alias
                .columns
                .first()
                .map_or_else(|| alias.name.clone(), |c| c.name.clone());
            let arguments: Vec<String> = args.args.iter().map(ToString::to_string).collect();
            let sql = format!("SELECT {name}({}) AS {column}", arguments.join(", "));
            let subquery = match Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&sql)
                .and_then(|mut p| p.parse_query())
            {
                Ok(query) => query,
                Err(e) => return ControlFlow::Break(Error::Parse(e)),
            };
            *factor = TableFactor::Derived {
                lateral: false,
                subquery,
                sample: None,
                alias: Some(TableAlias {
                    columns: Vec::new(),
                    ..alias
                }),
            };
            ControlFlow::Continue(())
        }
    }

    match statement.visit(&mut Rewrite { state }) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Table functions with exactly one output column.
const SINGLE_COLUMN_TABLE_FUNCTIONS: &[&str] = &["generate_series", "range", "unnest"];

/// Put the declared PostgreSQL types back on a CREATE TABLE plan's schema.
fn restore_declared_types(plan: LogicalPlan, declared: &HashMap<String, String>) -> LogicalPlan {
    if declared.is_empty() {
        return plan;
    }
    let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(mut create)) = plan else {
        return plan;
    };
    let schema = create.input.schema().as_arrow().clone();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match declared.get(f.name()) {
            Some(pg) => {
                let mut metadata = f.metadata().clone();
                metadata.extend(pg_type_metadata(pg));
                f.as_ref().clone().with_metadata(metadata)
            }
            None => f.as_ref().clone(),
        })
        .collect();
    let new_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    match datafusion::common::DFSchema::try_from(new_schema.as_ref().clone()) {
        Ok(df_schema) => {
            if let LogicalPlan::EmptyRelation(empty) = create.input.as_ref() {
                let mut empty = empty.clone();
                empty.schema = Arc::new(df_schema);
                create.input = Arc::new(LogicalPlan::EmptyRelation(empty));
            }
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create))
        }
        Err(_) => LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)),
    }
}

/// The SQL type to declare for a PostgreSQL parameter type, for the planner.
fn sql_type_for(t: &Type) -> Option<SqlType> {
    Some(match *t {
        Type::BOOL => SqlType::Boolean,
        Type::INT2 => SqlType::SmallInt(None),
        Type::INT4 => SqlType::Int(None),
        Type::INT8 => SqlType::BigInt(None),
        Type::FLOAT4 => SqlType::Real,
        Type::FLOAT8 => SqlType::DoublePrecision,
        Type::NUMERIC => SqlType::Numeric(ast::ExactNumberInfo::None),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::JSON
        | Type::JSONB
        | Type::UUID => SqlType::Text,
        Type::BYTEA => SqlType::Bytea,
        Type::DATE => SqlType::Date,
        Type::TIME => SqlType::Time(None, ast::TimezoneInfo::None),
        Type::TIMESTAMP => SqlType::Timestamp(None, ast::TimezoneInfo::None),
        Type::TIMESTAMPTZ => SqlType::Timestamp(None, ast::TimezoneInfo::WithTimeZone),
        Type::INTERVAL => SqlType::Interval {
            fields: None,
            precision: None,
        },
        _ => return None,
    })
}

/// PostgreSQL allows the same unaliased expression twice in a result (`SELECT now(), now()`);
/// DataFusion refuses a projection with two columns of one name. Repeats get a distinct alias;
/// [`with_postgres_column_names`] gives them their PostgreSQL name again on the way out.
fn alias_repeated_expressions(statement: &mut ast::Statement) {
    let ast::Statement::Query(query) = statement else {
        return;
    };
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    // DataFusion names a cast after what it casts, so `d` and `d::text` collide too.
    fn datafusion_name_key(expr: &ast::Expr) -> String {
        match expr {
            ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) => datafusion_name_key(expr),
            other => other.to_string(),
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (position, item) in select.projection.iter_mut().enumerate() {
        if let ast::SelectItem::UnnamedExpr(expr) = item
            && !seen.insert(datafusion_name_key(expr))
        {
            *item = ast::SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', format!("{expr} #{}", position + 1)),
            };
        }
    }
    // `SELECT ts::text ... ORDER BY ts`: DataFusion names the cast `ts` and then adds `ts` again
    // to sort by. PostgreSQL names the output column `ts` and sorts by it; the alias says so.
    if query.order_by.is_some() {
        for item in select.projection.iter_mut() {
            if let ast::SelectItem::UnnamedExpr(expr @ ast::Expr::Cast { .. }) = item
                && let Some(name) = postgres_column_name(expr)
            {
                *item = ast::SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: Ident::with_quote('"', name),
                };
            }
        }
    }
}

/// PostgreSQL types a numeric literal by its text: `integer` when it fits in 32 bits, else
/// `bigint`, and `numeric` when it has a decimal point; DataFusion makes `bigint` and `double`.
/// Drivers decode by type (node-postgres hands out int8 as a string, psycopg numeric as
/// `Decimal`), so a selected literal (`SELECT 1`, `SELECT 1.5 AS x`, `ARRAY[1, 2]`) is cast to
/// PostgreSQL's type. Literals inside expressions keep DataFusion's typing.
fn selected_literals_as_postgres_types(statement: &mut ast::Statement) {
    /// The PostgreSQL type of a numeric literal when it differs from DataFusion's.
    fn literal_type(expr: &ast::Expr) -> Option<SqlType> {
        match expr {
            ast::Expr::Value(v) => {
                let ast::Value::Number(n, _) = &v.value else {
                    return None;
                };
                if n.parse::<i32>().is_ok() {
                    return Some(SqlType::Integer(None));
                }
                let (whole, fraction) = n.split_once('.')?;
                let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
                if !digits(whole) || !digits(fraction) {
                    return None; // exponents stay double precision
                }
                let scale = fraction.len() as u64;
                let precision = (whole.trim_start_matches('0').len() as u64 + scale).max(1);
                (precision <= 38).then_some(SqlType::Numeric(
                    ast::ExactNumberInfo::PrecisionAndScale(precision, scale as i64),
                ))
            }
            ast::Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } => literal_type(expr),
            _ => None,
        }
    }
    fn cast(expr: &mut ast::Expr, data_type: SqlType) {
        *expr = ast::Expr::Cast {
            kind: ast::CastKind::Cast,
            expr: Box::new(expr.clone()),
            data_type,
            array: false,
            format: None,
        };
    }
    fn retype(expr: &mut ast::Expr) {
        match literal_type(expr) {
            // DataFusion reads `1.5` as a double; numeric is cast from the literal's text so
            // no digit is lost.
            Some(numeric @ SqlType::Numeric(_)) => {
                *expr = ast::Expr::value(ast::Value::SingleQuotedString(expr.to_string()));
                return cast(expr, numeric);
            }
            Some(data_type) => return cast(expr, data_type),
            None => {}
        }
        // An array of integer literals is integer[] (mixed literals keep DataFusion's choice).
        if let ast::Expr::Array(array) = expr
            && array
                .elem
                .iter()
                .all(|e| literal_type(e) == Some(SqlType::Integer(None)))
        {
            for elem in &mut array.elem {
                cast(elem, SqlType::Integer(None));
            }
        }
    }
    let ast::Statement::Query(query) = statement else {
        return;
    };
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        match item {
            ast::SelectItem::UnnamedExpr(expr) | ast::SelectItem::ExprWithAlias { expr, .. } => {
                retype(expr)
            }
            _ => {}
        }
    }
}

/// The result columns under the names PostgreSQL gives them.
///
/// DataFusion names an unaliased expression after its full text (`count(*)`, `Int64(1)`,
/// `avg(t.value)`); PostgreSQL after the function, column or type it ends in (`count`,
/// `?column?`, `avg`), and clients such as Grafana show those names. Names are only changed on
/// the way out (Arrow schemas allow duplicates, DataFusion's plans do not), for the columns of a
/// SELECT's projection that are not wildcards and have no alias.
pub fn with_postgres_column_names(statement: &ast::Statement, schema: SchemaRef) -> SchemaRef {
    let ast::Statement::Query(query) = statement else {
        return schema;
    };
    let mut body = query.body.as_ref();
    let select = loop {
        match body {
            ast::SetExpr::Select(select) => break select,
            ast::SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            ast::SetExpr::Query(inner) => body = inner.body.as_ref(),
            _ => return schema,
        }
    };
    let wildcards = select
        .projection
        .iter()
        .filter(|item| {
            matches!(
                item,
                ast::SelectItem::Wildcard(_) | ast::SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    if wildcards > 0 || select.projection.len() != schema.fields().len() {
        return schema;
    }
    let fields: Vec<Field> = select
        .projection
        .iter()
        .zip(schema.fields())
        .map(|(item, field)| match item {
            ast::SelectItem::UnnamedExpr(expr) => {
                let name = postgres_column_name(expr).unwrap_or_else(|| match expr {
                    ast::Expr::Cast { .. } | ast::Expr::TypedString(_) => {
                        pg_type_of_field(field).name().to_string()
                    }
                    _ => "?column?".to_string(),
                });
                field.as_ref().clone().with_name(name)
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// PostgreSQL's name for an unaliased result column (its `FigureColname`), if the expression
/// gives one.
fn postgres_column_name(expr: &ast::Expr) -> Option<String> {
    use ast::Expr as E;
    Some(match expr {
        E::Identifier(ident) => normalize_ident(ident),
        E::CompoundIdentifier(parts) => normalize_ident(parts.last()?),
        E::Function(f) => {
            let last = f.name.0.last()?.as_ident()?;
            normalize_ident(last)
        }
        E::Cast { expr, .. } | E::Nested(expr) => return postgres_column_name(expr),
        E::Case { .. } => "case".to_string(),
        E::Array(_) => "array".to_string(),
        E::Exists { .. } => "exists".to_string(),
        E::Extract { .. } => "extract".to_string(),
        E::Ceil { .. } => "ceil".to_string(),
        E::Floor { .. } => "floor".to_string(),
        E::Position { .. } => "position".to_string(),
        E::Substring { .. } => "substring".to_string(),
        E::Trim { .. } => "btrim".to_string(),
        E::Overlay { .. } => "overlay".to_string(),
        E::AtTimeZone { .. } => "timezone".to_string(),
        E::Interval(_) => "interval".to_string(),
        _ => return None,
    })
}
