//! A PostgreSQL-flavoured `information_schema`.
//!
//! Why: tools read table and column metadata from `information_schema` (Grafana's query builder
//! and schema browser, DBeaver, SQLAlchemy reflection, BI tools) and key on PostgreSQL's column
//! names and values: `data_type` spelled the SQL-standard way (`integer`, `timestamp with time
//! zone`), `udt_name` with the internal name (`int4`, `timestamptz`, `_int4`), `table_type`
//! `BASE TABLE`/`VIEW`. DataFusion's own `information_schema` reports Arrow type names and lacks
//! most of these columns, so the engine turns it off and registers this one instead.
//!
//! How data flows: [`PgInformationSchema`] is a DataFusion [`SchemaProvider`] whose tables are
//! [`StreamingTable`]s. Nothing is cached: each scan walks the live catalog list (catalogs ->
//! schemas -> [`TableProvider`]s) and builds one record batch, so a table appears as soon as it
//! is created. Column types go through [`pg_types`], the single Arrow <-> PostgreSQL mapping, so
//! `information_schema.columns` agrees with the type OIDs the wire protocol sends. Primary keys
//! and unique constraints come from [`TableProvider::constraints`]. Views without an EddyDB
//! counterpart (routines, triggers, sequences, ...) exist with PostgreSQL's columns and no rows,
//! so tools that query them get an empty answer instead of an error.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{Constraint, DataFusionError};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use pgwire::api::Type;

use crate::catalog::pg_types;
use crate::error::Error;

/// The schema name this provider is registered under.
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The role that owns every object (EddyDB has a single owner for now).
const OWNER: &str = "eddy";

/// Schemas that hold system objects rather than user data.
const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", INFORMATION_SCHEMA];

/// PostgreSQL 16's system catalogs: the `pg_catalog` relations that are base tables (every
/// other `pg_catalog` relation is a view, such as `pg_tables` or `pg_settings`).
const PG_SYSTEM_CATALOGS: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_conversion",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_index",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_range",
    "pg_replication_origin",
    "pg_rewrite",
    "pg_seclabel",
    "pg_sequence",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shseclabel",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tablespace",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user_mapping",
];

/// PostgreSQL's `character_octet_length` for text types without a length limit (2^30).
const UNLIMITED_OCTET_LENGTH: i32 = 1 << 30;

/// Register [`PgInformationSchema`] as schema `information_schema` of catalog `catalog_name`,
/// listing only that catalog's objects (a PostgreSQL database sees only itself).
pub fn register_information_schema(ctx: &SessionContext, catalog_name: &str) -> crate::Result<()> {
    let catalog = ctx.catalog(catalog_name).ok_or_else(|| Error::NotFound {
        kind: "database",
        name: catalog_name.to_string(),
    })?;
    let provider =
        PgInformationSchema::new(Arc::clone(ctx.state().catalog_list())).with_catalog(catalog_name);
    catalog.register_schema(INFORMATION_SCHEMA, Arc::new(provider))?;
    Ok(())
}

/// The `information_schema` schema, computed from `catalog_list` on every scan.
#[derive(Debug, Clone)]
pub struct PgInformationSchema {
    catalog_list: Arc<dyn CatalogProviderList>,
    /// When set, only this catalog is described (see [`register_information_schema`]).
    catalog_name: Option<String>,
}

impl PgInformationSchema {
    /// Describe every catalog in `catalog_list`.
    pub fn new(catalog_list: Arc<dyn CatalogProviderList>) -> Self {
        Self {
            catalog_list,
            catalog_name: None,
        }
    }

    /// Describe only the catalog (database) named `catalog_name`.
    pub fn with_catalog(mut self, catalog_name: impl Into<String>) -> Self {
        self.catalog_name = Some(catalog_name.into());
        self
    }
}

#[async_trait]
impl SchemaProvider for PgInformationSchema {
    fn owner_name(&self) -> Option<&str> {
        Some(OWNER)
    }

    fn table_names(&self) -> Vec<String> {
        View::ALL.iter().map(|v| v.name().to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(view) = View::from_name(name) else {
            return Ok(None);
        };
        let partition = Arc::new(ViewPartition {
            view,
            schema: view.schema(),
            source: self.clone(),
        });
        let table = StreamingTable::try_new(Arc::clone(&partition.schema), vec![partition])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        View::from_name(name).is_some()
    }
}

/// The views of this `information_schema`, in PostgreSQL's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    ApplicableRoles,
    CharacterSets,
    CheckConstraints,
    ColumnPrivileges,
    Columns,
    ElementTypes,
    EnabledRoles,
    InformationSchemaCatalogName,
    KeyColumnUsage,
    Parameters,
    ReferentialConstraints,
    RoleTableGrants,
    Routines,
    Schemata,
    Sequences,
    TableConstraints,
    TablePrivileges,
    Tables,
    Triggers,
    Views,
}

/// How a column is typed: PostgreSQL's `sql_identifier`/`character_data`/`yes_or_no` are text,
/// `cardinal_number` is int4, `time_stamp` is timestamptz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    T,
    I,
    Ts,
}

use Kind::{I, T, Ts};

const SCHEMATA: &[(&str, Kind)] = &[
    ("catalog_name", T),
    ("schema_name", T),
    ("schema_owner", T),
    ("default_character_set_catalog", T),
    ("default_character_set_schema", T),
    ("default_character_set_name", T),
    ("sql_path", T),
];

const TABLES: &[(&str, Kind)] = &[
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("table_type", T),
    ("self_referencing_column_name", T),
    ("reference_generation", T),
    ("user_defined_type_catalog", T),
    ("user_defined_type_schema", T),
    ("user_defined_type_name", T),
    ("is_insertable_into", T),
    ("is_typed", T),
    ("commit_action", T),
];

const COLUMNS: &[(&str, Kind)] = &[
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("column_name", T),
    ("ordinal_position", I),
    ("column_default", T),
    ("is_nullable", T),
    ("data_type", T),
    ("character_maximum_length", I),
    ("character_octet_length", I),
    ("numeric_precision", I),
    ("numeric_precision_radix", I),
    ("numeric_scale", I),
    ("datetime_precision", I),
    ("interval_type", T),
    ("interval_precision", I),
    ("character_set_catalog", T),
    ("character_set_schema", T),
    ("character_set_name", T),
    ("collation_catalog", T),
    ("collation_schema", T),
    ("collation_name", T),
    ("domain_catalog", T),
    ("domain_schema", T),
    ("domain_name", T),
    ("udt_catalog", T),
    ("udt_schema", T),
    ("udt_name", T),
    ("scope_catalog", T),
    ("scope_schema", T),
    ("scope_name", T),
    ("maximum_cardinality", I),
    ("dtd_identifier", T),
    ("is_self_referencing", T),
    ("is_identity", T),
    ("identity_generation", T),
    ("identity_start", T),
    ("identity_increment", T),
    ("identity_maximum", T),
    ("identity_minimum", T),
    ("identity_cycle", T),
    ("is_generated", T),
    ("generation_expression", T),
    ("is_updatable", T),
];

const VIEWS: &[(&str, Kind)] = &[
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("view_definition", T),
    ("check_option", T),
    ("is_updatable", T),
    ("is_insertable_into", T),
    ("is_trigger_updatable", T),
    ("is_trigger_deletable", T),
    ("is_trigger_insertable_into", T),
];

const TABLE_CONSTRAINTS: &[(&str, Kind)] = &[
    ("constraint_catalog", T),
    ("constraint_schema", T),
    ("constraint_name", T),
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("constraint_type", T),
    ("is_deferrable", T),
    ("initially_deferred", T),
    ("enforced", T),
    ("nulls_distinct", T),
];

const KEY_COLUMN_USAGE: &[(&str, Kind)] = &[
    ("constraint_catalog", T),
    ("constraint_schema", T),
    ("constraint_name", T),
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("column_name", T),
    ("ordinal_position", I),
    ("position_in_unique_constraint", I),
];

const ROUTINES: &[(&str, Kind)] = &[
    ("specific_catalog", T),
    ("specific_schema", T),
    ("specific_name", T),
    ("routine_catalog", T),
    ("routine_schema", T),
    ("routine_name", T),
    ("routine_type", T),
    ("module_catalog", T),
    ("module_schema", T),
    ("module_name", T),
    ("udt_catalog", T),
    ("udt_schema", T),
    ("udt_name", T),
    ("data_type", T),
    ("character_maximum_length", I),
    ("character_octet_length", I),
    ("character_set_catalog", T),
    ("character_set_schema", T),
    ("character_set_name", T),
    ("collation_catalog", T),
    ("collation_schema", T),
    ("collation_name", T),
    ("numeric_precision", I),
    ("numeric_precision_radix", I),
    ("numeric_scale", I),
    ("datetime_precision", I),
    ("interval_type", T),
    ("interval_precision", I),
    ("type_udt_catalog", T),
    ("type_udt_schema", T),
    ("type_udt_name", T),
    ("scope_catalog", T),
    ("scope_schema", T),
    ("scope_name", T),
    ("maximum_cardinality", I),
    ("dtd_identifier", T),
    ("routine_body", T),
    ("routine_definition", T),
    ("external_name", T),
    ("external_language", T),
    ("parameter_style", T),
    ("is_deterministic", T),
    ("sql_data_access", T),
    ("is_null_call", T),
    ("sql_path", T),
    ("schema_level_routine", T),
    ("max_dynamic_result_sets", I),
    ("is_user_defined_cast", T),
    ("is_implicitly_invocable", T),
    ("security_type", T),
    ("to_sql_specific_catalog", T),
    ("to_sql_specific_schema", T),
    ("to_sql_specific_name", T),
    ("as_locator", T),
    ("created", Ts),
    ("last_altered", Ts),
    ("new_savepoint_level", T),
    ("is_udt_dependent", T),
    ("result_cast_from_data_type", T),
    ("result_cast_as_locator", T),
    ("result_cast_char_max_length", I),
    ("result_cast_char_octet_length", I),
    ("result_cast_char_set_catalog", T),
    ("result_cast_char_set_schema", T),
    ("result_cast_char_set_name", T),
    ("result_cast_collation_catalog", T),
    ("result_cast_collation_schema", T),
    ("result_cast_collation_name", T),
    ("result_cast_numeric_precision", I),
    ("result_cast_numeric_precision_radix", I),
    ("result_cast_numeric_scale", I),
    ("result_cast_datetime_precision", I),
    ("result_cast_interval_type", T),
    ("result_cast_interval_precision", I),
    ("result_cast_type_udt_catalog", T),
    ("result_cast_type_udt_schema", T),
    ("result_cast_type_udt_name", T),
    ("result_cast_scope_catalog", T),
    ("result_cast_scope_schema", T),
    ("result_cast_scope_name", T),
    ("result_cast_maximum_cardinality", I),
    ("result_cast_dtd_identifier", T),
];

const PARAMETERS: &[(&str, Kind)] = &[
    ("specific_catalog", T),
    ("specific_schema", T),
    ("specific_name", T),
    ("ordinal_position", I),
    ("parameter_mode", T),
    ("is_result", T),
    ("as_locator", T),
    ("parameter_name", T),
    ("data_type", T),
    ("character_maximum_length", I),
    ("character_octet_length", I),
    ("character_set_catalog", T),
    ("character_set_schema", T),
    ("character_set_name", T),
    ("collation_catalog", T),
    ("collation_schema", T),
    ("collation_name", T),
    ("numeric_precision", I),
    ("numeric_precision_radix", I),
    ("numeric_scale", I),
    ("datetime_precision", I),
    ("interval_type", T),
    ("interval_precision", I),
    ("udt_catalog", T),
    ("udt_schema", T),
    ("udt_name", T),
    ("scope_catalog", T),
    ("scope_schema", T),
    ("scope_name", T),
    ("maximum_cardinality", I),
    ("dtd_identifier", T),
    ("parameter_default", T),
];

const CHARACTER_SETS: &[(&str, Kind)] = &[
    ("character_set_catalog", T),
    ("character_set_schema", T),
    ("character_set_name", T),
    ("character_repertoire", T),
    ("form_of_use", T),
    ("default_collate_catalog", T),
    ("default_collate_schema", T),
    ("default_collate_name", T),
];

const REFERENTIAL_CONSTRAINTS: &[(&str, Kind)] = &[
    ("constraint_catalog", T),
    ("constraint_schema", T),
    ("constraint_name", T),
    ("unique_constraint_catalog", T),
    ("unique_constraint_schema", T),
    ("unique_constraint_name", T),
    ("match_option", T),
    ("update_rule", T),
    ("delete_rule", T),
];

const CHECK_CONSTRAINTS: &[(&str, Kind)] = &[
    ("constraint_catalog", T),
    ("constraint_schema", T),
    ("constraint_name", T),
    ("check_clause", T),
];

const COLUMN_PRIVILEGES: &[(&str, Kind)] = &[
    ("grantor", T),
    ("grantee", T),
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("column_name", T),
    ("privilege_type", T),
    ("is_grantable", T),
];

const TABLE_PRIVILEGES: &[(&str, Kind)] = &[
    ("grantor", T),
    ("grantee", T),
    ("table_catalog", T),
    ("table_schema", T),
    ("table_name", T),
    ("privilege_type", T),
    ("is_grantable", T),
    ("with_hierarchy", T),
];

const SEQUENCES: &[(&str, Kind)] = &[
    ("sequence_catalog", T),
    ("sequence_schema", T),
    ("sequence_name", T),
    ("data_type", T),
    ("numeric_precision", I),
    ("numeric_precision_radix", I),
    ("numeric_scale", I),
    ("start_value", T),
    ("minimum_value", T),
    ("maximum_value", T),
    ("increment", T),
    ("cycle_option", T),
];

const TRIGGERS: &[(&str, Kind)] = &[
    ("trigger_catalog", T),
    ("trigger_schema", T),
    ("trigger_name", T),
    ("event_manipulation", T),
    ("event_object_catalog", T),
    ("event_object_schema", T),
    ("event_object_table", T),
    ("action_order", I),
    ("action_condition", T),
    ("action_statement", T),
    ("action_orientation", T),
    ("action_timing", T),
    ("action_reference_old_table", T),
    ("action_reference_new_table", T),
    ("action_reference_old_row", T),
    ("action_reference_new_row", T),
    ("created", Ts),
];

const ELEMENT_TYPES: &[(&str, Kind)] = &[
    ("object_catalog", T),
    ("object_schema", T),
    ("object_name", T),
    ("object_type", T),
    ("collection_type_identifier", T),
    ("data_type", T),
    ("character_maximum_length", I),
    ("character_octet_length", I),
    ("character_set_catalog", T),
    ("character_set_schema", T),
    ("character_set_name", T),
    ("collation_catalog", T),
    ("collation_schema", T),
    ("collation_name", T),
    ("numeric_precision", I),
    ("numeric_precision_radix", I),
    ("numeric_scale", I),
    ("datetime_precision", I),
    ("interval_type", T),
    ("interval_precision", I),
    ("domain_default", T),
    ("udt_catalog", T),
    ("udt_schema", T),
    ("udt_name", T),
    ("scope_catalog", T),
    ("scope_schema", T),
    ("scope_name", T),
    ("maximum_cardinality", I),
    ("dtd_identifier", T),
];

const ENABLED_ROLES: &[(&str, Kind)] = &[("role_name", T)];

const APPLICABLE_ROLES: &[(&str, Kind)] = &[("grantee", T), ("role_name", T), ("is_grantable", T)];

const INFORMATION_SCHEMA_CATALOG_NAME: &[(&str, Kind)] = &[("catalog_name", T)];

impl View {
    const ALL: [View; 20] = [
        View::ApplicableRoles,
        View::CharacterSets,
        View::CheckConstraints,
        View::ColumnPrivileges,
        View::Columns,
        View::ElementTypes,
        View::EnabledRoles,
        View::InformationSchemaCatalogName,
        View::KeyColumnUsage,
        View::Parameters,
        View::ReferentialConstraints,
        View::RoleTableGrants,
        View::Routines,
        View::Schemata,
        View::Sequences,
        View::TableConstraints,
        View::TablePrivileges,
        View::Tables,
        View::Triggers,
        View::Views,
    ];

    fn name(self) -> &'static str {
        match self {
            View::ApplicableRoles => "applicable_roles",
            View::CharacterSets => "character_sets",
            View::CheckConstraints => "check_constraints",
            View::ColumnPrivileges => "column_privileges",
            View::Columns => "columns",
            View::ElementTypes => "element_types",
            View::EnabledRoles => "enabled_roles",
            View::InformationSchemaCatalogName => "information_schema_catalog_name",
            View::KeyColumnUsage => "key_column_usage",
            View::Parameters => "parameters",
            View::ReferentialConstraints => "referential_constraints",
            View::RoleTableGrants => "role_table_grants",
            View::Routines => "routines",
            View::Schemata => "schemata",
            View::Sequences => "sequences",
            View::TableConstraints => "table_constraints",
            View::TablePrivileges => "table_privileges",
            View::Tables => "tables",
            View::Triggers => "triggers",
            View::Views => "views",
        }
    }

    fn from_name(name: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == name)
    }

    fn columns(self) -> &'static [(&'static str, Kind)] {
        match self {
            View::ApplicableRoles => APPLICABLE_ROLES,
            View::CharacterSets => CHARACTER_SETS,
            View::CheckConstraints => CHECK_CONSTRAINTS,
            View::ColumnPrivileges => COLUMN_PRIVILEGES,
            View::Columns => COLUMNS,
            View::ElementTypes => ELEMENT_TYPES,
            View::EnabledRoles => ENABLED_ROLES,
            View::InformationSchemaCatalogName => INFORMATION_SCHEMA_CATALOG_NAME,
            View::KeyColumnUsage => KEY_COLUMN_USAGE,
            View::Parameters => PARAMETERS,
            View::ReferentialConstraints => REFERENTIAL_CONSTRAINTS,
            View::RoleTableGrants | View::TablePrivileges => TABLE_PRIVILEGES,
            View::Routines => ROUTINES,
            View::Schemata => SCHEMATA,
            View::Sequences => SEQUENCES,
            View::TableConstraints => TABLE_CONSTRAINTS,
            View::Tables => TABLES,
            View::Triggers => TRIGGERS,
            View::Views => VIEWS,
        }
    }

    fn schema(self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns()
            .iter()
            .map(|(name, kind)| Field::new(*name, kind_type(*kind), true))
            .collect();
        Arc::new(Schema::new(fields))
    }
}

fn kind_type(kind: Kind) -> DataType {
    match kind {
        T => DataType::Utf8,
        I => DataType::Int32,
        Ts => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
    }
}

/// One partition producing a whole view; computed when the scan runs.
#[derive(Debug)]
struct ViewPartition {
    view: View,
    schema: SchemaRef,
    source: PgInformationSchema,
}

impl PartitionStream for ViewPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let view = self.view;
        let schema = Arc::clone(&self.schema);
        let source = self.source.clone();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(async move {
                let rows = source.rows(view).await;
                to_batch(schema, view.columns(), rows)
            }),
        ))
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Int(i32),
}

fn text(value: impl Into<String>) -> Cell {
    Cell::Text(value.into())
}

fn int(value: Option<i32>) -> Cell {
    value.map_or(Cell::Null, Cell::Int)
}

fn opt_text(value: Option<impl Into<String>>) -> Cell {
    value.map_or(Cell::Null, |v| Cell::Text(v.into()))
}

fn yes_no(yes: bool) -> Cell {
    text(if yes { "YES" } else { "NO" })
}

fn to_batch(
    schema: SchemaRef,
    columns: &[(&str, Kind)],
    rows: Vec<Vec<Cell>>,
) -> Result<RecordBatch, DataFusionError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (index, (name, kind)) in columns.iter().enumerate() {
        let cells = rows.iter().map(|row| row.get(index).unwrap_or(&Cell::Null));
        let array: ArrayRef = match kind {
            T => {
                let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
                for cell in cells {
                    match cell {
                        Cell::Text(s) => b.append_value(s),
                        Cell::Int(i) => b.append_value(i.to_string()),
                        Cell::Null => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            I => {
                let mut b = Int32Builder::with_capacity(rows.len());
                for cell in cells {
                    match cell {
                        Cell::Int(i) => b.append_value(*i),
                        Cell::Null => b.append_null(),
                        Cell::Text(_) => {
                            return Err(DataFusionError::Internal(format!(
                                "information_schema: text value in integer column {name}"
                            )));
                        }
                    }
                }
                Arc::new(b.finish())
            }
            // No view has a known timestamp yet: these columns are always NULL.
            Ts => datafusion::arrow::array::new_null_array(&kind_type(*kind), rows.len()),
        };
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(schema, arrays)?)
}

/// A table as the views see it.
#[derive(Debug)]
struct TableEntry {
    catalog: String,
    schema: String,
    name: String,
    provider: Arc<dyn TableProvider>,
}

impl TableEntry {
    fn is_system(&self) -> bool {
        SYSTEM_SCHEMAS.contains(&self.schema.as_str())
    }

    /// The relation's kind as PostgreSQL would report it. `pg_catalog` relations are emulated
    /// by providers of any kind, so they are classified by PostgreSQL's list of system catalogs.
    fn kind(&self) -> TableType {
        if self.schema == "pg_catalog" {
            if PG_SYSTEM_CATALOGS.contains(&self.name.as_str()) {
                TableType::Base
            } else {
                TableType::View
            }
        } else {
            self.provider.table_type()
        }
    }

    fn table_type(&self) -> &'static str {
        match self.kind() {
            TableType::Base => "BASE TABLE",
            TableType::View => "VIEW",
            TableType::Temporary => "LOCAL TEMPORARY",
        }
    }

    /// Whether rows can be written: user tables are, views and system relations are not.
    fn is_insertable(&self) -> bool {
        !self.is_system() && self.kind() != TableType::View
    }

    /// Primary key and unique constraints as (name, type, column indices).
    fn key_constraints(&self) -> Vec<(String, &'static str, Vec<usize>)> {
        let Some(constraints) = self.provider.constraints() else {
            return vec![];
        };
        let fields = self.provider.schema();
        constraints
            .iter()
            .map(|c| match c {
                Constraint::PrimaryKey(cols) => {
                    (format!("{}_pkey", self.name), "PRIMARY KEY", cols.clone())
                }
                Constraint::Unique(cols) => {
                    let names: Vec<&str> = cols
                        .iter()
                        .filter_map(|&i| fields.fields().get(i).map(|f| f.name().as_str()))
                        .collect();
                    (
                        format!("{}_{}_key", self.name, names.join("_")),
                        "UNIQUE",
                        cols.clone(),
                    )
                }
            })
            .collect()
    }

    fn primary_key_columns(&self) -> Vec<usize> {
        self.provider
            .constraints()
            .into_iter()
            .flat_map(|c| c.iter())
            .filter_map(|c| match c {
                Constraint::PrimaryKey(cols) => Some(cols.clone()),
                Constraint::Unique(_) => None,
            })
            .flatten()
            .collect()
    }
}

/// How a column's type is described in `columns` and `element_types`.
#[derive(Debug)]
struct ColumnType {
    pg: Type,
    character_octet_length: Option<i32>,
    numeric_precision: Option<i32>,
    numeric_precision_radix: Option<i32>,
    numeric_scale: Option<i32>,
    datetime_precision: Option<i32>,
}

impl ColumnType {
    fn of_field(field: &Field) -> Self {
        let pg = pg_types::pg_type_of_field(field);
        Self::of(pg, storage_type(field.data_type()))
    }

    /// Describe PostgreSQL type `pg`, stored as Arrow type `arrow` (which refines precision).
    fn of(pg: Type, arrow: &DataType) -> Self {
        let (precision, radix, scale) = match pg {
            Type::INT2 => (Some(16), Some(2), Some(0)),
            Type::INT4 => (Some(32), Some(2), Some(0)),
            Type::INT8 => (Some(64), Some(2), Some(0)),
            Type::FLOAT4 => (Some(24), Some(2), None),
            Type::FLOAT8 => (Some(53), Some(2), None),
            Type::NUMERIC => match arrow {
                DataType::Decimal32(p, s)
                | DataType::Decimal64(p, s)
                | DataType::Decimal128(p, s)
                | DataType::Decimal256(p, s) => {
                    (Some(i32::from(*p)), Some(10), Some(i32::from(*s)))
                }
                _ => (None, Some(10), None),
            },
            _ => (None, None, None),
        };
        let datetime_precision = match pg {
            Type::DATE => Some(0),
            Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => Some(match arrow {
                DataType::Timestamp(TimeUnit::Second, _) | DataType::Time32(TimeUnit::Second) => 0,
                DataType::Timestamp(TimeUnit::Millisecond, _)
                | DataType::Time32(TimeUnit::Millisecond) => 3,
                _ => 6,
            }),
            Type::INTERVAL => Some(6),
            _ => None,
        };
        let character_octet_length = match pg {
            Type::TEXT | Type::VARCHAR | Type::BPCHAR => Some(UNLIMITED_OCTET_LENGTH),
            _ => None,
        };
        Self {
            pg,
            character_octet_length,
            numeric_precision: precision,
            numeric_precision_radix: radix,
            numeric_scale: scale,
            datetime_precision,
        }
    }

    fn data_type(&self) -> &'static str {
        pg_types::sql_standard_name(&self.pg)
    }

    fn udt_name(&self) -> &str {
        self.pg.name()
    }
}

/// The Arrow type values are stored as, through dictionary and run-end encodings.
fn storage_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, value) => storage_type(value),
        DataType::RunEndEncoded(_, value) => storage_type(value.data_type()),
        other => other,
    }
}

/// The element field of a list-typed Arrow column.
fn list_element(t: &DataType) -> Option<&Field> {
    match storage_type(t) {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => Some(f),
        _ => None,
    }
}

/// A column default as SQL text (`pg_get_expr(adbin, adrelid)` in PostgreSQL).
fn default_sql(expr: &Expr) -> String {
    match datafusion::sql::unparser::expr_to_sql(expr) {
        Ok(sql) => sql.to_string(),
        Err(_) => expr.to_string(),
    }
}

impl PgInformationSchema {
    /// The catalogs described, sorted by name.
    fn catalog_names(&self) -> Vec<String> {
        let mut names = match &self.catalog_name {
            Some(name) => vec![name.clone()],
            None => self.catalog_list.catalog_names(),
        };
        names.retain(|n| self.catalog_list.catalog(n).is_some());
        names.sort();
        names
    }

    /// (catalog, schema) pairs, sorted; `information_schema` itself is always listed.
    fn schemas(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        for catalog_name in self.catalog_names() {
            let Some(catalog) = self.catalog_list.catalog(&catalog_name) else {
                continue;
            };
            let mut names = catalog.schema_names();
            if !names.iter().any(|n| n == INFORMATION_SCHEMA) {
                names.push(INFORMATION_SCHEMA.to_string());
            }
            names.sort();
            names.dedup();
            out.extend(names.into_iter().map(|s| (catalog_name.clone(), s)));
        }
        out
    }

    /// Every table of every described schema, sorted by catalog, schema and name. A table whose
    /// provider fails to load is left out rather than failing the whole view.
    async fn tables(&self) -> Vec<TableEntry> {
        let mut out = vec![];
        for (catalog_name, schema_name) in self.schemas() {
            let schema: Arc<dyn SchemaProvider> = if schema_name == INFORMATION_SCHEMA {
                Arc::new(self.clone())
            } else {
                match self
                    .catalog_list
                    .catalog(&catalog_name)
                    .and_then(|c| c.schema(&schema_name))
                {
                    Some(schema) => schema,
                    None => continue,
                }
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                match schema.table(&name).await {
                    Ok(Some(provider)) => out.push(TableEntry {
                        catalog: catalog_name.clone(),
                        schema: schema_name.clone(),
                        name,
                        provider,
                    }),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(
                        "information_schema: skipping {catalog_name}.{schema_name}.{name}: {e}"
                    ),
                }
            }
        }
        out
    }

    async fn rows(&self, view: View) -> Vec<Vec<Cell>> {
        match view {
            View::Schemata => self
                .schemas()
                .into_iter()
                .map(|(catalog, schema)| {
                    let owner = self
                        .catalog_list
                        .catalog(&catalog)
                        .and_then(|c| c.schema(&schema))
                        .and_then(|s| s.owner_name().map(str::to_string))
                        .unwrap_or_else(|| OWNER.to_string());
                    vec![
                        text(catalog),
                        text(schema),
                        text(owner),
                        Cell::Null,
                        Cell::Null,
                        Cell::Null,
                        Cell::Null,
                    ]
                })
                .collect(),
            View::InformationSchemaCatalogName => self
                .catalog_names()
                .into_iter()
                .map(|c| vec![text(c)])
                .collect(),
            View::CharacterSets => self
                .catalog_names()
                .into_iter()
                .map(|c| {
                    vec![
                        Cell::Null,
                        Cell::Null,
                        text("UTF8"),
                        text("UCS"),
                        text("UTF8"),
                        text(c),
                        text("pg_catalog"),
                        text("C"),
                    ]
                })
                .collect(),
            View::EnabledRoles => vec![vec![text(OWNER)]],
            View::Tables => self.tables().await.iter().map(table_row).collect(),
            View::Views => self
                .tables()
                .await
                .iter()
                .filter(|t| t.kind() == TableType::View)
                .map(view_row)
                .collect(),
            View::Columns => self.tables().await.iter().flat_map(column_rows).collect(),
            View::ElementTypes => self
                .tables()
                .await
                .iter()
                .flat_map(element_type_rows)
                .collect(),
            View::TableConstraints => self
                .tables()
                .await
                .iter()
                .flat_map(table_constraint_rows)
                .collect(),
            View::KeyColumnUsage => self
                .tables()
                .await
                .iter()
                .flat_map(key_column_rows)
                .collect(),
            View::TablePrivileges | View::RoleTableGrants => self
                .tables()
                .await
                .iter()
                .flat_map(table_privilege_rows)
                .collect(),
            View::ColumnPrivileges => self
                .tables()
                .await
                .iter()
                .flat_map(column_privilege_rows)
                .collect(),
            // Objects EddyDB does not have (yet): PostgreSQL's columns, no rows.
            View::ApplicableRoles
            | View::CheckConstraints
            | View::Parameters
            | View::ReferentialConstraints
            | View::Routines
            | View::Sequences
            | View::Triggers => vec![],
        }
    }
}

fn table_row(t: &TableEntry) -> Vec<Cell> {
    vec![
        text(&t.catalog),
        text(&t.schema),
        text(&t.name),
        text(t.table_type()),
        Cell::Null,
        Cell::Null,
        Cell::Null,
        Cell::Null,
        Cell::Null,
        yes_no(t.is_insertable()),
        text("NO"),
        Cell::Null,
    ]
}

fn view_row(t: &TableEntry) -> Vec<Cell> {
    vec![
        text(&t.catalog),
        text(&t.schema),
        text(&t.name),
        opt_text(t.provider.get_table_definition()),
        text("NONE"),
        text("NO"),
        text("NO"),
        text("NO"),
        text("NO"),
        text("NO"),
    ]
}

fn column_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    let schema = t.provider.schema();
    let primary_key = t.primary_key_columns();
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let position = i32::try_from(index + 1).unwrap_or(i32::MAX);
            let ty = ColumnType::of_field(field);
            let nullable = field.is_nullable() && !primary_key.contains(&index);
            vec![
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text(field.name()),
                Cell::Int(position),
                opt_text(t.provider.get_column_default(field.name()).map(default_sql)),
                yes_no(nullable),
                text(ty.data_type()),
                Cell::Null,
                int(ty.character_octet_length),
                int(ty.numeric_precision),
                int(ty.numeric_precision_radix),
                int(ty.numeric_scale),
                int(ty.datetime_precision),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                text(&t.catalog),
                text("pg_catalog"),
                text(ty.udt_name()),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                text(position.to_string()),
                text("NO"),
                text("NO"),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                text("NO"),
                text("NEVER"),
                Cell::Null,
                yes_no(t.is_insertable()),
            ]
        })
        .collect()
}

fn element_type_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    let schema = t.provider.schema();
    schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(index, field)| {
            let pg = pg_types::pg_type_of_field(field);
            let element = pg_types::element_type_of(&pg)?;
            let arrow_element = list_element(field.data_type())
                .map(|f| storage_type(f.data_type()).clone())
                .unwrap_or(DataType::Null);
            let ty = ColumnType::of(element, &arrow_element);
            let position = (index + 1).to_string();
            Some(vec![
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text("TABLE"),
                text(position.clone()),
                text(ty.data_type()),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                text(&t.catalog),
                text("pg_catalog"),
                text(ty.udt_name()),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                text(format!("a{position}")),
            ])
        })
        .collect()
}

fn table_constraint_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    t.key_constraints()
        .into_iter()
        .map(|(name, constraint_type, _)| {
            vec![
                text(&t.catalog),
                text(&t.schema),
                text(name),
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text(constraint_type),
                text("NO"),
                text("NO"),
                text("YES"),
                if constraint_type == "UNIQUE" {
                    text("YES")
                } else {
                    Cell::Null
                },
            ]
        })
        .collect()
}

fn key_column_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    let schema = t.provider.schema();
    let mut rows = vec![];
    for (name, _, columns) in t.key_constraints() {
        for (position, &column) in columns.iter().enumerate() {
            let Some(field) = schema.fields().get(column) else {
                continue;
            };
            rows.push(vec![
                text(&t.catalog),
                text(&t.schema),
                text(name.clone()),
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text(field.name()),
                Cell::Int(i32::try_from(position + 1).unwrap_or(i32::MAX)),
                Cell::Null,
            ]);
        }
    }
    rows
}

/// The owner holds every privilege on user relations; system relations are readable by PUBLIC.
fn table_privilege_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    let (grantee, privileges, grantable): (&str, &[&str], bool) = if t.is_system() {
        ("PUBLIC", &["SELECT"], false)
    } else {
        (
            OWNER,
            &[
                "INSERT",
                "SELECT",
                "UPDATE",
                "DELETE",
                "TRUNCATE",
                "REFERENCES",
                "TRIGGER",
            ],
            true,
        )
    };
    privileges
        .iter()
        .map(|privilege| {
            vec![
                text(OWNER),
                text(grantee),
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text(*privilege),
                yes_no(grantable),
                yes_no(*privilege == "SELECT"),
            ]
        })
        .collect()
}

fn column_privilege_rows(t: &TableEntry) -> Vec<Vec<Cell>> {
    let (grantee, privileges, grantable): (&str, &[&str], bool) = if t.is_system() {
        ("PUBLIC", &["SELECT"], false)
    } else {
        (OWNER, &["INSERT", "SELECT", "UPDATE", "REFERENCES"], true)
    };
    let schema = t.provider.schema();
    let mut rows = vec![];
    for field in schema.fields() {
        for privilege in privileges {
            rows.push(vec![
                text(OWNER),
                text(grantee),
                text(&t.catalog),
                text(&t.schema),
                text(&t.name),
                text(field.name()),
                text(*privilege),
                yes_no(grantable),
            ]);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::Fields;
    use datafusion::common::Constraints;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::catalog::pg_functions::{register_pg_functions, session_setting_functions};
    use crate::server::settings::{Settings, SharedSettings};

    async fn context() -> SessionContext {
        // A session time zone, as the engine sets one: without it DataFusion creates
        // `TIMESTAMP WITH TIME ZONE` columns without a zone.
        let config = SessionConfig::new()
            .with_default_catalog_and_schema("eddy", "public")
            .set_str("datafusion.execution.time_zone", "+00:00");
        let ctx = SessionContext::new_with_config(config);
        datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            "eddy",
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .unwrap();
        register_pg_functions(&ctx);
        let settings: SharedSettings = Arc::new(RwLock::new(Settings::new([])));
        for udf in session_setting_functions(settings) {
            ctx.register_udf(udf);
        }
        register_information_schema(&ctx, "eddy").unwrap();
        ctx.sql(
            "CREATE TABLE public.games (id BIGINT NOT NULL, name VARCHAR, \
             ts TIMESTAMP WITH TIME ZONE, score DOUBLE PRECISION)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        ctx
    }

    /// Every row rendered as text, cells joined by `|` (NULL as `NULL`).
    async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let batches = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("planning {sql}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("running {sql}: {e}"));
        let mut out = vec![];
        for batch in batches {
            let columns: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| cast(c, &DataType::Utf8).unwrap())
                .collect();
            for row in 0..batch.num_rows() {
                let cells: Vec<&str> = columns
                    .iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(row) { "NULL" } else { c.value(row) }
                    })
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out
    }

    /// Grafana's "is this schema on the search path" test (`buildSchemaConstraint` in
    /// `postgresMetaQuery.ts`), verbatim.
    const GRAFANA_IN_SEARCH_PATH: &str = "quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )";

    /// The rewrite the SQL front end applies to [`GRAFANA_IN_SEARCH_PATH`]: DataFusion cannot
    /// plan the original (see `grafana_show_tables_search_path`).
    const REWRITTEN_IN_SEARCH_PATH: &str =
        "array_has(current_schemas(false), quote_ident(table_schema))";

    /// Grafana's table list when no schema is chosen (`showTables()`).
    fn grafana_show_tables_sql() -> String {
        format!(
            "SELECT
    CASE WHEN 
          {GRAFANA_IN_SEARCH_PATH}
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS \"table\"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN 
          {GRAFANA_IN_SEARCH_PATH}
      THEN 0 ELSE 1 END, 1"
        )
    }

    /// Grafana's column list for an unqualified table (`getSchema('games')`).
    fn grafana_get_schema_unqualified_sql() -> String {
        format!(
            "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('games'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('games'))[1]
          AND quote_ident(table_name) = (parse_ident('games'))[2]
        ELSE quote_ident(table_name) = 'games'
          AND {GRAFANA_IN_SEARCH_PATH}
      END"
        )
    }

    fn rewrite_search_path(sql: &str) -> String {
        sql.replace(GRAFANA_IN_SEARCH_PATH, REWRITTEN_IN_SEARCH_PATH)
    }

    #[tokio::test]
    async fn grafana_show_schemas() {
        let ctx = context().await;
        ctx.sql("CREATE SCHEMA metrics").await.unwrap();
        let sql = "SELECT schema_name AS \"name\"
    FROM information_schema.schemata
    WHERE schema_name NOT IN ('information_schema',
                              'pg_catalog',
                              'pg_toast',
                              '_timescaledb_cache',
                              '_timescaledb_catalog',
                              '_timescaledb_internal',
                              '_timescaledb_config',
                              'timescaledb_information',
                              'timescaledb_experimental')
    ORDER BY schema_name";
        assert_eq!(rows(&ctx, sql).await, ["metrics", "public"]);
        let all = rows(
            &ctx,
            "SELECT catalog_name, schema_name, schema_owner FROM information_schema.schemata \
             ORDER BY schema_name",
        )
        .await;
        assert_eq!(
            all,
            [
                "eddy|information_schema|eddy",
                "eddy|metrics|eddy",
                "eddy|pg_catalog|eddy",
                "eddy|public|eddy"
            ]
        );
        // schema.go
        let sql = "SELECT schema_name FROM information_schema.schemata
		 WHERE schema_name NOT LIKE 'pg_%' AND schema_name != 'information_schema'
		 ORDER BY schema_name";
        assert_eq!(rows(&ctx, sql).await, ["metrics", "public"]);
    }

    #[tokio::test]
    async fn grafana_show_tables_for_schema() {
        let ctx = context().await;
        let sql = "SELECT quote_ident(table_name) AS \"table\"
      FROM information_schema.tables
      WHERE quote_ident(table_schema) = 'public'
      ORDER BY 1";
        assert_eq!(rows(&ctx, sql).await, ["games"]);
        // schema.go, with the parameter bound.
        let sql = "SELECT table_name FROM information_schema.tables
		 WHERE table_schema = 'public' AND table_type IN ('BASE TABLE', 'VIEW')
		 ORDER BY table_name";
        assert_eq!(rows(&ctx, sql).await, ["games"]);
        let sql = "SELECT table_catalog, table_schema, table_name, table_type, \
                   is_insertable_into, is_typed FROM information_schema.tables \
                   WHERE table_name IN ('games', 'pg_class', 'columns') ORDER BY table_schema";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "eddy|information_schema|columns|VIEW|NO|NO",
                "eddy|pg_catalog|pg_class|BASE TABLE|NO|NO",
                "eddy|public|games|BASE TABLE|YES|NO",
            ]
        );
    }

    #[tokio::test]
    async fn tables_appear_when_created() {
        let ctx = context().await;
        let count = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'";
        assert_eq!(rows(&ctx, count).await, ["1"]);
        ctx.sql("CREATE TABLE public.later (x INT)").await.unwrap();
        ctx.sql("CREATE VIEW public.v AS SELECT id FROM games")
            .await
            .unwrap();
        assert_eq!(rows(&ctx, count).await, ["3"]);
        let views = rows(
            &ctx,
            "SELECT table_name, check_option, is_updatable FROM information_schema.views \
             WHERE table_schema = 'public'",
        )
        .await;
        assert_eq!(views, ["v|NONE|NO"]);
    }

    #[tokio::test]
    async fn grafana_get_schema_columns() {
        let ctx = context().await;
        let sql = "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('public.games'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('public.games'))[1]
          AND quote_ident(table_name) = (parse_ident('public.games'))[2]
        ELSE quote_ident(table_name) = 'public.games'
      END";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "id|bigint",
                "name|text",
                "ts|timestamp with time zone",
                "score|double precision"
            ]
        );
        // schema.go, with the parameters bound.
        let sql = "SELECT column_name, data_type, udt_name, numeric_precision, numeric_scale
		 FROM information_schema.columns
		 WHERE table_schema = 'public' AND table_name = 'games'
		 ORDER BY ordinal_position";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "id|bigint|int8|64|0",
                "name|text|text|NULL|NULL",
                "ts|timestamp with time zone|timestamptz|NULL|NULL",
                "score|double precision|float8|53|NULL"
            ]
        );
        let sql = "SELECT ordinal_position, is_nullable, datetime_precision, \
                   character_octet_length, numeric_precision_radix, udt_schema, dtd_identifier, \
                   is_identity, is_generated, is_updatable \
                   FROM information_schema.columns WHERE table_name = 'games' \
                   ORDER BY ordinal_position";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "1|NO|NULL|NULL|2|pg_catalog|1|NO|NEVER|YES",
                "2|YES|NULL|1073741824|NULL|pg_catalog|2|NO|NEVER|YES",
                "3|YES|6|NULL|NULL|pg_catalog|3|NO|NEVER|YES",
                "4|YES|NULL|NULL|2|pg_catalog|4|NO|NEVER|YES",
            ]
        );
    }

    /// Grafana's table list when no schema is chosen (section 1c `showTables`).
    ///
    /// Verbatim it cannot plan in DataFusion 55: the scalar `string_to_array(..) s` in FROM is
    /// looked up as a table function, `generate_series(..) as i` names its column `value` (not
    /// `i`), and IN-subqueries are rejected inside a projection's CASE and in ORDER BY. With
    /// the search-path test rewritten to `array_has(current_schemas(false), ..)` it runs.
    #[tokio::test]
    async fn grafana_show_tables_search_path() {
        let ctx = context().await;
        let verbatim = grafana_show_tables_sql();
        assert!(
            ctx.sql(&verbatim).await.is_err(),
            "DataFusion now plans Grafana's search_path subquery: the rewrite can go"
        );
        let sql = rewrite_search_path(&verbatim);
        assert_ne!(sql, verbatim);
        assert_eq!(rows(&ctx, &sql).await, ["games"]);
        ctx.sql("CREATE SCHEMA metrics").await.unwrap();
        ctx.sql("CREATE TABLE metrics.cpu (x INT)").await.unwrap();
        assert_eq!(rows(&ctx, &sql).await, ["games", "metrics.cpu"]);

        let settings: SharedSettings = Arc::new(RwLock::new(Settings::new([])));
        settings
            .write()
            .unwrap()
            .set("search_path", "metrics, public")
            .unwrap();
        for udf in session_setting_functions(settings) {
            ctx.register_udf(udf);
        }
        assert_eq!(rows(&ctx, &sql).await, ["cpu", "games"]);

        let sql = rewrite_search_path(&grafana_get_schema_unqualified_sql());
        assert_eq!(
            rows(&ctx, &sql).await,
            [
                "id|bigint",
                "name|text",
                "ts|timestamp with time zone",
                "score|double precision"
            ]
        );
    }

    #[tokio::test]
    async fn constraints_and_types_from_providers() {
        let ctx = context().await;
        let schema = Arc::new(Schema::new(Fields::from(vec![
            Field::new("k", DataType::Int32, false),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
            Field::new("doc", DataType::Utf8, true)
                .with_metadata(pg_types::pg_type_metadata("jsonb")),
        ])));
        let table = MemTable::try_new(schema, vec![vec![]])
            .unwrap()
            .with_constraints(Constraints::new_unverified(vec![
                Constraint::PrimaryKey(vec![0]),
                Constraint::Unique(vec![1, 3]),
            ]));
        ctx.register_table("public.orders", Arc::new(table))
            .unwrap();
        let sql = "SELECT column_name, data_type, udt_name, numeric_precision, \
                   numeric_precision_radix, numeric_scale, is_nullable \
                   FROM information_schema.columns WHERE table_name = 'orders' \
                   ORDER BY ordinal_position";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "k|integer|int4|32|2|0|NO",
                "amount|numeric|numeric|10|10|2|YES",
                "tags|ARRAY|_text|NULL|NULL|NULL|YES",
                "doc|jsonb|jsonb|NULL|NULL|NULL|YES",
            ]
        );
        let sql = "SELECT constraint_name, constraint_type, table_name, enforced \
                   FROM information_schema.table_constraints ORDER BY constraint_name";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "orders_amount_doc_key|UNIQUE|orders|YES",
                "orders_pkey|PRIMARY KEY|orders|YES"
            ]
        );
        let sql = "SELECT constraint_name, column_name, ordinal_position \
                   FROM information_schema.key_column_usage \
                   ORDER BY constraint_name, ordinal_position";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "orders_amount_doc_key|amount|1",
                "orders_amount_doc_key|doc|2",
                "orders_pkey|k|1"
            ]
        );
        let sql = "SELECT object_name, collection_type_identifier, data_type, udt_name, \
                   dtd_identifier FROM information_schema.element_types \
                   WHERE object_schema = 'public'";
        assert_eq!(rows(&ctx, sql).await, ["orders|3|text|text|a3"]);
    }

    #[tokio::test]
    async fn every_view_answers() {
        let ctx = context().await;
        for view in View::ALL {
            let sql = format!("SELECT * FROM information_schema.{}", view.name());
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let schema = view.schema();
            for batch in &batches {
                assert_eq!(batch.schema(), schema, "{sql}");
            }
        }
        let sql = "SELECT privilege_type FROM information_schema.table_privileges \
                   WHERE table_name = 'games' ORDER BY 1";
        assert_eq!(
            rows(&ctx, sql).await,
            [
                "DELETE",
                "INSERT",
                "REFERENCES",
                "SELECT",
                "TRIGGER",
                "TRUNCATE",
                "UPDATE"
            ]
        );
        let sql = "SELECT count(*) FROM information_schema.column_privileges \
                   WHERE table_name = 'games'";
        assert_eq!(rows(&ctx, sql).await, ["16"]);
        assert_eq!(
            rows(
                &ctx,
                "SELECT role_name FROM information_schema.enabled_roles"
            )
            .await,
            ["eddy"]
        );
        assert_eq!(
            rows(
                &ctx,
                "SELECT character_set_name FROM information_schema.character_sets"
            )
            .await,
            ["UTF8"]
        );
        assert_eq!(
            rows(&ctx, "SELECT count(*) FROM information_schema.routines").await,
            ["0"]
        );
    }
}
