//! Statements about streams and tables that DataFusion does not plan itself: `CREATE STREAM`,
//! `DROP STREAM`, `ALTER STREAM`, `SHOW STREAMS` / `SHOW TABLES`, `INSERT ... ON CONFLICT`,
//! and the two halves of `COPY` (the server's side of the data transfer lives in
//! `server::handler`).
//!
//! Column lists and types always go through DataFusion's planner (a stream is planned as the
//! `CREATE TABLE` it resembles), so a stream's columns have exactly the types a table's would.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, ExprSchemable, LogicalPlan, WriteOp};
use datafusion::prelude::SessionContext;
use datafusion::sql::planner::object_name_to_table_reference;
use datafusion::sql::sqlparser::ast::{self, VisitMut, VisitorMut};

use super::{Engine, Output, qualified};
use crate::catalog::{QualifiedName, kind_name};
use crate::error::{Error, Result};
use crate::ingest::{CopyFormat, RowDecoder};
use crate::parser::extensions::CreateStream;
use crate::storage::table::OnConflict;
use crate::storage::{Relation, RelationDef, RelationKind, Storage};

impl Engine {
    /// `CREATE STREAM`: plan the columns as a table's, check the watermark, store.
    pub async fn create_stream(
        &self,
        state: &SessionState,
        create: &CreateStream,
    ) -> Result<Output> {
        let mut options: BTreeMap<String, String> = create.options.iter().cloned().collect();
        let mut statement = create.table.clone();
        if let Some(columns) = crate::connectors::prepare(&mut options)? {
            let ast::Statement::CreateTable(declared) = statement.as_mut() else {
                return Err(Error::Internal(
                    "CREATE STREAM is not a CREATE TABLE".to_string(),
                ));
            };
            let connector = connector_columns(columns)?;
            if declared.columns.is_empty() {
                declared.columns = connector;
            } else {
                let mut expected = statement.clone();
                if let ast::Statement::CreateTable(expected) = expected.as_mut() {
                    expected.columns = connector;
                }
                let want = self.plan_stream_table(state, &expected).await?;
                let got = self.plan_stream_table(state, &statement).await?;
                let shape = |t: &datafusion::logical_expr::CreateMemoryTable| {
                    t.input
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().clone()))
                        .collect::<Vec<_>>()
                };
                if shape(&want) != shape(&got) {
                    return Err(Error::DatatypeMismatch(format!(
                        "the {} connector's stream has the columns ({columns}); leave the column list out or write exactly these",
                        options[crate::connectors::CONNECTOR]
                    )));
                }
            }
        }
        let table = self.plan_stream_table(state, &statement).await?;
        if !table.constraints.is_empty() {
            return Err(Error::Unsupported(
                "PRIMARY KEY or UNIQUE on a stream (streams are append-only; keyed rows belong in a table)"
                    .to_string(),
            ));
        }
        let name = qualified(&table.name)?;
        let schema: SchemaRef = Arc::new(table.input.schema().as_arrow().clone());
        crate::connectors::check(&options, &schema)?;
        let mut def = RelationDef::new(RelationKind::Stream, &name.schema, &name.name, &schema);
        def.options = options;
        if let Some(watermark) = &create.watermark {
            let field = schema
                .field_with_name(&watermark.column)
                .map_err(|_| Error::NotFound {
                    kind: "column",
                    name: watermark.column.clone(),
                })?;
            if !matches!(field.data_type(), DataType::Timestamp(..)) {
                return Err(Error::DatatypeMismatch(format!(
                    "event-time column \"{}\" must be timestamp or timestamptz, not {}",
                    watermark.column,
                    crate::catalog::pg_types::format_type(
                        &crate::catalog::pg_types::pg_type_of_field(field)
                    )
                )));
            }
            let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
            let expr = state.create_logical_expr(&watermark.expr, &df_schema)?;
            let data_type = expr.to_field(&df_schema)?.1.data_type().clone();
            if !matches!(data_type, DataType::Timestamp(..)) {
                return Err(Error::DatatypeMismatch(format!(
                    "watermark expression \"{}\" must be a timestamp, not {data_type}",
                    watermark.expr
                )));
            }
            def.event_time = Some(watermark.column.clone());
            def.watermark = Some(watermark.expr.clone());
        }
        self.catalog.create(def, table.if_not_exists)?;
        Ok(Output::Command {
            tag: "CREATE STREAM".to_string(),
        })
    }

    /// Plan a `CREATE STREAM`'s column list as the `CREATE TABLE` it resembles.
    async fn plan_stream_table(
        &self,
        state: &SessionState,
        statement: &ast::Statement,
    ) -> Result<datafusion::logical_expr::CreateMemoryTable> {
        match self.plan(state, statement, &[]).await? {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(table)) => Ok(table),
            _ => Err(Error::Internal(
                "CREATE STREAM did not plan as a table".to_string(),
            )),
        }
    }

    /// `DROP STREAM [IF EXISTS] a, b`.
    pub async fn drop_streams(&self, names: &[ast::ObjectName], if_exists: bool) -> Result<Output> {
        for name in names {
            let name = resolve(name)?;
            let sinks = self.sinks_reading(&name);
            if !sinks.is_empty() {
                return Err(Error::DependentObjects(format!(
                    "stream \"{}\" is read by sink {} (DROP SINK first)",
                    name.name,
                    sinks.join(", ")
                )));
            }
            self.catalog
                .drop_relation(&name, RelationKind::Stream, if_exists)
                .await?;
        }
        Ok(Output::Command {
            tag: "DROP STREAM".to_string(),
        })
    }

    /// `ALTER STREAM s SET (k = v) | RESET (k)`.
    pub async fn alter_stream(
        &self,
        name: &ast::ObjectName,
        set: &[(String, String)],
        reset: &[String],
    ) -> Result<Output> {
        let name = resolve(name)?;
        let relation = self.catalog.relation(&name).await?;
        let mut def = relation.def();
        if def.kind != RelationKind::Stream {
            return Err(Error::WrongObjectType(format!(
                "\"{}\" is a {}, not a stream",
                name.name,
                kind_name(def.kind)
            )));
        }
        for key in set.iter().map(|(k, _)| k).chain(reset) {
            if crate::connectors::is_connector_option(key) {
                return Err(Error::Unsupported(format!(
                    "changing \"{key}\" of stream \"{}\" (a stream's connector and its options are fixed at creation; drop and recreate the stream)",
                    name.name
                )));
            }
        }
        for (key, value) in set {
            def.options.insert(key.clone(), value.clone());
        }
        for key in reset {
            def.options.remove(key);
        }
        self.catalog.storage().alter(def)?;
        Ok(Output::Command {
            tag: "ALTER STREAM".to_string(),
        })
    }

    /// `SHOW STREAMS` / `SHOW TABLES`: one row per relation of that kind, as
    /// `eddy_catalog.streams` / `eddy_catalog.tables` show them.
    pub fn show_relations(&self, kind: RelationKind) -> Result<Output> {
        let batch = relations_batch(self.catalog.storage(), kind)?;
        Ok(Output::Rows {
            schema: batch.schema(),
            batches: vec![batch],
            verb: "SHOW",
        })
    }
}

/// `eddy_catalog.storage_files`: where each stream's rows are, per tier: one `hot` row per
/// stream (the rows in memory and in the log, not yet in Parquet) and one `cold` row per Parquet
/// file on the object store.
pub fn storage_files_batch(storage: &Storage) -> Result<RecordBatch> {
    let mut stream = Vec::new();
    let mut tier = Vec::new();
    let mut path: Vec<Option<String>> = Vec::new();
    let mut rows = Vec::new();
    let mut bytes = Vec::new();
    let mut min_time: Vec<Option<i64>> = Vec::new();
    let mut max_time: Vec<Option<i64>> = Vec::new();
    let mut created: Vec<Option<i64>> = Vec::new();
    for relation in storage.relations() {
        let Relation::Stream(s) = relation else {
            continue;
        };
        let def = s.def();
        let name = format!("{}.{}", def.schema_name, def.name);
        let stats = s.stats();
        stream.push(name.clone());
        tier.push("hot");
        path.push(None);
        rows.push(stats.hot_rows);
        bytes.push(stats.hot_bytes);
        min_time.push(None);
        max_time.push(None);
        created.push(None);
        for file in stats.cold_files {
            stream.push(name.clone());
            tier.push("cold");
            path.push(Some(file.path));
            rows.push(file.rows);
            bytes.push(file.bytes);
            min_time.push(file.min_time);
            max_time.push(file.max_time);
            created.push(Some(file.created_at));
        }
    }
    use super::views::{timestamp_array as times, timestamp_type as time};
    let schema = Arc::new(Schema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("tier", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, true),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("min_event_time", time(), true),
        Field::new("max_event_time", time(), true),
        Field::new("created_at", time(), true),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(stream)),
            Arc::new(StringArray::from(tier)),
            Arc::new(StringArray::from(path)),
            Arc::new(UInt64Array::from(rows)),
            Arc::new(UInt64Array::from(bytes)),
            times(min_time),
            times(max_time),
            times(created),
        ],
    )?)
}

/// One row per stream or table (`kind`): `SHOW STREAMS`, `eddy_catalog.streams`, and the same
/// for tables.
pub fn relations_batch(storage: &Storage, kind: RelationKind) -> Result<RecordBatch> {
    let relations: Vec<Relation> = storage
        .relations()
        .into_iter()
        .filter(|r| r.def().kind == kind)
        .collect();
    let text = |values: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match kind {
        RelationKind::Stream => {
            let defs: Vec<RelationDef> = relations.iter().map(Relation::def).collect();
            let stats: Vec<_> = relations
                .iter()
                .filter_map(|r| match r {
                    Relation::Stream(s) => Some(s.stats()),
                    Relation::Table(_) => None,
                })
                .collect();
            (
                vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("event_time", DataType::Utf8, true),
                    Field::new("watermark", DataType::Utf8, true),
                    Field::new("retention", DataType::Utf8, true),
                    Field::new("hot_rows", DataType::UInt64, false),
                    Field::new("cold_rows", DataType::UInt64, false),
                    Field::new("cold_files", DataType::UInt64, false),
                ],
                vec![
                    text(defs.iter().map(|d| Some(d.name.clone())).collect()),
                    text(defs.iter().map(|d| d.event_time.clone()).collect()),
                    text(defs.iter().map(|d| d.watermark.clone()).collect()),
                    text(
                        defs.iter()
                            .map(|d| d.options.get("retention").cloned())
                            .collect(),
                    ),
                    Arc::new(UInt64Array::from_iter_values(
                        stats.iter().map(|s| s.hot_rows),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        stats
                            .iter()
                            .map(|s| s.cold_files.iter().map(|f| f.rows).sum::<u64>()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        stats.iter().map(|s| s.cold_files.len() as u64),
                    )),
                ],
            )
        }
        RelationKind::Table => {
            let defs: Vec<RelationDef> = relations.iter().map(Relation::def).collect();
            let rows: Vec<u64> = relations
                .iter()
                .map(|r| match r {
                    Relation::Table(t) => t.contents().num_rows() as u64,
                    Relation::Stream(_) => 0,
                })
                .collect();
            (
                vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("primary_key", DataType::Utf8, true),
                    Field::new("rows", DataType::UInt64, false),
                ],
                vec![
                    text(defs.iter().map(|d| Some(d.name.clone())).collect()),
                    text(
                        defs.iter()
                            .map(|d| (!d.primary_key.is_empty()).then(|| d.primary_key.join(", ")))
                            .collect(),
                    ),
                    Arc::new(UInt64Array::from(rows)),
                ],
            )
        }
    };
    let schema = Arc::new(Schema::new(fields));
    Ok(RecordBatch::try_new(schema, columns)?)
}

impl Engine {
    /// `COPY t FROM STDIN`: the relation and a decoder for the data the client will send.
    pub async fn copy_in(
        &self,
        table: &ast::ObjectName,
        columns: &[String],
        format: &CopyFormat,
    ) -> Result<Output> {
        let name = resolve(table)?;
        let relation = self.catalog.relation(&name).await?;
        relation.check_writable()?;
        let decoder = RowDecoder::new(
            format!("COPY {}", name.name),
            relation.schema(),
            columns,
            format.clone(),
        )?;
        Ok(Output::CopyIn {
            relation,
            decoder: Box::new(decoder),
        })
    }

    /// `INSERT ... ON CONFLICT`: `plan` is the insert planned without its conflict clause.
    pub async fn upsert(
        &self,
        state: &SessionState,
        plan: LogicalPlan,
        on: &ast::OnInsert,
    ) -> Result<Output> {
        let LogicalPlan::Dml(dml) = plan else {
            return Err(Error::Internal("ON CONFLICT outside an INSERT".to_string()));
        };
        if !matches!(dml.op, WriteOp::Insert(_)) {
            return Err(Error::Internal("ON CONFLICT outside an INSERT".to_string()));
        }
        let name = qualified(&dml.table_name)?;
        let relation = self.catalog.relation(&name).await?;
        let Relation::Table(table) = relation else {
            return Err(Error::Unsupported(format!(
                "ON CONFLICT on stream \"{}\" (streams are append-only)",
                name.name
            )));
        };
        let def = table.def();
        let ast::OnInsert::OnConflict(conflict) = on else {
            return Err(Error::Unsupported("ON DUPLICATE KEY UPDATE".to_string()));
        };
        check_conflict_target(&def, conflict.conflict_target.as_ref())?;
        let action = match &conflict.action {
            ast::OnConflictAction::DoNothing => OnConflict::DoNothing,
            ast::OnConflictAction::DoUpdate(update) => {
                conflict_update(state, &name, &table.schema(), update)?
            }
        };
        let ctx = SessionContext::new_with_state(state.clone());
        let batches = ctx
            .execute_logical_plan(Arc::unwrap_or_clone(dml.input))
            .await?
            .collect()
            .await?;
        let schema = table.schema();
        let batches = batches
            .iter()
            .map(|b| crate::storage::table::conform(&schema, b))
            .collect::<Result<Vec<_>>>()?;
        let rows = table.insert(batches, action).await?;
        Ok(Output::Command {
            tag: format!("INSERT 0 {rows}"),
        })
    }
}

/// A statement's table name resolved against the default schema.
fn resolve(name: &ast::ObjectName) -> Result<QualifiedName> {
    qualified(&object_name_to_table_reference(name.clone(), true)?)
}

/// `ON CONFLICT (cols)` must name the primary key (the only unique constraint EddyDB has).
fn check_conflict_target(def: &RelationDef, target: Option<&ast::ConflictTarget>) -> Result<()> {
    let no_match = || {
        Error::InvalidColumnReference(
            "there is no unique or exclusion constraint matching the ON CONFLICT specification"
                .to_string(),
        )
    };
    if def.primary_key.is_empty() {
        return Err(no_match());
    }
    match target {
        None => Ok(()),
        Some(ast::ConflictTarget::Columns(columns)) => {
            let mut named: Vec<String> =
                columns.iter().map(crate::parser::normalize_ident).collect();
            let mut key = def.primary_key.clone();
            named.sort();
            key.sort();
            if named == key {
                Ok(())
            } else {
                Err(no_match())
            }
        }
        Some(ast::ConflictTarget::OnConstraint(name)) => {
            let constraint = name.to_string();
            if constraint.trim_matches('"') == format!("{}_pkey", def.name) {
                Ok(())
            } else {
                Err(Error::NotFound {
                    kind: "constraint",
                    name: constraint,
                })
            }
        }
    }
}

/// Compile `DO UPDATE SET col = expr [WHERE cond]` against the existing row (the table's name)
/// and the proposed one (`excluded`).
fn conflict_update(
    state: &SessionState,
    name: &QualifiedName,
    schema: &SchemaRef,
    update: &ast::DoUpdate,
) -> Result<OnConflict> {
    let existing = DFSchema::try_from_qualified_schema(
        datafusion::common::TableReference::bare(name.name.clone()),
        schema,
    )?;
    let excluded = DFSchema::try_from_qualified_schema("excluded", schema)?;
    let mut combined = existing;
    combined.merge(&excluded);
    let compile = |expr: &ast::Expr| -> Result<Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
        let mut expr = expr.clone();
        let _ = expr.visit(&mut QualifyBareColumns {
            table: name.name.clone(),
        });
        let logical = state.create_logical_expr(&expr.to_string(), &combined)?;
        Ok(state.create_physical_expr(logical, &combined)?)
    };
    let mut assignments = Vec::with_capacity(update.assignments.len());
    for assignment in &update.assignments {
        let ast::AssignmentTarget::ColumnName(column) = &assignment.target else {
            return Err(Error::Unsupported(
                "tuple assignment in ON CONFLICT".to_string(),
            ));
        };
        let column = column
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(crate::parser::normalize_ident)
            .unwrap_or_default();
        let index = schema.index_of(&column).map_err(|_| Error::NotFound {
            kind: "column",
            name: column.clone(),
        })?;
        assignments.push((index, compile(&assignment.value)?));
    }
    let selection = update.selection.as_ref().map(compile).transpose()?;
    Ok(OnConflict::DoUpdate {
        assignments,
        selection,
    })
}

/// In `ON CONFLICT DO UPDATE`, a bare column is the existing row's (PostgreSQL's rule); name
/// its table so it is not ambiguous with `excluded`.
struct QualifyBareColumns {
    table: String,
}

impl VisitorMut for QualifyBareColumns {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut ast::Expr) -> ControlFlow<()> {
        if let ast::Expr::Identifier(ident) = expr {
            *expr = ast::Expr::CompoundIdentifier(vec![
                ast::Ident::with_quote('"', self.table.clone()),
                ident.clone(),
            ]);
        }
        ControlFlow::Continue(())
    }
}

/// The `ON CONFLICT` clause of an INSERT, if any.
pub fn on_conflict(statement: &ast::Statement) -> Option<&ast::OnInsert> {
    match statement {
        ast::Statement::Insert(insert) => insert.on.as_ref(),
        _ => None,
    }
}

/// The statement without its `ON CONFLICT` clause, which DataFusion cannot plan; the clause is
/// applied by [`Engine::upsert`].
pub(super) fn without_on_conflict(statement: &ast::Statement) -> Option<ast::Statement> {
    match statement {
        ast::Statement::Insert(insert) if insert.on.is_some() => {
            let mut insert = insert.clone();
            insert.on = None;
            Some(ast::Statement::Insert(insert))
        }
        _ => None,
    }
}

/// A connector's column list (SQL) as the column definitions of a `CREATE TABLE`.
fn connector_columns(columns: &str) -> Result<Vec<ast::ColumnDef>> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let statement = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!("CREATE TABLE connector ({columns})"))?
        .parse_statement()?;
    match crate::parser::rewrite_types(statement)? {
        ast::Statement::CreateTable(table) => Ok(table.columns),
        _ => Err(Error::Internal(
            "connector columns did not parse".to_string(),
        )),
    }
}
