//! EddyDB: a streaming SQL database in one binary, speaking the PostgreSQL wire protocol.
//!
//! How a statement travels:
//!
//! - [`server`] accepts PostgreSQL connections (pgwire): startup, authentication (trust, SCRAM,
//!   optionally MD5/cleartext), TLS, the simple and extended query protocols, cancel requests.
//!   Each connection gets a [`server::session::Session`] holding its settings, transaction state
//!   and its own DataFusion `SessionState`. It is also the only place where an [`Error`] becomes
//!   a PostgreSQL `ErrorResponse` with a SQLSTATE.
//! - [`parser`] splits the query string into statements and recognises the ones EddyDB handles
//!   itself (SET/SHOW/RESET, transactions, ...) from the ones DataFusion plans.
//! - [`planner`] turns a statement into an action: session commands, catalog changes (DDL), or a
//!   DataFusion logical plan that is executed into a stream of Arrow record batches.
//! - [`catalog`] owns the databases' objects (schemas, tables) and exposes them to DataFusion as
//!   catalog/schema/table providers, plus the PostgreSQL emulation clients rely on: `pg_catalog`,
//!   a PostgreSQL-flavoured `information_schema`, and functions such as `version()`.
//! - [`server::encode`] turns Arrow batches into PostgreSQL rows, text or binary, with built-in
//!   type OIDs chosen by [`catalog::pg_types`].
//!
//! - [`storage`] keeps streams (durable log, hot tier in memory, Parquet cold tier) and tables.
//! - [`streaming`] keeps materialized views up to date: each view's plan compiled to a dataflow of
//!   operators over change batches, fed by its inputs' history and then their live changes, with
//!   watermarks, windows, joins and `SUBSCRIBE`.
//!
//! - [`connectors`] run the sources that feed streams from outside (the Nexmark generator).
//!
//! [`config`] loads configuration (flags, `EDDY_*` environment, TOML file) and [`telemetry`] sets
//! up logging. `main.rs` only wires these together and calls [`server::run`].

pub mod catalog;
pub mod config;
pub mod connectors;
pub mod error;
pub mod ingest;
pub mod ml;
pub mod parser;
pub mod planner;
pub mod server;
pub mod storage;
pub mod streaming;
pub mod telemetry;

pub use error::{Error, Result};
