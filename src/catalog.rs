//! The catalog: what objects exist and how DataFusion and PostgreSQL clients see them.
//!
//! EddyDB serves one database (default name `eddy`), exposed to DataFusion as one catalog with
//! a `public` schema for user objects, `pg_catalog` (from `datafusion-pg-catalog`, fed from the
//! live catalog so `\d` and drivers see user tables) and a PostgreSQL-flavoured
//! `information_schema` ([`information_schema`]). Clients may name any database at startup; all
//! names reach the same catalog.
//!
//! Streams and tables are created and dropped only through [`Catalog`], which keeps DataFusion's
//! view (one table provider per relation, see [`crate::storage`]) in step with the durable
//! catalog in [`Storage`]: at start every stored relation is registered again under its name.

pub mod activity;
pub mod information_schema;
pub mod pg_attribute;
pub mod pg_functions;
pub mod pg_types;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::{Constraint, Constraints};
use datafusion::datasource::TableProvider;
use datafusion::prelude::SessionContext;

use crate::connectors::Sources;
use crate::error::{Error, Result};
use crate::ml::registry::Models;
use crate::storage::{Relation, RelationDef, RelationKind, Storage};
use crate::streaming::runtime::Views;
use crate::streaming::view::{View, ViewTable};

/// A table of `eddy_catalog`, computed when scanned.
#[derive(Debug)]
struct SystemTable {
    name: &'static str,
    schema: SchemaRef,
    views: Arc<Views>,
    sources: Arc<Sources>,
    sinks: Arc<crate::connectors::sink::Sinks>,
    models: Arc<Models>,
    activity: Arc<activity::Activity>,
    storage: Arc<Storage>,
}

#[async_trait::async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = match self.name {
            "materialized_views" => crate::planner::views::materialized_views(&self.views.all())?,
            "late_rows" => crate::planner::views::late_rows(&self.views.all())?,
            "models" => crate::planner::models::models_table(&self.models.all())?,
            "model_versions" => crate::planner::models::model_versions_table(&self.models.all())?,
            "model_monitors" => crate::planner::monitors::monitors_table(&self.models.all())?,
            "drift_events" => crate::planner::monitors::drift_events_table(&self.models.all())?,
            "source_partitions" => self.sources.partitions_batch()?,
            "dead_letters" => self.sources.dead_letters_batch()?,
            "sinks" => self.sinks.system_batch()?,
            "sessions" | "pg_stat_activity" => self.activity.batch()?,
            "streams" => {
                crate::planner::relations::relations_batch(&self.storage, RelationKind::Stream)?
            }
            "tables" => {
                crate::planner::relations::relations_batch(&self.storage, RelationKind::Table)?
            }
            "storage_files" => crate::planner::relations::storage_files_batch(&self.storage)?,
            _ => self.sources.system_batch()?,
        };
        Ok(
            datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?,
        )
    }
}

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
    storage: Arc<Storage>,
    views: Arc<Views>,
    sources: Arc<Sources>,
    sinks: Arc<crate::connectors::sink::Sinks>,
    models: Arc<Models>,
    activity: Arc<activity::Activity>,
}

/// Schema of EddyDB's system tables.
pub const SYSTEM_SCHEMA: &str = "eddy_catalog";

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
    /// The catalog of `storage`'s relations, registered on `ctx` as [`DATABASE_NAME`].
    pub fn install(ctx: &SessionContext, storage: Arc<Storage>) -> Result<Arc<Catalog>> {
        let provider = Arc::new(MemoryCatalogProvider::new());
        provider.register_schema(DEFAULT_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
        ctx.register_catalog(
            DATABASE_NAME,
            Arc::clone(&provider) as Arc<dyn CatalogProvider>,
        );
        storage.register_object_store(ctx.runtime_env().as_ref());
        let views = Arc::new(Views::default());
        let sources = Arc::new(Sources::default());
        let sinks = Arc::new(crate::connectors::sink::Sinks::default());
        let models = Arc::new(Models::new(Arc::clone(&storage)));
        let activity = Arc::new(activity::Activity::default());
        let system = MemorySchemaProvider::new();
        for table in [
            "materialized_views",
            "late_rows",
            "sources",
            "source_partitions",
            "dead_letters",
            "sinks",
            "models",
            "model_versions",
            "model_monitors",
            "drift_events",
            "sessions",
            "streams",
            "tables",
            "storage_files",
        ] {
            let schema = match table {
                "sources" => Sources::system_schema(),
                "source_partitions" => Sources::partitions_schema(),
                "dead_letters" => Sources::dead_letters_schema(),
                "sinks" => crate::connectors::sink::Sinks::system_schema(),
                "models" | "model_versions" => crate::planner::models::system_schema(table),
                "model_monitors" | "drift_events" => crate::planner::monitors::system_schema(table),
                "sessions" => activity::Activity::schema(),
                "streams" => {
                    crate::planner::relations::relations_batch(&storage, RelationKind::Stream)?
                        .schema()
                }
                "tables" => {
                    crate::planner::relations::relations_batch(&storage, RelationKind::Table)?
                        .schema()
                }
                "storage_files" => {
                    crate::planner::relations::storage_files_batch(&storage)?.schema()
                }
                _ => crate::planner::views::system_schema(table)?,
            };
            system.register_table(
                table.to_string(),
                Arc::new(SystemTable {
                    name: table,
                    schema,
                    views: Arc::clone(&views),
                    sources: Arc::clone(&sources),
                    sinks: Arc::clone(&sinks),
                    models: Arc::clone(&models),
                    activity: Arc::clone(&activity),
                    storage: Arc::clone(&storage),
                }),
            )?;
        }
        provider.register_schema(SYSTEM_SCHEMA, Arc::new(system))?;
        let catalog = Catalog {
            provider,
            storage,
            views,
            sources,
            sinks,
            models,
            activity,
        };
        for relation in catalog.storage.relations() {
            let def = relation.def();
            let registered = catalog.user_schema(&def.schema_name).and_then(|schema| {
                Ok(schema.register_table(def.name.clone(), relation.provider())?)
            });
            if let Err(e) = registered {
                // The rest of the data stays reachable; this relation needs an operator.
                tracing::error!(relation = %def.name, id = def.id, error = %e, "stored relation not registered");
            }
        }
        Ok(Arc::new(catalog))
    }

    /// `pg_stat_activity`, served by the `pg_catalog` schema (see [`pg_attribute::install`]).
    pub fn pg_stat_activity(&self) -> Arc<dyn TableProvider> {
        Arc::new(SystemTable {
            name: "pg_stat_activity",
            schema: activity::Activity::schema(),
            views: Arc::clone(&self.views),
            sources: Arc::clone(&self.sources),
            sinks: Arc::clone(&self.sinks),
            models: Arc::clone(&self.models),
            activity: Arc::clone(&self.activity),
            storage: Arc::clone(&self.storage),
        })
    }

    /// Connected backends and the server's connection and statement figures.
    pub fn activity(&self) -> &Arc<activity::Activity> {
        &self.activity
    }

    /// The durable storage behind the catalog.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The running sources.
    pub fn sources(&self) -> &Arc<Sources> {
        &self.sources
    }

    /// The running sinks.
    pub fn sinks(&self) -> &Arc<crate::connectors::sink::Sinks> {
        &self.sinks
    }

    /// Start the sources of stored streams that have a connector (at server start).
    pub fn start_sources(&self) {
        for relation in self.storage.relations() {
            if let Relation::Stream(stream) = relation {
                self.sources.start(stream);
            }
        }
    }

    /// Create a table; a primary key among `constraints` makes it keyed (upserts, deletes by
    /// key). `if_not_exists` turns "already exists" into a no-op (returns false).
    pub fn create_table(
        &self,
        name: &QualifiedName,
        schema: SchemaRef,
        constraints: Constraints,
        if_not_exists: bool,
    ) -> Result<bool> {
        let mut def = RelationDef::new(RelationKind::Table, &name.schema, &name.name, &schema);
        for constraint in constraints.iter() {
            match constraint {
                Constraint::PrimaryKey(columns) => {
                    def.primary_key = columns
                        .iter()
                        .map(|&i| schema.field(i).name().clone())
                        .collect();
                }
                Constraint::Unique(_) => {
                    return Err(Error::Unsupported(
                        "UNIQUE constraints other than the PRIMARY KEY".to_string(),
                    ));
                }
            }
        }
        self.create(def, if_not_exists)
    }

    /// Create a stream or table from its definition. `if_not_exists` turns "already exists"
    /// into a no-op (returns false).
    pub fn create(&self, def: RelationDef, if_not_exists: bool) -> Result<bool> {
        let schema_provider = self.user_schema(&def.schema_name)?;
        if schema_provider.table_exist(&def.name) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(Error::AlreadyExists {
                kind: "relation",
                name: def.name.clone(),
            });
        }
        let name = def.name.clone();
        let relation = match self.storage.create(def) {
            Ok(relation) => relation,
            // Another session created the name between the check above and now.
            Err(Error::AlreadyExists { .. }) if if_not_exists => return Ok(false),
            Err(e) => return Err(e),
        };
        schema_provider.register_table(name, relation.provider())?;
        if let Relation::Stream(stream) = relation {
            self.sources.start(stream);
        }
        Ok(true)
    }

    /// Drop a stream or table; `kind` is what the statement named (DROP STREAM / DROP TABLE).
    /// `if_exists` turns "does not exist" into a no-op (returns false).
    pub async fn drop_relation(
        &self,
        name: &QualifiedName,
        kind: RelationKind,
        if_exists: bool,
    ) -> Result<bool> {
        let schema_provider = self.user_schema(&name.schema)?;
        let relation = match schema_provider.table(&name.name).await? {
            Some(provider) => Relation::of_provider(provider.as_ref()),
            None if if_exists => return Ok(false),
            None => {
                return Err(Error::NotFound {
                    kind: kind_name(kind),
                    name: name.name.clone(),
                });
            }
        };
        let Some(relation) = relation else {
            return Err(Error::WrongObjectType(format!(
                "\"{}\" is not a {}",
                name.name,
                kind_name(kind)
            )));
        };
        let def = relation.def();
        let dependents = self
            .storage
            .dependents(&format!("{}.{}", def.schema_name, def.name));
        if !dependents.is_empty() && def.kind == kind {
            return Err(Error::DependentObjects(format!(
                "cannot drop {} \"{}\" because materialized view \"{}\" depends on it",
                kind_name(kind),
                def.name,
                dependents.join("\", \"")
            )));
        }
        if def.kind != kind {
            return Err(Error::WrongObjectType(format!(
                "\"{}\" is a {}, not a {}; use DROP {}",
                name.name,
                kind_name(def.kind),
                kind_name(kind),
                kind_name(def.kind).to_ascii_uppercase()
            )));
        }
        self.sources.stop(def.id).await;
        if let Err(e) = self.storage.drop_relation(def.id).await {
            // The stream stays, and so does its source.
            if let Relation::Stream(stream) = relation {
                self.sources.start(stream);
            }
            return Err(e);
        }
        schema_provider.deregister_table(&name.name)?;
        Ok(true)
    }

    /// Running materialized views.
    pub fn views(&self) -> &Arc<Views> {
        &self.views
    }

    /// Models and their versions.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Make a started view visible under its name.
    pub fn register_view(&self, view: Arc<View>) -> Result<()> {
        let schema = self.user_schema(&view.def.schema_name)?;
        schema.register_table(
            view.def.name.clone(),
            Arc::new(ViewTable {
                view: Arc::clone(&view),
            }),
        )?;
        self.views.insert(view);
        Ok(())
    }

    /// The materialized view called `name`.
    pub fn view(&self, name: &QualifiedName) -> Result<Arc<View>> {
        self.views
            .get(&name.to_string())
            .ok_or_else(|| Error::NotFound {
                kind: "materialized view",
                name: name.name.clone(),
            })
    }

    /// `DROP MATERIALIZED VIEW`; refused while other views read it.
    pub async fn drop_view(&self, name: &QualifiedName, if_exists: bool) -> Result<bool> {
        let view = match self.view(name) {
            Ok(view) => view,
            Err(_) if if_exists => return Ok(false),
            Err(e) => {
                if self.table(name).await.is_ok() {
                    return Err(Error::WrongObjectType(format!(
                        "\"{}\" is not a materialized view",
                        name.name
                    )));
                }
                return Err(e);
            }
        };
        let dependents = self.storage.dependents(&name.to_string());
        if !dependents.is_empty() {
            return Err(Error::DependentObjects(format!(
                "cannot drop materialized view \"{}\" because materialized view \"{}\" depends on it",
                name.name,
                dependents.join("\", \"")
            )));
        }
        self.storage.drop_view(view.def.id)?;
        let checkpoints =
            crate::streaming::checkpoint::Checkpoints::new(Arc::clone(self.storage.cold_store()));
        if let Err(e) = checkpoints.delete(view.def.id).await {
            tracing::warn!(view = %view.def.name, error = %e, "checkpoints of a dropped view not deleted");
        }
        self.user_schema(&name.schema)?
            .deregister_table(&name.name)?;
        self.views.remove(&name.to_string());
        view.stop();
        Ok(true)
    }

    /// The stream or table called `name`.
    pub async fn relation(&self, name: &QualifiedName) -> Result<Relation> {
        let provider = self.table(name).await?;
        Relation::of_provider(provider.as_ref()).ok_or_else(|| {
            Error::WrongObjectType(format!("\"{}\" is not a stream or table", name.name))
        })
    }

    /// The table provider behind a user table.
    pub async fn table(&self, name: &QualifiedName) -> Result<Arc<dyn TableProvider>> {
        self.user_schema(&name.schema)?
            .table(&name.name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "relation",
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

/// How a statement names a kind of relation.
pub fn kind_name(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Stream => "stream",
        RelationKind::Table => "table",
    }
}
