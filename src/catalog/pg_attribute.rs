//! `pg_catalog.pg_attribute` with the column types EddyDB reports on the wire.
//!
//! `datafusion-pg-catalog` derives `atttypid` from the Arrow type alone, so a `jsonb` or
//! `varchar` column (stored as Arrow text, declared type kept as field metadata) would show as
//! `text` in psql's `\d` and in drivers' column metadata while query results say `jsonb`. This
//! wraps its `pg_catalog` schema: `pg_attribute` scans the original table, then replaces each
//! `atttypid` with [`pg_type_of_field`] of the live column, the same mapping the encoder uses, by
//! resolving `attrelid` through `pg_class` and `pg_namespace`. The wrapper also serves the
//! `pg_catalog` tables EddyDB computes itself (`pg_stat_activity`, see [`super::activity`]).
//! Every other table passes through.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, Int32Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, collect};

use crate::catalog::pg_types::{pg_type_of_field, type_modifier};

/// Replace the catalog's `pg_catalog` schema with one whose `pg_attribute` reports EddyDB types
/// and that also holds `own` tables.
pub fn install(
    catalogs: Arc<dyn CatalogProviderList>,
    database: &str,
    own: Vec<(&'static str, Arc<dyn TableProvider>)>,
) -> crate::Result<()> {
    let catalog = catalogs
        .catalog(database)
        .ok_or_else(|| crate::Error::Internal(format!("catalog {database} is missing")))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| crate::Error::Internal("pg_catalog is not set up".into()))?;
    let wrapped = Arc::new(PgCatalogSchema {
        inner,
        catalogs,
        own: own.into_iter().collect(),
    });
    catalog.register_schema("pg_catalog", wrapped)?;
    Ok(())
}

#[derive(Debug)]
struct PgCatalogSchema {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    own: HashMap<&'static str, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(self.own.keys().map(|n| n.to_string()));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(own) = self.own.get(name) {
            return Ok(Some(Arc::clone(own)));
        }
        let table = self.inner.table(name).await?;
        if name != "pg_attribute" {
            return Ok(table);
        }
        let (Some(attribute), Some(class), Some(namespace)) = (
            table,
            self.inner.table("pg_class").await?,
            self.inner.table("pg_namespace").await?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Arc::new(PgAttribute {
            attribute,
            class,
            namespace,
            catalogs: Arc::clone(&self.catalogs),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.own.contains_key(name) || self.inner.table_exist(name)
    }
}

#[derive(Debug)]
struct PgAttribute {
    attribute: Arc<dyn TableProvider>,
    class: Arc<dyn TableProvider>,
    namespace: Arc<dyn TableProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
}

#[async_trait]
impl TableProvider for PgAttribute {
    fn schema(&self) -> SchemaRef {
        self.attribute.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let attributes = scan_all(self.attribute.as_ref(), state).await?;
        let relations = self.relation_names(state).await?;
        let mut batches = Vec::with_capacity(attributes.len());
        for batch in attributes {
            batches.push(self.with_eddy_types(batch, &relations).await?);
        }
        let exec =
            MemorySourceConfig::try_new_exec(&[batches], self.schema(), projection.cloned())?;
        Ok(exec)
    }
}

impl PgAttribute {
    /// Relation oid → (schema, relation) from pg_class and pg_namespace.
    async fn relation_names(&self, state: &dyn Session) -> Result<HashMap<i32, (String, String)>> {
        let mut schemas = HashMap::new();
        for batch in scan_all(self.namespace.as_ref(), state).await? {
            let oids = int32_column(&batch, "oid")?;
            let names = utf8_column(&batch, "nspname")?;
            for row in 0..batch.num_rows() {
                schemas.insert(oids.value(row), names.value(row).to_string());
            }
        }
        let mut relations = HashMap::new();
        for batch in scan_all(self.class.as_ref(), state).await? {
            let oids = int32_column(&batch, "oid")?;
            let names = utf8_column(&batch, "relname")?;
            let namespaces = int32_column(&batch, "relnamespace")?;
            for row in 0..batch.num_rows() {
                if let Some(schema) = schemas.get(&namespaces.value(row)) {
                    relations.insert(
                        oids.value(row),
                        (schema.clone(), names.value(row).to_string()),
                    );
                }
            }
        }
        Ok(relations)
    }

    /// The batch with `atttypid` (and `atttypmod` for numeric) taken from the live column's field.
    async fn with_eddy_types(
        &self,
        batch: RecordBatch,
        relations: &HashMap<i32, (String, String)>,
    ) -> Result<RecordBatch> {
        let schema = batch.schema();
        let relids = int32_column(&batch, "attrelid")?;
        let attnums = batch
            .column_by_name("attnum")
            .map(|c| cast(c, &DataType::Int32))
            .transpose()?
            .ok_or_else(|| missing("attnum"))?;
        let attnums = attnums.as_primitive::<Int32Type>();
        let typid_index = schema.index_of("atttypid")?;
        let typmod_index = schema.index_of("atttypmod")?;
        let original = batch.column(typid_index).as_primitive::<Int32Type>();
        let original_typmods = batch.column(typmod_index).as_primitive::<Int32Type>();
        let mut typmods: Vec<i32> = Vec::with_capacity(batch.num_rows());
        let mut schemas_by_relid: HashMap<i32, Option<SchemaRef>> = HashMap::new();
        let mut typids = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let relid = relids.value(row);
            if let Entry::Vacant(slot) = schemas_by_relid.entry(relid) {
                slot.insert(match relations.get(&relid) {
                    Some((schema_name, table)) => self.table_schema(schema_name, table).await?,
                    None => None,
                });
            }
            let field = schemas_by_relid
                .get(&relid)
                .and_then(Option::as_ref)
                .and_then(|s| {
                    let index = usize::try_from(attnums.value(row)).ok()?.checked_sub(1)?;
                    s.fields().get(index).cloned()
                });
            typmods.push(match field.as_ref().map(|f| type_modifier(f.data_type())) {
                Some(modifier) if modifier >= 0 => modifier,
                _ => original_typmods.value(row),
            });
            typids.push(match field {
                Some(field) => {
                    i32::try_from(pg_type_of_field(&field).oid()).unwrap_or(original.value(row))
                }
                None => original.value(row),
            });
        }
        let mut columns = batch.columns().to_vec();
        columns[typid_index] = Arc::new(Int32Array::from(typids));
        columns[typmod_index] = Arc::new(Int32Array::from(typmods));
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    async fn table_schema(&self, schema_name: &str, table: &str) -> Result<Option<SchemaRef>> {
        for catalog_name in self.catalogs.catalog_names() {
            let Some(schema) = self
                .catalogs
                .catalog(&catalog_name)
                .and_then(|c| c.schema(schema_name))
            else {
                continue;
            };
            if let Some(provider) = schema.table(table).await? {
                return Ok(Some(provider.schema()));
            }
        }
        Ok(None)
    }
}

async fn scan_all(table: &dyn TableProvider, state: &dyn Session) -> Result<Vec<RecordBatch>> {
    let plan = table.scan(state, None, &[], None).await?;
    collect(plan, state.task_ctx()).await
}

fn int32_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a datafusion::arrow::array::PrimitiveArray<Int32Type>> {
    let column = batch.column_by_name(name).ok_or_else(|| missing(name))?;
    column
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} is not int4")))
}

fn utf8_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a datafusion::arrow::array::StringArray> {
    let column: &'a dyn Array = batch.column_by_name(name).ok_or_else(|| missing(name))?;
    column
        .as_string_opt::<i32>()
        .ok_or_else(|| DataFusionError::Internal(format!("pg_catalog column {name} is not text")))
}

fn missing(name: &str) -> DataFusionError {
    DataFusionError::Internal(format!("pg_catalog lacks column {name}"))
}
