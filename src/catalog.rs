//! The catalog: what objects exist and how DataFusion and PostgreSQL clients see them.
//!
//! EddyDB serves one database (default name `eddy`), exposed to DataFusion as one catalog with
//! a `public` schema for user objects, `pg_catalog` (from `datafusion-pg-catalog`, fed from the
//! live catalog so `\d` and drivers see user tables) and a PostgreSQL-flavoured
//! `information_schema` ([`information_schema`]). Clients may name any database at startup; all
//! names reach the same catalog.
//!
//! User tables are created and dropped only through [`Catalog`], so where a table's rows live is
//! decided here and nowhere else: today an in-memory `MemTable`; the storage layer replaces that
//! with durable tables without touching the planner or the server.

pub mod information_schema;
pub mod pg_attribute;
pub mod pg_functions;
pub mod pg_types;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::Constraints;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;

use crate::error::{Error, Result};

/// Name of the single database/catalog EddyDB serves.
pub const DATABASE_NAME: &str = "eddy";
/// Schema for user objects when none is named.
pub const DEFAULT_SCHEMA: &str = "public";

/// Schemas users may not create objects in.
const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// The registry of user objects, shared by every session.
#[derive(Debug)]
pub struct Catalog {
    provider: Arc<MemoryCatalogProvider>,
}

/// A table reference resolved to schema and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl Catalog {
    /// A catalog with an empty `public` schema, registered on `ctx` as [`DATABASE_NAME`].
    pub fn install(ctx: &SessionContext) -> Result<Arc<Catalog>> {
        let provider = Arc::new(MemoryCatalogProvider::new());
        provider.register_schema(DEFAULT_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
        ctx.register_catalog(
            DATABASE_NAME,
            Arc::clone(&provider) as Arc<dyn CatalogProvider>,
        );
        Ok(Arc::new(Catalog { provider }))
    }

    /// Create a table. `if_not_exists` turns "already exists" into a no-op (returns false).
    pub fn create_table(
        &self,
        name: &QualifiedName,
        schema: SchemaRef,
        constraints: Constraints,
        if_not_exists: bool,
    ) -> Result<bool> {
        let schema_provider = self.user_schema(&name.schema)?;
        if schema_provider.table_exist(&name.name) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: name.name.clone(),
            });
        }
        let table = MemTable::try_new(schema, vec![vec![]])?.with_constraints(constraints);
        schema_provider.register_table(name.name.clone(), Arc::new(table))?;
        Ok(true)
    }

    /// Drop a table. `if_exists` turns "does not exist" into a no-op (returns false).
    pub fn drop_table(&self, name: &QualifiedName, if_exists: bool) -> Result<bool> {
        let schema_provider = self.user_schema(&name.schema)?;
        match schema_provider.deregister_table(&name.name)? {
            Some(_) => Ok(true),
            None if if_exists => Ok(false),
            None => Err(Error::NotFound {
                kind: "table",
                name: name.name.clone(),
            }),
        }
    }

    /// The table provider behind a user table.
    pub async fn table(&self, name: &QualifiedName) -> Result<Arc<dyn TableProvider>> {
        self.user_schema(&name.schema)?
            .table(&name.name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "table",
                name: name.name.clone(),
            })
    }

    fn user_schema(&self, schema: &str) -> Result<Arc<dyn datafusion::catalog::SchemaProvider>> {
        if SYSTEM_SCHEMAS.contains(&schema) {
            return Err(Error::InvalidValue(format!(
                "permission denied to create or drop objects in system schema \"{schema}\""
            )));
        }
        self.provider.schema(schema).ok_or_else(|| Error::NotFound {
            kind: "schema",
            name: schema.to_string(),
        })
    }
}
