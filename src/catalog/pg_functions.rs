//! PostgreSQL functions that clients call and that neither DataFusion nor
//! `datafusion-pg-catalog` provide.
//!
//! Why: psql (`\d+`, `\df`, `\l+`), JDBC/DBeaver, SQLAlchemy, psycopg 3 and Grafana send catalog
//! and session queries that name these functions (see `shared/conformance/postgres-clients.md`).
//! A missing function is a hard error for the client, so each one answers the way PostgreSQL
//! does, or with the answer PostgreSQL gives for an object without comments, sizes or
//! definitions (`NULL` descriptions, `0` sizes, empty definitions).
//!
//! How data flows: [`register_pg_functions`] registers the session-independent functions on a
//! `SessionContext` (replacing DataFusion's own `version()`); [`session_setting_functions`]
//! builds `current_setting` / `set_config` bound to one session's
//! [`SharedSettings`], which the session registers on its own state so `SET` and
//! `set_config` see the same values. Every function is a [`ScalarUDFImpl`] that accepts scalar
//! or array arguments and, like PostgreSQL's strict functions, returns NULL for a NULL input.
//! Each function is also registered under the alias `pg_catalog.<name>`, so a qualified call
//! plans even when no SQL rewrite has stripped the qualifier.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Datelike, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Builder, Int64Array, ListBuilder, StringBuilder,
};
use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::arrow::compute::{cast, is_null, nullif, or};
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Field, FieldRef, Float64Type, Int64Type, IntervalDayTimeType,
    IntervalMonthDayNanoType, IntervalUnit, IntervalYearMonthType, TimeUnit,
};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use pgwire::api::Type;

use crate::catalog::pg_types;
use crate::server::settings::SharedSettings;

/// Register every session-independent PostgreSQL function on `ctx`.
///
/// `version()` replaces DataFusion's built-in of the same name. `current_setting` and
/// `set_config` are not included: they belong to a session, see [`session_setting_functions`].
pub fn register_pg_functions(ctx: &SessionContext) {
    for udf in pg_functions() {
        ctx.register_udf(udf);
    }
}

/// The session-independent functions, for callers that build a `SessionState` themselves.
pub fn pg_functions() -> Vec<ScalarUDF> {
    let null_text = ScalarValue::Utf8(None);
    let empty_text = ScalarValue::Utf8(Some(String::new()));
    let zero_bigint = ScalarValue::Int64(Some(0));

    vec![
        // Identity and server state.
        constant(
            "version",
            vec![0],
            ScalarValue::Utf8(Some(version_string())),
        ),
        constant(
            "pg_is_in_recovery",
            vec![0],
            ScalarValue::Boolean(Some(false)),
        ),
        constant(
            "pg_jit_available",
            vec![0],
            ScalarValue::Boolean(Some(false)),
        ),
        // No TCP port is known to a query; PostgreSQL also answers NULL over a Unix socket.
        constant("inet_server_port", vec![0], ScalarValue::Int32(None)),
        constant(
            "pg_postmaster_start_time",
            vec![0],
            ScalarValue::TimestampMicrosecond(Some(process_start_micros()), Some("+00:00".into())),
        ),
        // Comments: EddyDB has no COMMENT ON yet, so every description is NULL.
        constant("obj_description", vec![1, 2], null_text.clone()),
        constant("col_description", vec![2], null_text.clone()),
        constant("shobj_description", vec![2], null_text.clone()),
        // Function metadata (`\df`): pg_proc holds only built-ins, whose signatures we do not
        // render; an empty string keeps psql's output tidy.
        constant("pg_get_function_result", vec![1], empty_text.clone()),
        constant("pg_get_function_arguments", vec![1], empty_text.clone()),
        constant(
            "pg_get_function_identity_arguments",
            vec![1],
            empty_text.clone(),
        ),
        constant(
            "pg_function_is_visible",
            vec![1],
            ScalarValue::Boolean(Some(true)),
        ),
        // Every type is usable by everyone, as PostgreSQL grants USAGE on types to PUBLIC
        // (pgjdbc's `DatabaseMetaData.getTypeInfo` filters on it).
        constant(
            "has_type_privilege",
            vec![2, 3],
            ScalarValue::Boolean(Some(true)),
        ),
        // Definitions of objects EddyDB does not keep as SQL text.
        constant("pg_get_viewdef", vec![1, 2], null_text),
        constant("pg_get_indexdef", vec![1, 3], empty_text.clone()),
        constant("pg_get_triggerdef", vec![1, 2], empty_text.clone()),
        constant("pg_get_ruledef", vec![1, 2], empty_text.clone()),
        constant("pg_tablespace_location", vec![1], empty_text),
        // Sizes: storage accounting is not exposed yet, so every relation reports 0 bytes.
        constant("pg_table_size", vec![1], zero_bigint.clone()),
        constant("pg_indexes_size", vec![1], zero_bigint.clone()),
        constant("pg_database_size", vec![1], zero_bigint),
        ScalarUDF::from(TransactionId::new("txid_current")),
        ScalarUDF::from(TransactionId::new("pg_current_xact_id")),
        ScalarUDF::from(ToRegtype::new()),
        ScalarUDF::from(PgSizePretty::new()),
        ScalarUDF::from(TimeBucket::new()),
        ScalarUDF::from(PgTypeof::new()),
        ScalarUDF::from(TextBackedCast::new(Type::JSON)),
        ScalarUDF::from(TextBackedCast::new(Type::JSONB)),
        ScalarUDF::from(TextBackedCast::new(Type::UUID)),
    ]
}

/// `pg_typeof(x)`: the PostgreSQL type of its argument, by the same mapping the wire uses.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    aliases: Vec<String>,
    signature: Signature,
}

impl PgTypeof {
    fn new() -> Self {
        Self {
            aliases: pg_catalog_alias("pg_typeof"),
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(field) = args.arg_fields.first() else {
            return exec_err!("pg_typeof expects one argument");
        };
        let name = pg_types::format_type(&pg_types::pg_type_of_field(field));
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// Casts to the types Arrow stores as text: `json(x)`, `jsonb(x)`, `uuid(x)`, which is how
/// PostgreSQL also spells `x::json` as a function call (the parser rewrites the casts to these).
/// The input is checked (and a UUID put in canonical form) as PostgreSQL's input function would,
/// and the result field carries the PostgreSQL type, so clients see json/jsonb/uuid.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TextBackedCast {
    pg_type: Type,
    signature: Signature,
}

impl TextBackedCast {
    fn new(pg_type: Type) -> Self {
        Self {
            pg_type,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TextBackedCast {
    fn name(&self) -> &str {
        self.pg_type.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [_] => Ok(vec![DataType::Utf8]),
            _ => plan_err!(
                "{} expects one argument, got {}",
                self.pg_type.name(),
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        let name = self.pg_type.name();
        Ok(Arc::new(
            Field::new(name, DataType::Utf8, true).with_metadata(pg_types::pg_type_metadata(name)),
        ))
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("{} expects one argument", self.pg_type.name());
        };
        let input = to_utf8(input)?;
        let mut out = StringBuilder::with_capacity(input.len(), 0);
        for text in input.as_string::<i32>() {
            match text {
                None => out.append_null(),
                Some(text) => match pg_types::text_backed_input(&self.pg_type, text) {
                    Some(value) => out.append_value(value),
                    None => {
                        return exec_err!(
                            "invalid input syntax for type {}: \"{text}\"",
                            self.pg_type.name()
                        );
                    }
                },
            }
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

/// `current_setting(name [, missing_ok])` and `set_config(name, value, is_local)` reading and
/// writing one session's settings.
///
/// Also `current_schemas(include_implicit)` over the session's `search_path` (replacing
/// `datafusion-pg-catalog`'s fixed `{public}`), and the session's user functions, which read `session_authorization` (the session should
/// set it to the authenticated role): `current_user`, `user` and `session_user`,
/// also callable without parentheses as SQL writes them (`CASE ... THEN user ...` in Grafana's
/// metadata queries). These replace `datafusion-pg-catalog`'s fixed `session_user()`.
pub fn session_setting_functions(settings: SharedSettings) -> Vec<ScalarUDF> {
    let mut udfs = vec![
        ScalarUDF::from(CurrentSetting::new(Arc::clone(&settings))),
        ScalarUDF::from(SetConfig::new(Arc::clone(&settings))),
    ];
    for name in ["current_user", "user", "session_user"] {
        udfs.push(ScalarUDF::from(SessionUser::new(
            name,
            Arc::clone(&settings),
        )));
    }
    udfs.push(ScalarUDF::from(CurrentSchemas::new(settings)));
    udfs
}

/// `pg_cancel_backend(pid)`: cancel the statement backend `pid` runs, as a CancelRequest
/// would; true if the backend exists (PostgreSQL's answer also when it is idle), false if not.
pub fn pg_cancel_backend(activity: Arc<crate::catalog::activity::Activity>) -> ScalarUDF {
    let cancel = move |args: &[ColumnarValue]| {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let pids = datafusion::arrow::compute::cast(&arrays[0], &DataType::Int64)?;
        let pids = pids.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let found: datafusion::arrow::array::BooleanArray = pids
            .iter()
            .map(|pid| {
                let pid = i32::try_from(pid?).ok()?;
                if !activity.exists(pid) {
                    return Some(false);
                }
                let activity = Arc::clone(&activity);
                tokio::spawn(async move { activity.cancel(pid).await });
                Some(true)
            })
            .collect();
        let found: ArrayRef = Arc::new(found);
        Ok(if all_scalars(args) {
            ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&found, 0)?)
        } else {
            ColumnarValue::Array(found)
        })
    };
    datafusion::logical_expr::create_udf(
        "pg_cancel_backend",
        vec![DataType::Int64],
        DataType::Boolean,
        datafusion::logical_expr::Volatility::Volatile,
        Arc::new(cancel),
    )
}

/// `pg_backend_pid()` for one session: the process id its connection was given.
pub fn pg_backend_pid(pid: i32) -> ScalarUDF {
    datafusion::logical_expr::create_udf(
        "pg_backend_pid",
        vec![],
        DataType::Int32,
        datafusion::logical_expr::Volatility::Stable,
        Arc::new(move |_: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Int32(Some(pid)),
            ))
        }),
    )
}

/// The `version()` string: PostgreSQL's shape, so version sniffers (SQLAlchemy's
/// `PostgreSQL (\d+)\.(\d+)`) see the server version EddyDB reports in `server_version`.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {} (EddyDB {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
        crate::server::settings::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    )
}

fn pg_catalog_alias(name: &str) -> Vec<String> {
    vec![format!("pg_catalog.{name}")]
}

/// Did every argument arrive as a scalar? Then the result is a scalar too.
fn all_scalars(args: &[ColumnarValue]) -> bool {
    args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)))
}

/// Wrap a computed array the way the arguments came: one scalar for scalar arguments.
fn finish(scalar_args: bool, out: ArrayRef) -> Result<ColumnarValue> {
    if scalar_args && out.len() == 1 {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
    } else {
        Ok(ColumnarValue::Array(out))
    }
}

fn to_utf8(array: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(array, &DataType::Utf8)?)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The argument counts a function accepts, as a signature taking any types.
fn any_arity_signature(arities: &[usize], volatility: Volatility) -> Signature {
    let sigs: Vec<TypeSignature> = arities
        .iter()
        .map(|&n| {
            if n == 0 {
                TypeSignature::Nullary
            } else {
                TypeSignature::Any(n)
            }
        })
        .collect();
    match sigs.as_slice() {
        [single] => Signature::new(single.clone(), volatility),
        _ => Signature::one_of(sigs, volatility),
    }
}

fn constant(name: &'static str, arities: Vec<usize>, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::from(ConstantFunc {
        name,
        aliases: pg_catalog_alias(name),
        signature: any_arity_signature(&arities, Volatility::Stable),
        value,
    })
}

/// A strict function with a fixed answer: the value for every row whose arguments are all
/// non-NULL, NULL otherwise.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConstantFunc {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
    value: ScalarValue,
}

impl ScalarUDFImpl for ConstantFunc {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.is_empty() {
            return Ok(ColumnarValue::Scalar(self.value.clone()));
        }
        if all_scalars(&args.args) {
            let any_null = args
                .args
                .iter()
                .any(|a| matches!(a, ColumnarValue::Scalar(s) if s.is_null()));
            return Ok(ColumnarValue::Scalar(if any_null {
                ScalarValue::try_from(self.value.data_type())?
            } else {
                self.value.clone()
            }));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = arrays.first().map_or(args.number_rows, |a| a.len());
        let values = self.value.to_array_of_size(rows)?;
        let mut mask: Option<BooleanArray> = None;
        for array in &arrays {
            let nulls = is_null(array.as_ref())?;
            mask = Some(match mask {
                None => nulls,
                Some(m) => or(&m, &nulls)?,
            });
        }
        match mask {
            Some(mask) => Ok(ColumnarValue::Array(nullif(values.as_ref(), &mask)?)),
            None => Ok(ColumnarValue::Array(values)),
        }
    }
}

/// Microseconds since the epoch when this process first asked (at registration, i.e. startup).
fn process_start_micros() -> i64 {
    static START: OnceLock<i64> = OnceLock::new();
    *START.get_or_init(|| chrono::Utc::now().timestamp_micros())
}

/// `txid_current()` / `pg_current_xact_id()`: EddyDB has no transaction ids, so each call hands
/// out the next number of a process-wide counter (starting above PostgreSQL's reserved ids).
#[derive(Debug, PartialEq, Eq, Hash)]
struct TransactionId {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
}

impl TransactionId {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            aliases: pg_catalog_alias(name),
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for TransactionId {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        static NEXT: AtomicI64 = AtomicI64::new(1000);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(id))))
    }
}

/// `to_regtype(text)`: the OID of the named type, or NULL when there is no such type.
///
/// PostgreSQL returns `regtype`, which prints as the type name but compares as an OID. Clients
/// use it in comparisons (psycopg 3 / SQLAlchemy: `WHERE t.oid = to_regtype($1)`), and
/// `pg_catalog.pg_type.oid` is an Arrow `Int32` column in `datafusion-pg-catalog`, so this
/// returns the OID as `Int32`: the comparison then needs no cast and matches. A caller that
/// prints the result sees the number (`23`), not `integer`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    aliases: Vec<String>,
    signature: Signature,
}

impl ToRegtype {
    fn new() -> Self {
        Self {
            aliases: pg_catalog_alias("to_regtype"),
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [_] => Ok(vec![DataType::Utf8]),
            _ => plan_err!("to_regtype expects one argument, got {}", arg_types.len()),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(names) = arrays.first() else {
            return exec_err!("to_regtype expects one argument");
        };
        let names = to_utf8(names)?;
        let mut out = Int32Builder::with_capacity(names.len());
        for name in names.as_string::<i32>() {
            out.append_option(name.and_then(regtype_oid));
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

/// Resolve a type name the way `to_regtype` does: SQL spellings (`integer`, `double precision`,
/// `character varying(20)`), internal names (`int4`, `_int4`), `pg_catalog.` qualification and
/// `[]` array suffixes. Unknown names give `None`.
fn regtype_oid(name: &str) -> Option<i32> {
    let mut name = name.trim();
    if name.len() >= 2 && name.starts_with('"') && name.ends_with('"') {
        name = &name[1..name.len() - 1];
    }
    let lower = name.to_ascii_lowercase();
    let unqualified = lower.strip_prefix("pg_catalog.").unwrap_or(&lower);
    // Drop type modifiers (`varchar(20)`, `numeric(10,2)`, `timestamp(3) with time zone`).
    let mut cleaned = String::with_capacity(unqualified.len());
    let mut depth = 0usize;
    for c in unqualified.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    let cleaned = cleaned.replace(" []", "[]");
    if let Some(t) = pg_types::type_by_name(&cleaned) {
        return i32::try_from(t.oid()).ok();
    }
    let key = match cleaned.strip_suffix("[]") {
        Some(element) => format!("_{element}"),
        None => cleaned,
    };
    builtin_types_by_name()
        .get(key.as_str())
        .and_then(|oid| i32::try_from(*oid).ok())
}

/// Every built-in type `postgres-types` knows, by its `pg_type.typname`.
fn builtin_types_by_name() -> &'static HashMap<String, u32> {
    static TYPES: OnceLock<HashMap<String, u32>> = OnceLock::new();
    TYPES.get_or_init(|| {
        (0..=16_384u32)
            .filter_map(Type::from_oid)
            .map(|t| (t.name().to_string(), t.oid()))
            .collect()
    })
}

/// `pg_size_pretty(bigint | numeric)`: PostgreSQL's rendering of a byte count, copied from
/// `dbsize.c`. A value stays in a unit while it is below 10240 of that unit; units above bytes
/// are half-rounded (`10752` -> `11 kB`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgSizePretty {
    aliases: Vec<String>,
    signature: Signature,
}

impl PgSizePretty {
    fn new() -> Self {
        Self {
            aliases: pg_catalog_alias("pg_size_pretty"),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

struct SizeUnit {
    name: &'static str,
    limit: u64,
    round: bool,
    unit_bits: u32,
}

const SIZE_UNITS: [SizeUnit; 6] = [
    SizeUnit {
        name: "bytes",
        limit: 10 * 1024,
        round: false,
        unit_bits: 0,
    },
    SizeUnit {
        name: "kB",
        limit: 20 * 1024 - 1,
        round: true,
        unit_bits: 10,
    },
    SizeUnit {
        name: "MB",
        limit: 20 * 1024 - 1,
        round: true,
        unit_bits: 20,
    },
    SizeUnit {
        name: "GB",
        limit: 20 * 1024 - 1,
        round: true,
        unit_bits: 30,
    },
    SizeUnit {
        name: "TB",
        limit: 20 * 1024 - 1,
        round: true,
        unit_bits: 40,
    },
    SizeUnit {
        name: "PB",
        limit: 20 * 1024 - 1,
        round: true,
        unit_bits: 50,
    },
];
const LAST_SIZE_UNIT: &SizeUnit = &SIZE_UNITS[SIZE_UNITS.len() - 1];

/// How many bits to divide by when moving from `unit` to `next`: one fewer if `next` is
/// half-rounded (values are kept in half-units), one more if `unit` was.
fn shift_bits(unit: &SizeUnit, next: &SizeUnit) -> u32 {
    next.unit_bits - unit.unit_bits - u32::from(next.round) + u32::from(unit.round)
}

/// `pg_size_pretty(bigint)`.
pub fn size_pretty(bytes: i64) -> String {
    fn half_rounded(x: i64) -> i64 {
        (x + if x < 0 { -1 } else { 1 }) / 2
    }
    let show = |size: i64, unit: &SizeUnit| {
        let size = if unit.round { half_rounded(size) } else { size };
        format!("{size} {}", unit.name)
    };
    let mut size = bytes;
    for pair in SIZE_UNITS.windows(2) {
        let [unit, next] = pair else { break };
        if size.unsigned_abs() < unit.limit {
            return show(size, unit);
        }
        size /= 1i64 << shift_bits(unit, next);
    }
    show(size, LAST_SIZE_UNIT)
}

/// `pg_size_pretty(numeric)` for a decimal `mantissa * 10^-scale`.
fn size_pretty_decimal(mantissa: i128, scale: u32) -> String {
    let pow10 = 10i128.checked_pow(scale);
    let show = |m: i128, s: u32, unit: &SizeUnit| {
        let m = match (unit.round, 10i128.checked_pow(s)) {
            (true, Some(p)) => {
                // numeric_half_rounded: (x +/- 1) truncated-divided by 2, an integer.
                let one = if m < 0 { -p } else { p };
                return format!("{} {}", (m + one) / (2 * p), unit.name);
            }
            _ => m,
        };
        format!("{} {}", format_decimal(m, s), unit.name)
    };
    let (mut m, mut s) = (mantissa, scale);
    for pair in SIZE_UNITS.windows(2) {
        let [unit, next] = pair else { break };
        let below = match 10u128
            .checked_pow(s)
            .and_then(|p| p.checked_mul(u128::from(unit.limit)))
        {
            Some(limit) => m.unsigned_abs() < limit,
            None => true,
        };
        if below {
            return show(m, s, unit);
        }
        // numeric_truncated_divide: an integer result.
        let divisor = (if s == scale { pow10 } else { Some(1) })
            .and_then(|p| p.checked_mul(1i128 << shift_bits(unit, next)));
        m = divisor.map_or(0, |d| m / d);
        s = 0;
    }
    show(m, s, LAST_SIZE_UNIT)
}

fn format_decimal(mantissa: i128, scale: u32) -> String {
    if scale == 0 {
        return mantissa.to_string();
    }
    let digits = mantissa.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if mantissa < 0 { "-" } else { "" };
    format!("{sign}{int}.{frac}")
}

/// `pg_size_pretty` of a float, treated as the numeric PostgreSQL would cast it to.
fn size_pretty_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN bytes".to_string();
    }
    if value.is_infinite() {
        let sign = if value < 0.0 { "-" } else { "" };
        return format!("{sign}Infinity {}", LAST_SIZE_UNIT.name);
    }
    if value.fract() == 0.0 && value.abs() < 9.0e18 {
        return size_pretty(value as i64);
    }
    let mut size = value;
    for pair in SIZE_UNITS.windows(2) {
        let [unit, next] = pair else { break };
        if size.abs() < unit.limit as f64 {
            return if unit.round {
                format!("{} {}", ((size + size.signum()) / 2.0).trunc(), unit.name)
            } else {
                format!("{size} {}", unit.name)
            };
        }
        size = (size / f64::from(1u32 << shift_bits(unit, next))).trunc();
    }
    format!(
        "{} {}",
        ((size + size.signum()) / 2.0).trunc(),
        LAST_SIZE_UNIT.name
    )
}

impl ScalarUDFImpl for PgSizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [t] = arg_types else {
            return plan_err!(
                "pg_size_pretty expects one argument, got {}",
                arg_types.len()
            );
        };
        let target = match t {
            DataType::Null
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => DataType::Int64,
            t if is_string(t) => DataType::Int64,
            DataType::UInt64 => DataType::Decimal128(20, 0),
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => {
                DataType::Decimal128(*p, *s)
            }
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal256(..) => DataType::Float64,
            other => return plan_err!("function pg_size_pretty({other}) does not exist"),
        };
        Ok(vec![target])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return exec_err!("pg_size_pretty expects one argument");
        };
        let mut out = StringBuilder::with_capacity(input.len(), input.len() * 8);
        match input.data_type() {
            DataType::Int64 => {
                for v in input.as_primitive::<Int64Type>() {
                    out.append_option(v.map(size_pretty));
                }
            }
            DataType::Decimal128(_, scale) => {
                let scale = u32::try_from(*scale).unwrap_or(0);
                for v in input.as_primitive::<Decimal128Type>() {
                    out.append_option(v.map(|m| size_pretty_decimal(m, scale)));
                }
            }
            DataType::Float64 => {
                for v in input.as_primitive::<Float64Type>() {
                    out.append_option(v.map(size_pretty_float));
                }
            }
            DataType::Null => {
                for _ in 0..input.len() {
                    out.append_null();
                }
            }
            other => return exec_err!("pg_size_pretty: unexpected argument type {other}"),
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

/// `time_bucket(bucket_width, ts)`: TimescaleDB's bucketing, which Grafana's `$__timeGroup`
/// emits (`time_bucket('300.000s', col)`) when the TimescaleDB toggle is on.
///
/// The width is an interval or interval text (`'300.000s'`, `'5m'`, `'1 hour'`). Buckets are
/// aligned like TimescaleDB's: fixed-width buckets to its default origin 2000-01-03 00:00 UTC
/// (a Monday; for widths that divide a day this is the same as aligning to the Unix epoch),
/// month buckets to 2000-01-01. The result keeps the input's timestamp type and time zone;
/// time-zone-aware values are bucketed in UTC, as TimescaleDB does without a `timezone`
/// argument.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeBucket {
    aliases: Vec<String>,
    signature: Signature,
}

impl TimeBucket {
    fn new() -> Self {
        Self {
            aliases: pg_catalog_alias("time_bucket"),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// TimescaleDB's default origin for fixed-width buckets, 2000-01-03T00:00:00Z, in nanoseconds.
const BUCKET_ORIGIN_NANOS: i128 = 946_857_600 * NANOS_PER_SECOND;
const NANOS_PER_SECOND: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SECOND;

#[derive(Debug, Clone, Copy, PartialEq)]
enum BucketWidth {
    Nanos(i128),
    Months(i32),
}

fn bucket_width_from_parts(months: i32, days: i32, nanos: i64) -> Result<BucketWidth> {
    let fixed = i128::from(days) * NANOS_PER_DAY + i128::from(nanos);
    match (months, fixed) {
        (0, n) if n > 0 => Ok(BucketWidth::Nanos(n)),
        (m, 0) if m > 0 => Ok(BucketWidth::Months(m)),
        (0, _) | (_, 0) => exec_err!("invalid time_bucket width: period must be greater than 0"),
        _ => exec_err!("month intervals cannot have day or time component"),
    }
}

/// Parse interval text as PostgreSQL and Grafana write it (`'1 hour'`, `'300.000s'`, `'5m'`).
fn parse_bucket_width(text: &str) -> Result<BucketWidth> {
    let interval = parse_interval_month_day_nano(text.trim()).map_err(|_| {
        DataFusionError::Execution(format!(
            "invalid input syntax for type interval: \"{text}\""
        ))
    })?;
    bucket_width_from_parts(interval.months, interval.days, interval.nanoseconds)
}

/// The bucket width of each row of the width argument (an interval, duration or text).
fn bucket_widths(array: &ArrayRef) -> Result<Vec<Option<BucketWidth>>> {
    let widths = match array.data_type() {
        t if is_string(t) => to_utf8(array)?
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(parse_bucket_width).transpose())
            .collect::<Result<_>>()?,
        DataType::Interval(IntervalUnit::MonthDayNano) => array
            .as_primitive::<IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map(|i| bucket_width_from_parts(i.months, i.days, i.nanoseconds))
                    .transpose()
            })
            .collect::<Result<_>>()?,
        DataType::Interval(IntervalUnit::DayTime) => array
            .as_primitive::<IntervalDayTimeType>()
            .iter()
            .map(|v| {
                v.map(|i| bucket_width_from_parts(0, i.days, i64::from(i.milliseconds) * 1_000_000))
                    .transpose()
            })
            .collect::<Result<_>>()?,
        DataType::Interval(IntervalUnit::YearMonth) => array
            .as_primitive::<IntervalYearMonthType>()
            .iter()
            .map(|v| v.map(|m| bucket_width_from_parts(m, 0, 0)).transpose())
            .collect::<Result<_>>()?,
        DataType::Duration(unit) => {
            let per = nanos_per_unit(unit);
            cast(array, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| {
                    v.map(|d| match i128::from(d) * per {
                        n if n > 0 => Ok(BucketWidth::Nanos(n)),
                        _ => exec_err!("invalid time_bucket width: period must be greater than 0"),
                    })
                    .transpose()
                })
                .collect::<Result<_>>()?
        }
        DataType::Null => vec![None; array.len()],
        other => return exec_err!("time_bucket: unsupported bucket width type {other}"),
    };
    Ok(widths)
}

fn nanos_per_unit(unit: &TimeUnit) -> i128 {
    match unit {
        TimeUnit::Second => NANOS_PER_SECOND,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Floor one timestamp (`value` in `per_unit`-nanosecond units) to its bucket.
fn bucket_start(value: i64, per_unit: i128, width: BucketWidth) -> Result<i64> {
    let nanos = i128::from(value) * per_unit;
    let start = match width {
        BucketWidth::Nanos(w) => {
            (nanos - BUCKET_ORIGIN_NANOS).div_euclid(w) * w + BUCKET_ORIGIN_NANOS
        }
        BucketWidth::Months(w) => {
            let secs = i64::try_from(nanos.div_euclid(NANOS_PER_SECOND))
                .map_err(|_| DataFusionError::Execution("timestamp out of range".into()))?;
            let Some(t) = DateTime::from_timestamp(secs, 0) else {
                return exec_err!("timestamp out of range");
            };
            let months = i64::from(t.year() - 2000) * 12 + i64::from(t.month0());
            let bucket = months.div_euclid(i64::from(w)) * i64::from(w);
            let year = i32::try_from(2000 + bucket.div_euclid(12))
                .map_err(|_| DataFusionError::Execution("timestamp out of range".into()))?;
            let month = u32::try_from(bucket.rem_euclid(12) + 1).unwrap_or(1);
            let Some(day) =
                NaiveDate::from_ymd_opt(year, month, 1).and_then(|d| d.and_hms_opt(0, 0, 0))
            else {
                return exec_err!("timestamp out of range");
            };
            i128::from(day.and_utc().timestamp()) * NANOS_PER_SECOND
        }
    };
    i64::try_from(start.div_euclid(per_unit))
        .map_err(|_| DataFusionError::Execution("timestamp out of range".into()))
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        "time_bucket"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [width, ts] = arg_types else {
            return plan_err!(
                "time_bucket expects (bucket_width, timestamp), got {} arguments",
                arg_types.len()
            );
        };
        let width = match width {
            t if is_string(t) => DataType::Utf8,
            DataType::Interval(_) | DataType::Duration(_) => width.clone(),
            DataType::Null => DataType::Interval(IntervalUnit::MonthDayNano),
            other => {
                return plan_err!("time_bucket: bucket width must be an interval, got {other}");
            }
        };
        let ts = match ts {
            DataType::Timestamp(_, _) => ts.clone(),
            DataType::Date32 | DataType::Date64 | DataType::Null => {
                DataType::Timestamp(TimeUnit::Nanosecond, None)
            }
            t if is_string(t) => DataType::Timestamp(TimeUnit::Nanosecond, None),
            other => return plan_err!("time_bucket: expected a timestamp, got {other}"),
        };
        Ok(vec![width, ts])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [_, ts @ DataType::Timestamp(_, _)] => Ok(ts.clone()),
            _ => Ok(DataType::Timestamp(TimeUnit::Nanosecond, None)),
        }
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [width, ts] = arrays.as_slice() else {
            return exec_err!("time_bucket expects two arguments");
        };
        let out_type = ts.data_type().clone();
        let DataType::Timestamp(unit, _) = &out_type else {
            return exec_err!("time_bucket: expected a timestamp, got {out_type}");
        };
        let per_unit = nanos_per_unit(unit);
        let widths = bucket_widths(width)?;
        let raw = cast(ts, &DataType::Int64)?;
        let raw = raw.as_primitive::<Int64Type>();
        let single_width = (widths.len() == 1).then(|| widths.first().copied().flatten());
        let buckets = raw
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let w = match single_width {
                    Some(w) => w,
                    None => widths.get(i).copied().flatten(),
                };
                match (v, w) {
                    (Some(v), Some(w)) => bucket_start(v, per_unit, w).map(Some),
                    _ => Ok(None),
                }
            })
            .collect::<Result<Int64Array>>()?;
        let out = cast(&buckets, &out_type)?;
        finish(scalar_args, out)
    }
}

/// The settings of the session a function was registered for. Two such functions are the same
/// function when they serve the same session, so equality and hashing go by the pointer.
#[derive(Debug)]
struct SessionSettings(SharedSettings);

impl PartialEq for SessionSettings {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionSettings {}

impl Hash for SessionSettings {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

impl std::ops::Deref for SessionSettings {
    type Target = SharedSettings;

    fn deref(&self) -> &SharedSettings {
        &self.0
    }
}

/// `current_setting(name [, missing_ok])`: a parameter of the session that registered it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    settings: SessionSettings,
    aliases: Vec<String>,
    signature: Signature,
}

impl CurrentSetting {
    fn new(settings: SharedSettings) -> Self {
        Self {
            settings: SessionSettings(settings),
            aliases: pg_catalog_alias("current_setting"),
            // Stable, as in PostgreSQL: one value per statement, so it is folded at planning
            // time (which lets `generate_series(..current_setting(..)..)` plan at all).
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

fn unknown_parameter(name: &str) -> DataFusionError {
    DataFusionError::Execution(format!("unrecognized configuration parameter \"{name}\""))
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            1 => Ok(vec![DataType::Utf8]),
            2 => Ok(vec![DataType::Utf8, DataType::Boolean]),
            n => plan_err!("current_setting expects 1 or 2 arguments, got {n}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(names) = arrays.first() else {
            return exec_err!("current_setting expects 1 or 2 arguments");
        };
        let names = to_utf8(names)?;
        let names = names.as_string::<i32>();
        let missing_ok = match arrays.get(1) {
            Some(flags) => Some(cast(flags, &DataType::Boolean)?),
            None => None,
        };
        let missing_ok = missing_ok.as_ref().map(|a| a.as_boolean());
        let settings = self
            .settings
            .read()
            .map_err(|_| DataFusionError::Execution("session settings are unavailable".into()))?;
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for (i, name) in names.iter().enumerate() {
            let Some(name) = name else {
                out.append_null();
                continue;
            };
            match settings.get_opt(name) {
                Some(value) => out.append_value(value),
                None => {
                    // PostgreSQL: a NULL missing_ok counts as false.
                    let ok = missing_ok.is_some_and(|m| m.is_valid(i) && m.value(i));
                    if ok {
                        out.append_null();
                    } else {
                        return Err(unknown_parameter(name));
                    }
                }
            }
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

/// `current_user`, `user`, `session_user`: the session's role, from its
/// `session_authorization` setting.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionUser {
    name: &'static str,
    settings: SessionSettings,
    aliases: Vec<String>,
    signature: Signature,
}

impl SessionUser {
    fn new(name: &'static str, settings: SharedSettings) -> Self {
        Self {
            name,
            settings: SessionSettings(settings),
            aliases: pg_catalog_alias(name),
            signature: Signature::nullary(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for SessionUser {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let user = self
            .settings
            .read()
            .map_err(|_| DataFusionError::Execution("session settings are unavailable".into()))?
            .get_opt("session_authorization");
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(user)))
    }
}

/// `current_schemas(include_implicit)`: the session's `search_path` as a text array, with
/// quotes removed and `pg_catalog` first when `include_implicit` is true (unless the path names
/// it). The `"$user"` entry is left out: PostgreSQL skips schemas that do not exist, and EddyDB
/// creates no per-user schemas. Existence of the other schemas is not checked.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSchemas {
    settings: SessionSettings,
    aliases: Vec<String>,
    signature: Signature,
}

impl CurrentSchemas {
    fn new(settings: SharedSettings) -> Self {
        Self {
            settings: SessionSettings(settings),
            aliases: pg_catalog_alias("current_schemas"),
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

/// The schemas of a `search_path` value, in order, without `"$user"`.
pub fn search_path_schemas(search_path: &str, include_implicit: bool) -> Vec<String> {
    let mut schemas: Vec<String> = vec![];
    for entry in search_path.split(',') {
        let entry = entry.trim();
        let name = match entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => entry.to_ascii_lowercase(),
        };
        if name.is_empty() || name == "$user" || schemas.contains(&name) {
            continue;
        }
        schemas.push(name);
    }
    if include_implicit && !schemas.iter().any(|s| s == "pg_catalog") {
        schemas.insert(0, "pg_catalog".to_string());
    }
    schemas
}

impl ScalarUDFImpl for CurrentSchemas {
    fn name(&self) -> &str {
        "current_schemas"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            1 => Ok(vec![DataType::Boolean]),
            n => plan_err!("current_schemas expects 1 argument, got {n}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::new_list(DataType::Utf8, true))
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(flags) = arrays.first() else {
            return exec_err!("current_schemas expects 1 argument");
        };
        let flags = cast(flags, &DataType::Boolean)?;
        let search_path = self
            .settings
            .read()
            .map_err(|_| DataFusionError::Execution("session settings are unavailable".into()))?
            .get_opt("search_path")
            .unwrap_or_default();
        let mut out = ListBuilder::new(StringBuilder::new());
        for flag in flags.as_boolean() {
            match flag {
                Some(include_implicit) => {
                    for schema in search_path_schemas(&search_path, include_implicit) {
                        out.values().append_value(schema);
                    }
                    out.append(true);
                }
                None => out.append_null(),
            }
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

/// `set_config(name, value, is_local)`: set a parameter of the registering session and return
/// its new value. `is_local` is accepted but the change lasts for the session (EddyDB does not
/// scope settings to transactions yet). A NULL value resets the parameter. Changes made here
/// are not announced with ParameterStatus by this function; the session can compare values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SetConfig {
    settings: SessionSettings,
    aliases: Vec<String>,
    signature: Signature,
}

impl SetConfig {
    fn new(settings: SharedSettings) -> Self {
        Self {
            settings: SessionSettings(settings),
            aliases: pg_catalog_alias("set_config"),
            signature: Signature::user_defined(Volatility::Volatile),
        }
    }
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            3 => Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Boolean]),
            n => plan_err!("set_config expects 3 arguments, got {n}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar_args = all_scalars(&args.args);
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [names, values, _is_local] = arrays.as_slice() else {
            return exec_err!("set_config expects 3 arguments");
        };
        let names = to_utf8(names)?;
        let values = to_utf8(values)?;
        let (names, values) = (names.as_string::<i32>(), values.as_string::<i32>());
        let mut settings = self
            .settings
            .write()
            .map_err(|_| DataFusionError::Execution("session settings are unavailable".into()))?;
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for (name, value) in names.iter().zip(values.iter()) {
            let Some(name) = name else {
                return exec_err!("SET requires parameter name");
            };
            let changed = match value {
                Some(value) => settings.set(name, value),
                None => settings.reset(name),
            };
            changed.map_err(|e| match e {
                crate::Error::InvalidParameter(_) => unknown_parameter(name),
                other => DataFusionError::Execution(other.to_string()),
            })?;
            out.append_option(settings.get_opt(name));
        }
        finish(scalar_args, Arc::new(out.finish()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionConfig;

    use super::*;
    use crate::server::settings::Settings;

    async fn context() -> (SessionContext, SharedSettings) {
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
        for udf in session_setting_functions(Arc::clone(&settings)) {
            ctx.register_udf(udf);
        }
        crate::catalog::information_schema::register_information_schema(&ctx, "eddy").unwrap();
        ctx.sql(
            "CREATE TABLE public.games (id BIGINT NOT NULL, name VARCHAR, \
             ts TIMESTAMP WITH TIME ZONE, score DOUBLE PRECISION)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        (ctx, settings)
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    /// The first column of the result, rendered as text (NULL as `NULL`).
    async fn column(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut out = vec![];
        for batch in batches {
            let col = cast(batch.column(0), &DataType::Utf8).unwrap();
            for v in col.as_string::<i32>() {
                out.push(v.unwrap_or("NULL").to_string());
            }
        }
        out
    }

    async fn one(ctx: &SessionContext, sql: &str) -> String {
        let values = column(ctx, sql).await;
        assert_eq!(values.len(), 1, "{sql}: {values:?}");
        values.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn version_replaces_datafusions() {
        let (ctx, _) = context().await;
        let expected = format!(
            "PostgreSQL 16.6 (EddyDB {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(one(&ctx, "SELECT version()").await, expected);
        assert_eq!(one(&ctx, "SELECT pg_catalog.version()").await, expected);
    }

    #[test]
    fn size_pretty_matches_postgres() {
        let cases = [
            (0, "0 bytes"),
            (123, "123 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (10751, "10 kB"),
            (10752, "11 kB"),
            (-10240, "-10 kB"),
            (-10239, "-10239 bytes"),
            (10_485_247, "10239 kB"),
            (10_485_248, "10 MB"),
            (20_970_495, "20 MB"),
            (1_073_741_824, "1024 MB"),
            (10_737_418_240, "10 GB"),
            (1_099_511_627_776, "1024 GB"),
            (i64::MAX, "8192 PB"),
            (i64::MIN, "-8192 PB"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(size_pretty(bytes), expected, "{bytes}");
        }
        assert_eq!(size_pretty_decimal(10_240, 0), "10 kB");
        assert_eq!(size_pretty_decimal(1050, 2), "10.50 bytes");
        assert_eq!(size_pretty_decimal(107_374_182_400, 2), "1024 MB");
        assert_eq!(size_pretty_float(10240.0), "10 kB");
        assert_eq!(size_pretty_float(1.5), "1.5 bytes");
    }

    #[tokio::test]
    async fn size_pretty_in_sql() {
        let (ctx, _) = context().await;
        assert_eq!(
            one(&ctx, "SELECT pg_size_pretty(10239)").await,
            "10239 bytes"
        );
        assert_eq!(
            one(&ctx, "SELECT pg_size_pretty(CAST(1073741824 AS BIGINT))").await,
            "1024 MB"
        );
        assert_eq!(
            one(&ctx, "SELECT pg_size_pretty(CAST(10240 AS DECIMAL(10,0)))").await,
            "10 kB"
        );
        assert_eq!(
            one(&ctx, "SELECT pg_size_pretty(10240.0::double)").await,
            "10 kB"
        );
        assert_eq!(one(&ctx, "SELECT pg_size_pretty(NULL)").await, "NULL");
        let sizes = column(
            &ctx,
            "SELECT pg_size_pretty(v) FROM (VALUES (0), (10240), (NULL), (1073741824)) t(v)",
        )
        .await;
        assert_eq!(sizes, ["0 bytes", "10 kB", "NULL", "1024 MB"]);
        assert_eq!(
            one(&ctx, "SELECT pg_size_pretty(pg_table_size(1))").await,
            "0 bytes"
        );
    }

    #[tokio::test]
    async fn time_bucket_floors_like_timescaledb() {
        let (ctx, _) = context().await;
        let cases = [
            (
                "SELECT time_bucket('300.000s', TIMESTAMP '2018-04-12 18:03:17')",
                "2018-04-12T18:00:00",
            ),
            (
                "SELECT time_bucket('5m', TIMESTAMP '2018-04-12 18:07:59.999')",
                "2018-04-12T18:05:00",
            ),
            (
                "SELECT time_bucket('1 hour', TIMESTAMP '2018-04-12 18:07:59')",
                "2018-04-12T18:00:00",
            ),
            (
                "SELECT time_bucket(INTERVAL '1 day', TIMESTAMP '1969-12-31 23:00:00')",
                "1969-12-31T00:00:00",
            ),
            // Weeks start on Monday, like TimescaleDB's default origin (2000-01-03).
            (
                "SELECT time_bucket(INTERVAL '7 days', TIMESTAMP '2024-05-09 12:00:00')",
                "2024-05-06T00:00:00",
            ),
            (
                "SELECT time_bucket(INTERVAL '3 months', TIMESTAMP '2024-05-09 12:00:00')",
                "2024-04-01T00:00:00",
            ),
            (
                "SELECT time_bucket('300.000s', TIMESTAMP '2018-04-12 18:03:17' AT TIME ZONE 'UTC')",
                "2018-04-12T18:00:00Z",
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(one(&ctx, sql).await, expected, "{sql}");
        }
        assert_eq!(one(&ctx, "SELECT time_bucket('5m', NULL)").await, "NULL");
        // The timestamp type (unit and zone) is kept.
        let bucketed = ctx
            .sql("SELECT time_bucket('300.000s', ts) AS time FROM games")
            .await
            .unwrap();
        let games = ctx.table("games").await.unwrap();
        let ts_type = games
            .schema()
            .field_with_unqualified_name("ts")
            .unwrap()
            .data_type();
        assert!(
            matches!(ts_type, DataType::Timestamp(_, Some(_))),
            "{ts_type}"
        );
        assert_eq!(bucketed.schema().field(0).data_type(), ts_type);
        let err = run(
            &ctx,
            "SELECT time_bucket('1 month 1 day', TIMESTAMP '2024-01-01')",
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("month intervals"), "{err}");
        let err = run(&ctx, "SELECT time_bucket('soon', TIMESTAMP '2024-01-01')")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid input syntax"), "{err}");
    }

    #[tokio::test]
    async fn time_bucket_on_arrays() {
        let (ctx, _) = context().await;
        run(
            &ctx,
            "INSERT INTO games VALUES (1, 'a', '2018-04-12T18:03:17Z', 1.0), \
             (2, 'b', '2018-04-12T18:09:00Z', 2.0), (3, 'c', NULL, 3.0)",
        )
        .await
        .unwrap();
        let buckets = column(
            &ctx,
            "SELECT time_bucket('300.000s', ts) FROM games ORDER BY id",
        )
        .await;
        assert_eq!(
            buckets,
            ["2018-04-12T18:00:00Z", "2018-04-12T18:05:00Z", "NULL"]
        );
    }

    #[tokio::test]
    async fn settings_round_trip() {
        let (ctx, settings) = context().await;
        assert_eq!(
            one(&ctx, "SELECT current_setting('search_path')").await,
            "\"$user\", public"
        );
        assert_eq!(
            one(
                &ctx,
                "SELECT current_setting('server_version_num')::int/100 as version"
            )
            .await,
            "1600"
        );
        assert_eq!(
            one(
                &ctx,
                "SELECT set_config('application_name', 'grafana', false)"
            )
            .await,
            "grafana"
        );
        assert_eq!(
            one(&ctx, "SELECT current_setting('application_name')").await,
            "grafana"
        );
        assert_eq!(
            settings.read().unwrap().get("application_name").unwrap(),
            "grafana"
        );
        settings
            .write()
            .unwrap()
            .set("search_path", "public")
            .unwrap();
        assert_eq!(
            one(&ctx, "SELECT current_setting('search_path')").await,
            "public"
        );
        assert_eq!(
            one(&ctx, "SELECT set_config('myapp.tenant', '7', true)").await,
            "7"
        );
        assert_eq!(
            one(&ctx, "SELECT current_setting('myapp.tenant')").await,
            "7"
        );
        assert_eq!(
            one(&ctx, "SELECT current_setting('no_such_thing', true)").await,
            "NULL"
        );
        let err = run(&ctx, "SELECT current_setting('no_such_thing')")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("unrecognized configuration parameter \"no_such_thing\""),
            "{err}"
        );
        assert_eq!(one(&ctx, "SELECT user").await, "eddy");
        assert_eq!(one(&ctx, "SELECT current_user").await, "eddy");
        assert_eq!(one(&ctx, "SELECT session_user").await, "eddy");
        assert_eq!(
            one(&ctx, "SELECT array_to_string(current_schemas(true), ',')").await,
            "pg_catalog,public"
        );
        settings
            .write()
            .unwrap()
            .set("search_path", "\"$user\", Metrics, \"Odd\"\"Name\", public")
            .unwrap();
        assert_eq!(
            one(&ctx, "SELECT array_to_string(current_schemas(false), ',')").await,
            "metrics,Odd\"Name,public"
        );
        let err = run(&ctx, "SELECT set_config('server_version', '1', false)")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot be changed"), "{err}");
    }

    #[tokio::test]
    async fn to_regtype_matches_pg_type() {
        let (ctx, _) = context().await;
        assert_eq!(one(&ctx, "SELECT to_regtype('int4')").await, "23");
        assert_eq!(one(&ctx, "SELECT to_regtype('integer')").await, "23");
        assert_eq!(
            one(&ctx, "SELECT to_regtype('character varying(20)')").await,
            "1043"
        );
        assert_eq!(
            one(&ctx, "SELECT to_regtype('pg_catalog.int8[]')").await,
            "1016"
        );
        assert_eq!(one(&ctx, "SELECT to_regtype('_int4')").await, "1007");
        assert_eq!(one(&ctx, "SELECT to_regtype('inet')").await, "869");
        assert_eq!(one(&ctx, "SELECT to_regtype('hstore')").await, "NULL");
        assert_eq!(
            one(
                &ctx,
                "SELECT typname FROM pg_catalog.pg_type t WHERE t.oid = to_regtype('int4')"
            )
            .await,
            "int4"
        );
        // psycopg 3 / SQLAlchemy's type probe; an unknown type gives no rows, not an error.
        let rows = column(
            &ctx,
            "SELECT typname AS name, oid, typarray AS array_oid, typdelim AS delimiter \
             FROM pg_catalog.pg_type t WHERE t.oid = to_regtype('hstore') ORDER BY t.oid",
        )
        .await;
        assert!(rows.is_empty());
    }

    #[tokio::test]
    async fn catalog_stubs_answer() {
        let (ctx, _) = context().await;
        let sql = "SELECT obj_description(1, 'pg_class'), col_description(1, 1), \
                   shobj_description(1, 'pg_database'), pg_get_viewdef(1, true), \
                   pg_function_is_visible(1), pg_get_function_result(1), \
                   pg_is_in_recovery(), pg_jit_available(), inet_server_port(), \
                   pg_database_size('eddy'), pg_indexes_size(1), pg_tablespace_location(0), \
                   pg_get_indexdef(1, 0, true), pg_get_triggerdef(1), pg_get_ruledef(1), \
                   pg_function_is_visible(NULL), txid_current() > 0, \
                   pg_postmaster_start_time() <= now()";
        let batches = run(&ctx, sql).await.unwrap();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let row = text.lines().nth(3).unwrap().replace(' ', "");
        assert_eq!(row, "|||||true||false|false||0|0||||||true|true|", "{text}");

        // psql's \df over pg_proc plans and runs.
        let df = "SELECT n.nspname as \"Schema\", p.proname as \"Name\", \
                  pg_catalog.pg_get_function_result(p.oid) as \"Result data type\", \
                  pg_catalog.pg_get_function_arguments(p.oid) as \"Argument data types\", \
                  CASE p.prokind WHEN 'a' THEN 'agg' WHEN 'w' THEN 'window' \
                  WHEN 'p' THEN 'proc' ELSE 'func' END as \"Type\" \
                  FROM pg_catalog.pg_proc p \
                  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                  WHERE pg_catalog.pg_function_is_visible(p.oid) \
                  AND n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' \
                  ORDER BY 1, 2, 4";
        run(&ctx, df).await.unwrap();
        let all = "SELECT count(pg_get_function_identity_arguments(p.oid)) > 0 \
                   FROM pg_catalog.pg_proc p WHERE pg_function_is_visible(p.oid)";
        assert_eq!(one(&ctx, all).await, "true");
    }
}
