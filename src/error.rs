//! One error type for the whole crate, and the single place where errors become SQLSTATEs.
//!
//! Every layer returns [`Result`]. The pgwire boundary (`server::handler`) calls
//! [`Error::sqlstate`] and [`Error::to_string`] to build the `ErrorResponse` a client sees, so a
//! user mistake (bad SQL, unknown table, wrong type) reaches the client as a clear message with the
//! right code while the session, the server and the stored data go on. Internal errors are logged
//! at `error!`; user errors at `debug!`.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// Crate-wide result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is at fault, which decides how loudly an error is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The client sent something wrong: bad SQL, unknown objects, bad data.
    User,
    /// Something outside the process failed: disk, network, object storage.
    External,
    /// A bug or broken invariant in EddyDB.
    Internal,
}

/// Everything that can go wrong in EddyDB.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("syntax error: {0}")]
    Parse(#[from] ParserError),

    #[error("{}", strip_df_prefix(.0))]
    DataFusion(#[from] Box<DataFusionError>),

    #[error("{kind} \"{name}\" does not exist")]
    NotFound { kind: &'static str, name: String },

    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },

    #[error("{0} is not supported")]
    Unsupported(String),

    #[error("{0}")]
    InvalidValue(String),

    #[error("{0}")]
    InvalidParameter(String),

    /// Text that does not parse as a value of the type it is meant for.
    #[error("{0}")]
    InvalidTextRepresentation(String),

    #[error("canceling statement due to user request")]
    Cancelled,

    /// The client ended an operation (COPY's CopyFail).
    #[error("{0}")]
    QueryCanceled(String),

    #[error("canceling statement due to statement timeout")]
    StatementTimeout,

    #[error("{0} can only be used in transaction blocks")]
    NoTransactionBlock(&'static str),

    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    InFailedTransaction,

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The durable log or the object store failed; the write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(String),

    /// A row whose key another row already has.
    #[error("{0}")]
    UniqueViolation(String),

    /// NULL where the column is NOT NULL (primary keys).
    #[error("{0}")]
    NotNullViolation(String),

    /// One statement touching a row twice where that is ambiguous (ON CONFLICT DO UPDATE).
    #[error("{0}")]
    CardinalityViolation(String),

    /// A message that is wrong at this point of the protocol.
    #[error("{0}")]
    ProtocolViolation(String),

    /// A value of the wrong type where a particular one is required.
    #[error("{0}")]
    DatatypeMismatch(String),

    /// A column list that matches no constraint (ON CONFLICT).
    #[error("{0}")]
    InvalidColumnReference(String),

    /// Input bytes that are not valid UTF-8.
    #[error("{0}")]
    CharacterNotInRepertoire(String),

    /// COPY or HTTP input with the wrong shape (column count, quoting, encoding).
    #[error("{0}")]
    BadCopyFormat(String),

    /// The object exists but is the wrong kind for the command (DROP TABLE on a stream).
    #[error("{0}")]
    WrongObjectType(String),

    /// A size limit: one write too large for the log, too many columns.
    #[error("{0}")]
    ProgramLimitExceeded(String),

    /// DROP of an object others depend on.
    #[error("{0}")]
    DependentObjects(String),

    /// A NULL where a value is required (a model's features).
    #[error("{0}")]
    NullValueNotAllowed(String),

    /// A statement that needs something switched on or set up first (CHECKPOINT with
    /// checkpoints off).
    #[error("{0}")]
    NotInPrerequisiteState(String),

    #[error("configuration error: {0}")]
    Config(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::from(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl From<Error> for DataFusionError {
    /// Our errors cross DataFusion (a TableProvider's sink) intact: [`Error::sqlstate`] finds
    /// them again at the root.
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(inner) => *inner,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        Error::DataFusion(Box::new(e))
    }
}

/// DataFusion prefixes messages with the error kind ("Error during planning: ..."); users want
/// the sentence itself, and the kind is already carried by the SQLSTATE.
fn strip_df_prefix(e: &DataFusionError) -> String {
    let root = e.find_root();
    match root {
        DataFusionError::External(inner) => inner.to_string(),
        DataFusionError::Plan(msg)
        | DataFusionError::Execution(msg)
        | DataFusionError::NotImplemented(msg)
        | DataFusionError::Configuration(msg) => msg.clone(),
        DataFusionError::SQL(err, _) => format!("syntax error: {err}"),
        DataFusionError::ResourcesExhausted(msg) => format!("out of memory: {msg}"),
        DataFusionError::ArrowError(arrow, _) => match arrow.as_ref() {
            ArrowError::DivideByZero => "division by zero".to_string(),
            ArrowError::CastError(msg)
            | ArrowError::ParseError(msg)
            | ArrowError::InvalidArgumentError(msg)
            | ArrowError::ComputeError(msg) => msg.clone(),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

impl Error {
    /// Who caused this error.
    pub fn domain(&self) -> ErrorDomain {
        match self {
            Error::Io(_) | Error::Storage(_) => ErrorDomain::External,
            Error::Internal(_) => ErrorDomain::Internal,
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
                    Some(ours) => ours.domain(),
                    None => ErrorDomain::External,
                },
                DataFusionError::Internal(_) => ErrorDomain::Internal,
                DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => {
                    ErrorDomain::External
                }
                _ => ErrorDomain::User,
            },
            _ => ErrorDomain::User,
        }
    }

    /// The PostgreSQL SQLSTATE for this error: the one table that maps errors to codes.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Parse(_) => "42601",
            Error::NotFound { kind, .. } => match *kind {
                "table" | "relation" | "stream" | "materialized view" | "view" => "42P01",
                "column" => "42703",
                "function" => "42883",
                "schema" => "3F000",
                "database" => "3D000",
                "prepared statement" => "26000",
                "portal" | "cursor" => "34000",
                "savepoint" => "3B001",
                _ => "42704",
            },
            Error::AlreadyExists { kind, .. } => match *kind {
                "schema" => "42P06",
                "database" => "42P04",
                "function" => "42723",
                _ => "42P07",
            },
            Error::Unsupported(_) => "0A000",
            Error::InvalidValue(_) => "22023",
            Error::InvalidParameter(_) => "42704",
            Error::InvalidTextRepresentation(_) => "22P02",
            Error::Cancelled | Error::StatementTimeout | Error::QueryCanceled(_) => "57014",
            Error::InFailedTransaction => "25P02",
            Error::NoTransactionBlock(_) => "25P01",
            Error::Io(_) | Error::Storage(_) => "58030",
            Error::UniqueViolation(_) => "23505",
            Error::NotNullViolation(_) => "23502",
            Error::CardinalityViolation(_) => "21000",
            Error::BadCopyFormat(_) => "22P04",
            Error::CharacterNotInRepertoire(_) => "22021",
            Error::DatatypeMismatch(_) => "42804",
            Error::ProtocolViolation(_) => "08P01",
            Error::InvalidColumnReference(_) => "42P10",
            Error::WrongObjectType(_) => "42809",
            Error::ProgramLimitExceeded(_) => "54000",
            Error::DependentObjects(_) => "2BP01",
            Error::NotInPrerequisiteState(_) => "55000",
            Error::NullValueNotAllowed(_) => "22004",
            Error::Config(_) => "F0000",
            Error::Internal(_) => "XX000",
            Error::DataFusion(e) => datafusion_sqlstate(e),
        }
    }
}

/// Classify a DataFusion error by its root cause and, where DataFusion only gives prose, by the
/// stable wording of its messages.
fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    let root = e.find_root();
    match root {
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(ours) => ours.sqlstate(),
            None => "XX000",
        },
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::Internal(_) => "XX000",
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => "58030",
        DataFusionError::ArrowError(arrow_err, _) => match arrow_err.as_ref() {
            ArrowError::DivideByZero => "22012",
            ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
            ArrowError::ComputeError(m) if m.contains("overflow") => "22003",
            ArrowError::ArithmeticOverflow(_) => "22003",
            ArrowError::InvalidArgumentError(m) if m.contains("non-nullable") => "23502",
            _ => "22000",
        },
        DataFusionError::SchemaError(schema_err, _) => {
            use datafusion::common::SchemaError;
            match schema_err.as_ref() {
                SchemaError::FieldNotFound { .. } => "42703",
                SchemaError::AmbiguousReference { .. } => "42702",
                SchemaError::DuplicateQualifiedField { .. }
                | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
            }
        }
        DataFusionError::Plan(msg) | DataFusionError::Execution(msg) => classify_message(msg),
        _ => "XX000",
    }
}

fn classify_message(msg: &str) -> &'static str {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("table") && (lower.contains("not found") || lower.contains("doesn't exist")) {
        "42P01"
    } else if lower.contains("invalid function")
        || lower.contains("function") && lower.contains("not found")
    {
        "42883"
    } else if lower.contains("non-nullable") {
        "23502"
    } else if lower.contains("already exists") {
        "42P07"
    } else if lower.contains("divide by zero") || lower.contains("division by zero") {
        "22012"
    } else if lower.contains("cannot be cast")
        || lower.contains("cast error")
        || lower.contains("cannot cast")
        || lower.contains("failed to parse")
        || lower.contains("parser error")
        || lower.contains("invalid input syntax")
    {
        "22P02"
    } else if lower.contains("no function matches")
        || lower.contains("coercion")
        || lower.contains("does not support")
        || lower.contains("type")
    {
        "42804"
    } else {
        "42000"
    }
}
