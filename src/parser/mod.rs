//! SQL text to statements.
//!
//! The query string is parsed once with sqlparser's PostgreSQL dialect (the parser DataFusion
//! itself uses). Session and transaction commands (`SET`, `SHOW`, `RESET`, `BEGIN`, ...) become
//! [`Statement`] variants the server executes itself; everything else is handed to DataFusion
//! after PostgreSQL-compatibility rewrites: the rules of `datafusion-pg-catalog` (strip
//! `pg_catalog.` qualifiers, `OPERATOR(pg_catalog.~)`, `COLLATE`, `'x'::regclass`, `= ANY(..)`,
//! ...) and EddyDB's own for types Arrow lacks (`json`, `jsonb`, `uuid` are stored as text).
//! A string with no statements (empty, `;`, or only comments such as Grafana's `-- ping`)
//! parses to an empty list, which the server answers with EmptyQueryResponse.

pub mod extensions;

use std::ops::ControlFlow;
use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast::{
    self, DataType as SqlType, Expr, ObjectName, Set, ShowStatementFilter, Value, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use crate::catalog::pg_types::{hex_digits, parse_bytea};
use crate::error::{Error, Result};
use crate::ingest::CopyFormat;
use crate::storage::RelationKind;

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Planned and executed by DataFusion: queries, DML, DDL.
    DataFusion(Box<ast::Statement>),
    /// `SET name = value` / `SET name TO value` / `SET TIME ZONE ...`; `value` None means DEFAULT.
    Set {
        name: String,
        value: Option<String>,
        local: bool,
    },
    /// `RESET name`; None is `RESET ALL`.
    Reset(Option<String>),
    /// `SHOW name`; None is `SHOW ALL`.
    Show(Option<String>),
    /// `BEGIN` / `START TRANSACTION`, with the isolation level asked for, if any.
    Begin { isolation: Option<String> },
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`.
    ReleaseSavepoint(String),
    /// `ROLLBACK TO [SAVEPOINT] name`.
    RollbackToSavepoint(String),
    /// `SET TRANSACTION ...` / `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    SetTransaction { isolation: Option<String> },
    /// `CREATE STREAM ...` ([`extensions`]).
    CreateStream(extensions::CreateStream),
    /// `DROP STREAM [IF EXISTS] name, ...`.
    DropStream {
        names: Vec<ObjectName>,
        if_exists: bool,
    },
    /// `SHOW STREAMS` / `SHOW TABLES`.
    ShowRelations(RelationKind),
    /// `ALTER STREAM name SET (k = v, ...)` / `RESET (k, ...)`.
    AlterStream {
        name: ObjectName,
        set: Vec<(String, String)>,
        reset: Vec<String>,
    },
    /// `COPY table [(columns)] FROM STDIN [WITH (...)]`.
    CopyFrom {
        table: ObjectName,
        columns: Vec<String>,
        format: CopyFormat,
    },
    /// `COPY table [(columns)] TO STDOUT` / `COPY (query) TO STDOUT`, as the query to run.
    CopyTo {
        query: Box<ast::Statement>,
        format: CopyFormat,
    },
    /// `CREATE MATERIALIZED VIEW ...`.
    CreateView(extensions::CreateView),
    /// `EXPLAIN CREATE MATERIALIZED VIEW ...`: the streaming plan, without creating.
    ExplainCreateView(extensions::CreateView),
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name, ...`.
    DropView {
        names: Vec<ObjectName>,
        if_exists: bool,
    },
    /// `SHOW MATERIALIZED VIEWS`.
    ShowViews,
    /// `EXPLAIN MATERIALIZED VIEW name`.
    ExplainView(ObjectName),
    /// `SUBSCRIBE ...` / `COPY (SUBSCRIBE ...) TO STDOUT`.
    Subscribe(extensions::Subscribe),
    /// `DECLARE name CURSOR FOR SUBSCRIBE ...`.
    DeclareSubscribe {
        cursor: String,
        subscribe: extensions::Subscribe,
    },
    /// `FETCH [n | ALL] [FROM] cursor [WITH (timeout = ...)]`; count None is ALL.
    Fetch {
        cursor: String,
        count: Option<usize>,
        timeout: Option<std::time::Duration>,
    },
    /// `CLOSE cursor`.
    CloseCursor(String),
    /// `CHECKPOINT`: checkpoint every materialized view now.
    Checkpoint,
    /// `CREATE [OR REPLACE] MODEL ...`.
    CreateModel(extensions::CreateModel),
    /// `RETRAIN MODEL name [AS query] [WITH (...)]`.
    RetrainModel(extensions::RetrainModel),
    /// `DROP MODEL [IF EXISTS] name, ...`.
    DropModel {
        names: Vec<ObjectName>,
        if_exists: bool,
    },
    /// `SHOW MODELS`.
    ShowModels,
    /// `SHOW MODEL VERSIONS name`.
    ShowModelVersions(ObjectName),
    /// `DESCRIBE MODEL name`.
    DescribeModel(ObjectName),
    /// `ALTER MODEL name ...`.
    AlterModel {
        name: ObjectName,
        action: extensions::AlterModel,
    },
    /// `CREATE MODEL MONITOR ...`.
    CreateMonitor(extensions::CreateMonitor),
    /// `DROP MODEL MONITOR [IF EXISTS] name, ...`.
    DropMonitor {
        names: Vec<ObjectName>,
        if_exists: bool,
    },
    /// `SHOW MODEL MONITORS`.
    ShowMonitors,
    /// `CREATE SINK ... FROM relation WITH (...)`.
    CreateSink(extensions::CreateSink),
    /// `DROP SINK [IF EXISTS] name, ...`.
    DropSink {
        names: Vec<ObjectName>,
        if_exists: bool,
    },
    /// `SHOW SINKS`.
    ShowSinks,
    /// Accepted and ignored, answered with `tag` (`SET TRANSACTION ...`, `DISCARD ALL`,
    /// `CLOSE ALL`, `DEALLOCATE ALL`, `SET SESSION CHARACTERISTICS ...`).
    NoOp { tag: &'static str },
}

static PG_COMPAT: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Parse a query string into statements; comments and empty statements vanish.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let rewritten = extensions::rewrite_sql(sql)?;
    let sql = rewritten.as_deref().unwrap_or(sql);
    if let Some(pieces) = extensions::split(sql)? {
        let mut statements = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match piece {
                extensions::Piece::Ours(statement) => statements.push(statement),
                extensions::Piece::Sql(text) => statements.extend(parse_standard(text)?),
            }
        }
        return Ok(statements);
    }
    parse_standard(sql)
}

/// Parse statements sqlparser knows, with the PostgreSQL-compatibility rewrites.
fn parse_standard(sql: &str) -> Result<Vec<Statement>> {
    // datafusion-pg-catalog substitutes whole queries DataFusion cannot run with results of the
    // same shape (psql's `\d` probes of policies, extended statistics and publications, all
    // empty), then applies its rewrites. Grafana's table listing is the exception: its
    // substitution would drop the search_path test, so such queries are parsed here and only
    // get the rewrites, after `SearchPathMembership`.
    let sql = with_plannable_fragments(sql);
    let sql = regproc_literals_as_names(&sql);
    let statements = if sql.contains(SEARCH_PATH_SETTING) {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut p| p.parse_statements())
            .map(|statements| {
                statements
                    .into_iter()
                    .map(|mut statement| {
                        let _ = statement.visit(&mut SearchPathMembership);
                        PG_COMPAT.rewrite(statement)
                    })
                    .collect()
            })
    } else {
        PG_COMPAT.parse(&sql)
    };
    let statements: Vec<ast::Statement> = match statements {
        Ok(s) => s,
        // sqlparser does not know PostgreSQL's ABORT, a synonym of ROLLBACK.
        Err(e) => return abort_as_rollback(&sql).ok_or(Error::Parse(e)),
    };
    statements
        .into_iter()
        .map(|mut statement| {
            let _ = statement.visit(&mut QualifyOwnPgCatalogTables);
            classify(statement)
        })
        .collect()
}

/// `pg_catalog` tables EddyDB computes itself (see [`crate::catalog::activity`]).
const OWN_PG_CATALOG_TABLES: &[&str] = &["pg_stat_activity"];

/// PostgreSQL looks in `pg_catalog` first, so `pg_stat_activity` unqualified is
/// `pg_catalog.pg_stat_activity`; datafusion-pg-catalog qualifies its own tables the same way.
struct QualifyOwnPgCatalogTables;

impl VisitorMut for QualifyOwnPgCatalogTables {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
        if let ast::TableFactor::Table {
            name, args: None, ..
        } = factor
            && let [ast::ObjectNamePart::Identifier(ident)] = name.0.as_slice()
            && OWN_PG_CATALOG_TABLES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&ident.value))
        {
            *name = ast::ObjectName(vec![
                ast::ObjectNamePart::Identifier(ast::Ident::new("pg_catalog")),
                ast::ObjectNamePart::Identifier(ident.clone()),
            ]);
        }
        ControlFlow::Continue(())
    }
}

/// How clients read the search path in SQL.
const SEARCH_PATH_SETTING: &str = "current_setting('search_path')";

/// Grafana asks whether a schema is on the search path with
/// `x IN (SELECT CASE WHEN trim(s[i]) = '"$user"' ... FROM generate_series(..) AS i,
/// string_to_array(current_setting('search_path'), ',') s)`, in its select list and its ORDER BY,
/// where DataFusion cannot plan a subquery. The membership test becomes
/// `array_has(current_schemas(false), x)`: the same schemas, as the session's search_path lists
/// them.
struct SearchPathMembership;

impl VisitorMut for SearchPathMembership {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::InSubquery {
            expr: member,
            subquery,
            negated,
        } = expr
            && is_search_path_listing(subquery)
        {
            let member = std::mem::replace(member.as_mut(), Expr::value(Value::Null));
            let schemas =
                function_call("current_schemas", vec![Expr::value(Value::Boolean(false))]);
            let test = function_call("array_has", vec![schemas, member]);
            *expr = if *negated {
                Expr::UnaryOp {
                    op: ast::UnaryOperator::Not,
                    expr: Box::new(test),
                }
            } else {
                test
            };
        }
        ControlFlow::Continue(())
    }
}

/// Whether a subquery lists the schemas of the search path the way Grafana does: splitting
/// `current_setting('search_path')` with `string_to_array` and walking it with `generate_series`.
fn is_search_path_listing(subquery: &ast::Query) -> bool {
    let text = subquery.to_string();
    [SEARCH_PATH_SETTING, "string_to_array", "generate_series"]
        .iter()
        .all(|part| text.contains(part))
}

/// The expression `name(args...)`.
fn function_call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(ast::Function {
        name: ObjectName::from(vec![ast::Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: ast::FunctionArguments::None,
        args: ast::FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|arg| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(arg)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

/// Fragments of client catalog queries that DataFusion cannot plan, each with an equivalent it
/// can: (fragment, replacement). Whole-query substitutions are datafusion-pg-catalog's.
const CLIENT_QUERY_FRAGMENTS: &[(&str, &str)] = &[
    // psql's `\d+` appends the options of a table's TOAST table through a correlated
    // `array(select .. from unnest(tc.reloptions))`, which DataFusion cannot decorrelate. EddyDB
    // has no TOAST tables and no storage options (pg_class has no `reloptions`): a NULL array.
    (
        "c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x)",
        "CAST(NULL AS TEXT[])",
    ),
    // pgjdbc's `DatabaseMetaData.getTypeInfo` and psql's `\dT` keep composite types with a
    // correlated scalar subquery DataFusion plans only when aggregated. `pg_class.oid` is unique,
    // so `bool_or` over the at most one row gives the same answer (NULL when there is none).
    (
        "(SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)",
        "(SELECT bool_or(c.relkind = 'c') FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid)",
    ),
];

/// `sql` with every [`CLIENT_QUERY_FRAGMENTS`] fragment replaced.
fn with_plannable_fragments(sql: &str) -> std::borrow::Cow<'_, str> {
    let mut sql = std::borrow::Cow::Borrowed(sql);
    for (fragment, replacement) in CLIENT_QUERY_FRAGMENTS {
        if sql.contains(fragment) {
            sql = std::borrow::Cow::Owned(sql.replace(fragment, replacement));
        }
    }
    sql
}

/// Columns of `pg_type` that are `regproc` in PostgreSQL; `datafusion-pg-catalog` holds the
/// function's name in them as text.
const PG_TYPE_REGPROC_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
];

/// pgjdbc's type lookup asks `typinput='pg_catalog.array_in'::regproc`. The regproc cast would
/// become an OID, which DataFusion then compares by casting the text column to an integer (and
/// fails); since the column holds names, compare it with the bare name instead:
/// `<pg_type regproc column> = '[pg_catalog.]name'::[pg_catalog.]regproc` becomes `... = 'name'`.
fn regproc_literals_as_names(sql: &str) -> std::borrow::Cow<'_, str> {
    let lower = sql.to_ascii_lowercase();
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("::") {
        let cast = from + found;
        from = cast + 2;
        let after = &lower[cast + 2..];
        let after = after.strip_prefix("pg_catalog.").unwrap_or(after);
        let Some(tail) = after.strip_prefix("regproc") else {
            continue;
        };
        if tail.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let end = lower.len() - tail.len();
        // The literal just before `::`.
        let Some(literal) = lower[..cast].strip_suffix('\'') else {
            continue;
        };
        let Some(open) = literal.rfind('\'') else {
            continue;
        };
        // The column compared with it: `column =` (qualified or not) before the literal.
        let before = lower[..open].trim_end();
        let Some(before) = before.strip_suffix('=') else {
            continue;
        };
        let before = before.trim_end();
        let column_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        if !PG_TYPE_REGPROC_COLUMNS.contains(&&before[column_start..]) || open < copied {
            continue;
        }
        let name = &sql[open + 1..cast - 1];
        let name = match name.get(..11) {
            Some(prefix) if prefix.eq_ignore_ascii_case("pg_catalog.") => &name[11..],
            _ => name,
        };
        out.push_str(&sql[copied..open]);
        out.push('\'');
        out.push_str(name);
        out.push('\'');
        copied = end;
        from = end;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    std::borrow::Cow::Owned(out)
}

fn abort_as_rollback(sql: &str) -> Option<Vec<Statement>> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["abort"] | ["abort", "work"] | ["abort", "transaction"] => Some(vec![Statement::Rollback]),
        _ => None,
    }
}

fn classify(stmt: ast::Statement) -> Result<Statement> {
    use ast::Statement as S;
    Ok(match stmt {
        S::Set(set) => classify_set(set)?,
        S::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            if name.eq_ignore_ascii_case("all") {
                Statement::Show(None)
            } else {
                Statement::Show(Some(name))
            }
        }
        S::ShowVariables { filter: None, .. } => Statement::Show(None),
        S::ShowVariables {
            filter: Some(ShowStatementFilter::Like(name)),
            ..
        } => Statement::Show(Some(name)),
        S::Reset(reset) => match reset.reset {
            ast::Reset::ALL => Statement::Reset(None),
            ast::Reset::ConfigurationParameter(name) => Statement::Reset(Some(object_name(&name))),
        },
        S::StartTransaction { modes, .. } => Statement::Begin {
            isolation: isolation_of(&modes),
        },
        S::Commit { .. } => Statement::Commit,
        S::Rollback {
            savepoint: None, ..
        } => Statement::Rollback,
        S::Rollback {
            savepoint: Some(name),
            ..
        } => Statement::RollbackToSavepoint(normalize_ident(&name)),
        S::Savepoint { name } => Statement::Savepoint(normalize_ident(&name)),
        S::ReleaseSavepoint { name } => Statement::ReleaseSavepoint(normalize_ident(&name)),
        S::Discard { .. } => Statement::NoOp { tag: "DISCARD ALL" },
        S::Close {
            cursor: ast::CloseCursor::All,
        } => Statement::NoOp {
            tag: "CLOSE CURSOR ALL",
        },
        S::Deallocate { .. } => Statement::NoOp {
            tag: "DEALLOCATE ALL",
        },
        S::ShowTables { .. } => Statement::ShowRelations(RelationKind::Table),
        S::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            values: _,
        } => classify_copy(source, to, target, &options, &legacy_options)?,
        other => Statement::DataFusion(Box::new(rewrite_types(other)?)),
    })
}

fn classify_copy(
    source: ast::CopySource,
    to: bool,
    target: ast::CopyTarget,
    options: &[ast::CopyOption],
    legacy_options: &[ast::CopyLegacyOption],
) -> Result<Statement> {
    let format = CopyFormat::from_options(options, legacy_options)?;
    match (to, target, source) {
        (
            false,
            ast::CopyTarget::Stdin,
            ast::CopySource::Table {
                table_name,
                columns,
            },
        ) => Ok(Statement::CopyFrom {
            table: table_name,
            columns: columns.iter().map(normalize_ident).collect(),
            format,
        }),
        (false, ast::CopyTarget::Stdin, ast::CopySource::Query(_)) => Err(Error::Parse(
            datafusion::sql::sqlparser::parser::ParserError::ParserError(
                "COPY FROM needs a table, not a query".to_string(),
            ),
        )),
        (true, ast::CopyTarget::Stdout, source) => {
            let query = match source {
                ast::CopySource::Query(query) => ast::Statement::Query(query),
                ast::CopySource::Table {
                    table_name,
                    columns,
                } => {
                    let list = if columns.is_empty() {
                        "*".to_string()
                    } else {
                        columns
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let sql = format!("SELECT {list} FROM {table_name}");
                    let mut parsed = parse_standard(&sql)?;
                    match parsed.pop() {
                        Some(Statement::DataFusion(statement)) => *statement,
                        _ => return Err(Error::Internal(format!("COPY TO as \"{sql}\""))),
                    }
                }
            };
            Ok(Statement::CopyTo {
                query: Box::new(rewrite_types(query)?),
                format,
            })
        }
        (_, target, _) => Err(Error::Unsupported(format!(
            "COPY {} {target} (the server reads and writes no files; use STDIN/STDOUT, psql's \\copy)",
            if to { "TO" } else { "FROM" }
        ))),
    }
}

fn classify_set(set: Set) -> Result<Statement> {
    Ok(match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => {
            let name = object_name(&variable);
            let value = set_value(&values)?;
            let local = matches!(scope, Some(ast::ContextModifier::Local));
            Statement::Set { name, value, local }
        }
        Set::SetTimeZone { local, value } => Statement::Set {
            name: "TimeZone".to_string(),
            value: set_value(std::slice::from_ref(&value))?,
            local,
        },
        Set::SetNames { charset_name, .. } => Statement::Set {
            name: "client_encoding".to_string(),
            value: Some(charset_name.value),
            local: false,
        },
        Set::SetNamesDefault {} => Statement::Set {
            name: "client_encoding".to_string(),
            value: None,
            local: false,
        },
        Set::SetTransaction { modes, .. } => Statement::SetTransaction {
            isolation: isolation_of(&modes),
        },
        Set::SetSessionAuthorization(param) => Statement::Set {
            name: "session_authorization".to_string(),
            value: Some(param.to_string().trim_matches('\'').to_string()),
            local: false,
        },
        other => {
            return Err(Error::Unsupported(format!("\"{other}\"")));
        }
    })
}

fn isolation_of(modes: &[ast::TransactionMode]) -> Option<String> {
    modes.iter().find_map(|m| match m {
        ast::TransactionMode::IsolationLevel(level) => Some(level.to_string().to_ascii_lowercase()),
        _ => None,
    })
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => ident.value.clone(),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The text of a SET value as PostgreSQL stores it; `DEFAULT` is None.
fn set_value(values: &[Expr]) -> Result<Option<String>> {
    let mut parts = Vec::with_capacity(values.len());
    for value in values {
        let text = match value {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s)
                | Value::DoubleQuotedString(s)
                | Value::EscapedStringLiteral(s) => s.clone(),
                Value::Number(n, _) => n.to_string(),
                Value::Boolean(b) => if *b { "on" } else { "off" }.to_string(),
                Value::Null => "".to_string(),
                other => other.to_string(),
            },
            Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case("default") => {
                return Ok(None);
            }
            Expr::Identifier(ident) => match ident.quote_style {
                Some(q) if ident.value.starts_with('$') => format!("{q}{}{q}", ident.value),
                _ => ident.value.clone(),
            },
            Expr::UnaryOp {
                op: ast::UnaryOperator::Minus,
                expr,
            } => format!("-{expr}"),
            Expr::Interval(_) => value.to_string(),
            other => other.to_string(),
        };
        parts.push(text);
    }
    Ok(Some(parts.join(", ")))
}

/// EddyDB's type rewrites.
pub(crate) fn rewrite_types(mut stmt: ast::Statement) -> Result<ast::Statement> {
    match stmt.visit(&mut TypeRewrites) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(stmt),
    }
}

/// Casts whose PostgreSQL meaning differs from DataFusion's:
/// - types Arrow stores as text (json, jsonb, uuid): `x::jsonb` becomes the function-call form
///   `jsonb(x)`, which checks the input and types the result (column definitions keep the
///   declared type; the planner records it as field metadata);
/// - `'\x0102'::bytea` reads the literal in PostgreSQL's bytea input format, where DataFusion
///   would take its characters as the bytes.
struct TypeRewrites;

impl VisitorMut for TypeRewrites {
    type Break = Error;

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Error> {
        let Expr::Cast {
            data_type,
            expr: inner,
            ..
        } = expr
        else {
            return ControlFlow::Continue(());
        };
        if matches!(data_type, SqlType::Bytea)
            && let Err(e) = read_as_bytea(inner)
        {
            return ControlFlow::Break(e);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Error> {
        if let Expr::Cast {
            data_type,
            expr: inner,
            ..
        } = expr
            && let Some(name) = text_backed_type_name(data_type)
        {
            let argument = std::mem::replace(inner.as_mut(), Expr::value(Value::Null));
            *expr = function_call(name, vec![argument]);
        }
        ControlFlow::Continue(())
    }
}

/// An identifier as PostgreSQL folds it: unquoted names are lowercased, quoted ones kept.
pub fn normalize_ident(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// A string literal destined for a bytea value, read in PostgreSQL's bytea input format (`\\x0102`
/// or escapes) and replaced by the hex literal of those bytes; any other expression is left as is.
pub fn read_as_bytea(expr: &mut Expr) -> Result<()> {
    if let Expr::Value(literal) = expr
        && let Value::SingleQuotedString(text) | Value::EscapedStringLiteral(text) = &literal.value
    {
        let bytes = parse_bytea(text).ok_or_else(|| {
            Error::InvalidTextRepresentation(format!(
                "invalid input syntax for type bytea: \"{text}\""
            ))
        })?;
        literal.value = Value::HexStringLiteral(hex_digits(&bytes));
    }
    Ok(())
}

/// The PostgreSQL name of a type EddyDB stores as text with metadata, if `t` is one.
pub fn text_backed_type_name(t: &SqlType) -> Option<&'static str> {
    match t {
        SqlType::JSON => Some("json"),
        SqlType::JSONB => Some("jsonb"),
        SqlType::Uuid => Some("uuid"),
        SqlType::Custom(name, _) => {
            let last = name.0.last()?.as_ident()?.value.to_ascii_lowercase();
            match last.as_str() {
                "json" => Some("json"),
                "jsonb" => Some("jsonb"),
                "uuid" => Some("uuid"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The value of `WITH` option `name` (the last one, if given twice).
pub fn last_option<'a>(options: &'a [(String, String)], name: &str) -> Option<&'a str> {
    options
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_semicolons_are_empty() {
        assert!(parse("-- ping").unwrap().is_empty());
        assert!(parse("/* x */").unwrap().is_empty());
        assert!(parse(" ; ;").unwrap().is_empty());
    }

    #[test]
    fn session_commands() {
        let got = parse(
            "SET extra_float_digits = 3; SET application_name = 'PostgreSQL JDBC Driver'; \
             SET TIME ZONE 'UTC'; SET search_path TO \"$user\", public; SHOW ALL; \
             SHOW TRANSACTION ISOLATION LEVEL; RESET ALL; SET x.y TO DEFAULT",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Statement::Set {
                    name: "extra_float_digits".into(),
                    value: Some("3".into()),
                    local: false
                },
                Statement::Set {
                    name: "application_name".into(),
                    value: Some("PostgreSQL JDBC Driver".into()),
                    local: false
                },
                Statement::Set {
                    name: "TimeZone".into(),
                    value: Some("UTC".into()),
                    local: false
                },
                Statement::Set {
                    name: "search_path".into(),
                    value: Some("\"$user\", public".into()),
                    local: false
                },
                Statement::Show(None),
                Statement::Show(Some("TRANSACTION ISOLATION LEVEL".into())),
                Statement::Reset(None),
                Statement::Set {
                    name: "x.y".into(),
                    value: None,
                    local: false
                },
            ]
        );
    }

    #[test]
    fn transactions() {
        let got = parse(
            "BEGIN; START TRANSACTION; SAVEPOINT \"_pg3_1\"; RELEASE \"_pg3_1\"; \
             ROLLBACK TO SAVEPOINT a; COMMIT; ROLLBACK",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Statement::Begin { isolation: None },
                Statement::Begin { isolation: None },
                Statement::Savepoint("_pg3_1".into()),
                Statement::ReleaseSavepoint("_pg3_1".into()),
                Statement::RollbackToSavepoint("a".into()),
                Statement::Commit,
                Statement::Rollback,
            ]
        );
        assert_eq!(parse("ABORT").unwrap(), vec![Statement::Rollback]);
    }

    #[test]
    fn syntax_errors_are_parse_errors() {
        let err = parse("SELEC 1").unwrap_err();
        assert_eq!(err.sqlstate(), "42601");
    }

    #[test]
    fn text_backed_casts_become_function_calls() {
        let got = parse("SELECT '{}'::jsonb, CAST(x AS uuid), y::json::text").unwrap();
        let Statement::DataFusion(stmt) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            stmt.to_string(),
            "SELECT jsonb('{}'), uuid(x), json(y)::TEXT"
        );
    }

    #[test]
    fn regproc_literals_compared_with_pg_type_columns_become_names() {
        let pgjdbc = "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typname \
                      FROM pg_catalog.pg_type WHERE pg_type.oid = $1";
        assert_eq!(
            regproc_literals_as_names(pgjdbc),
            "SELECT typinput='array_in' as is_array, typname \
             FROM pg_catalog.pg_type WHERE pg_type.oid = $1"
        );
        assert_eq!(
            regproc_literals_as_names("SELECT 1 WHERE t.typoutput = 'x'::pg_catalog.regproc"),
            "SELECT 1 WHERE t.typoutput = 'x'"
        );
        // Multi-byte characters around the comparison are no trouble.
        assert_eq!(
            regproc_literals_as_names("SELECT é='x'::regproc, typinput ='é'::regproc"),
            "SELECT é='x'::regproc, typinput ='é'"
        );
        // Other operands keep the cast (an OID, as in PostgreSQL).
        let oid = "SELECT 'array_in'::regproc, p.oid = 'f'::regproc, x::regprocedure";
        assert_eq!(regproc_literals_as_names(oid), oid);
        assert!(parse(pgjdbc).is_ok());
    }
}
