//! Configuration: built-in defaults, then an optional TOML file, then `EDDY_*` environment
//! variables, then command-line flags — later sources win.
//!
//! `Config::load` gathers every problem it finds (unparsable values, unreadable files, a TLS key
//! without a certificate, ...) and returns them all at once, so an operator fixes a broken
//! configuration in one pass; `main` prints them and exits with status 1. Nested keys map to
//! environment variables with a double underscore: `[auth] trust_loopback` is `EDDY_AUTH__TRUST_LOOPBACK`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Command-line flags. Every flag can also be given in the TOML file or as `EDDY_<NAME>`.
#[derive(Debug, Parser, Default, Serialize)]
#[command(
    name = "eddydb",
    version,
    about = "EddyDB: a streaming SQL database that speaks the PostgreSQL wire protocol",
    after_help = CONFIG_HELP
)]
pub struct Cli {
    /// Address for PostgreSQL clients (psql, drivers, Grafana) [default: 127.0.0.1:5433]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,

    /// Address for HTTP: ingest, metrics, health [default: 127.0.0.1:8433]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,

    /// Directory for the catalog, logs and (by default) the cold tier, created at start [default: ./eddydb-data]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Object store for the cold tier: s3://bucket/prefix (AWS_* variables for credentials,
    /// region, endpoint) or file:///dir [default: <data-dir>/cold]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_store: Option<String>,

    /// TOML configuration file; values in it are overridden by EDDY_* variables and flags
    #[arg(long, value_name = "FILE", env = "EDDY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info`, `eddydb=debug` [default: info; RUST_LOG also works]
    #[arg(long, value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// Log format: `text` or `json` [default: text]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,

    /// PEM certificate chain for TLS (with --tls-key); enables `sslmode=require`
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (with --tls-cert)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub tls_key: Option<PathBuf>,

    /// Also run the demo: a generated auction site with live views and a model (sql/demo)
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub demo: bool,
}

const CONFIG_HELP: &str = "\
CONFIGURATION
  Sources, later ones win: built-in defaults, the TOML file (--config or EDDY_CONFIG),
  environment variables EDDY_<KEY> (nested keys joined by '__'), command-line flags.

  listen = \"127.0.0.1:5433\"          EDDY_LISTEN           PostgreSQL protocol address
  http_listen = \"127.0.0.1:8433\"     EDDY_HTTP_LISTEN      HTTP address (health, ingest, metrics)
  data_dir = \"./eddydb-data\"         EDDY_DATA_DIR         where data is kept
  log_level = \"info\"                 EDDY_LOG_LEVEL        tracing filter (RUST_LOG overrides)
  log_format = \"text\"                EDDY_LOG_FORMAT       text or json
  object_store = \"s3://bucket/eddy\"  EDDY_OBJECT_STORE     cold tier (default: <data_dir>/cold)
  demo = false                       EDDY_DEMO             set up the demo (sql/demo) at start
  [storage]
  sync = \"fsync\"                     EDDY_STORAGE__SYNC    fsync: acknowledge after fsync (group
                                     commit); none: after the OS has the write (survives a
                                     killed server, not a power loss)
  segment_bytes = 67108864           log segment size
  hot_max_bytes = 536870912          memory for the hot tier of all streams; beyond it writers
                                     wait for a flush
  flush_bytes = 67108864             flush a stream's hot tier to Parquet at this size ...
  flush_age_ms = 60000               ... or when its oldest row is this old
  maintenance_interval_ms = 1000     how often flush, compaction and retention run
  compact_min_files = 8              merge a partition's small files when it has this many
  compact_target_bytes = 134217728   files smaller than this count as small
  [streaming]
  checkpoint_interval_ms = 5000      EDDY_STREAMING__CHECKPOINT_INTERVAL_MS   how often views of
                                     streams checkpoint their state to the object store (0: off)
  verify_snapshots = false           EDDY_STREAMING__VERIFY_SNAPSHOTS   after every input batch,
                                     snapshot and restore each view's state (slow; for tests)
  [auth]
  trust_loopback = true              EDDY_AUTH__TRUST_LOOPBACK  loopback clients need no password
  password_method = \"scram-sha-256\" EDDY_AUTH__PASSWORD_METHOD scram-sha-256, or (weaker, only
                                     if you must) md5 or cleartext
  [[auth.users]]                     users who may log in with a password (SCRAM-SHA-256)
  name = \"eddy\"
  password = \"secret\"
  [tls]
  cert = \"server.crt\"                EDDY_TLS__CERT        PEM certificate chain (or --tls-cert)
  key = \"server.key\"                 EDDY_TLS__KEY         PEM private key (or --tls-key)

AUTHENTICATION
  With no users configured, loopback clients are trusted and other clients are refused.
  With users, clients authenticate with SCRAM-SHA-256 (MD5 or cleartext only if chosen);
  loopback clients are trusted unless auth.trust_loopback = false.";

/// The whole configuration after all sources are merged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub http_listen: String,
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub object_store: Option<String>,
    pub storage: StorageConfig,
    pub streaming: StreamingConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Set up the demo (`sql/demo/*.sql`) once the server is ready, unless it is already there.
    pub demo: bool,
}

/// How data is kept: the log's durability, the hot tier's size, and when data moves to Parquet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub sync: crate::storage::log::SyncPolicy,
    pub segment_bytes: u64,
    pub hot_max_bytes: usize,
    pub flush_bytes: usize,
    pub flush_age_ms: u64,
    pub maintenance_interval_ms: u64,
    pub compact_min_files: usize,
    pub compact_target_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sync: crate::storage::log::SyncPolicy::Fsync,
            segment_bytes: 64 << 20,
            hot_max_bytes: 512 << 20,
            flush_bytes: 64 << 20,
            flush_age_ms: 60_000,
            maintenance_interval_ms: 1_000,
            compact_min_files: 8,
            compact_target_bytes: 128 << 20,
        }
    }
}

impl StorageConfig {
    pub fn flush_age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.flush_age_ms)
    }

    pub fn maintenance_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.maintenance_interval_ms.max(10))
    }
}

/// How materialized views run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// How often a view that reads only streams checkpoints its state (0: never).
    pub checkpoint_interval_ms: u64,
    /// After every input batch, snapshot each view's operator state and continue from the
    /// restored snapshot (slow; tests use it to prove snapshots lose nothing).
    pub verify_snapshots: bool,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            checkpoint_interval_ms: 5_000,
            verify_snapshots: false,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Who may connect and how they prove it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub trust_loopback: bool,
    pub password_method: PasswordMethod,
    pub users: Vec<UserConfig>,
}

/// How a password is proven. MD5 and cleartext exist for old clients and must be chosen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordMethod {
    #[default]
    ScramSha256,
    Md5,
    Cleartext,
}

/// One user who may log in with a password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

/// TLS for the PostgreSQL listener; both files or neither.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            trust_loopback: true,
            password_method: PasswordMethod::ScramSha256,
            users: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5433".to_string(),
            http_listen: "127.0.0.1:8433".to_string(),
            data_dir: PathBuf::from("./eddydb-data"),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            object_store: None,
            storage: StorageConfig::default(),
            streaming: StreamingConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            demo: false,
        }
    }
}

impl Config {
    /// Merge defaults, the TOML file, the environment and the flags, then validate.
    /// Returns every problem found, not just the first.
    pub fn load(cli: &Cli) -> Result<Config, Vec<String>> {
        Self::load_from(cli, Env::prefixed("EDDY_").split("__").ignore(&["config"]))
    }

    fn load_from(cli: &Cli, env: Env) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            if path.is_file() {
                figment = figment.merge(Toml::file_exact(path));
            } else {
                errors.push(format!("config file {} does not exist", path.display()));
            }
        }
        figment = figment.merge(env).merge(Serialized::defaults(cli));
        if let Some(cert) = &cli.tls_cert {
            figment = figment.merge(("tls.cert", cert));
        }
        if let Some(key) = &cli.tls_key {
            figment = figment.merge(("tls.key", key));
        }
        let config = match figment.extract::<Config>() {
            Ok(config) => config,
            Err(e) => {
                errors.extend(e.into_iter().map(|e| e.to_string()));
                return Err(errors);
            }
        };
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Everything wrong with an otherwise well-formed configuration.
    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (key, addr) in [("listen", &self.listen), ("http_listen", &self.http_listen)] {
            if addr.parse::<SocketAddr>().is_err() {
                errors.push(format!(
                    "{key}: \"{addr}\" is not an address like 127.0.0.1:5433"
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            errors.push(format!(
                "log_level: \"{}\" is not a valid filter: {e}",
                self.log_level
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                for (what, path) in [("tls.cert", cert), ("tls.key", key)] {
                    if !path.is_file() {
                        errors.push(format!("{what}: {} does not exist", path.display()));
                    }
                }
            }
            (Some(_), None) => errors.push("tls.cert is set but tls.key is not".to_string()),
            (None, Some(_)) => errors.push("tls.key is set but tls.cert is not".to_string()),
            (None, None) => {}
        }
        if let Some(url) = &self.object_store
            && let Err(e) = url::Url::parse(url)
        {
            errors.push(format!("object_store: \"{url}\" is not a URL: {e}"));
        }
        let mut seen = std::collections::HashSet::new();
        for user in &self.auth.users {
            if user.name.is_empty() {
                errors.push("auth.users: a user has an empty name".to_string());
            } else if !seen.insert(user.name.as_str()) {
                errors.push(format!(
                    "auth.users: user \"{}\" is listed twice",
                    user.name
                ));
            }
            if user.password.is_empty() {
                errors.push(format!(
                    "auth.users: user \"{}\" has an empty password",
                    user.name
                ));
            }
        }
        errors
    }

    /// The PostgreSQL listener address (validated by [`Config::load`]).
    pub fn listen_addr(&self) -> crate::Result<SocketAddr> {
        parse_addr("listen", &self.listen)
    }

    /// The HTTP listener address (validated by [`Config::load`]).
    pub fn http_listen_addr(&self) -> crate::Result<SocketAddr> {
        parse_addr("http_listen", &self.http_listen)
    }
}

fn parse_addr(key: &str, addr: &str) -> crate::Result<SocketAddr> {
    addr.parse()
        .map_err(|_| crate::Error::Config(format!("{key}: \"{addr}\" is not an address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Env {
        Env::prefixed("EDDY_TEST_UNUSED_PREFIX_")
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::load_from(&Cli::default(), no_env()).expect("defaults load");
        assert_eq!(config.listen, "127.0.0.1:5433");
        assert_eq!(config.http_listen, "127.0.0.1:8433");
        assert_eq!(config.data_dir, PathBuf::from("./eddydb-data"));
    }

    #[test]
    fn file_then_flags_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eddy.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\n[auth]\npassword_method = \"md5\"\n",
        )
        .expect("write");
        let cli = Cli {
            config: Some(path),
            data_dir: Some(PathBuf::from("/tmp/y")),
            ..Cli::default()
        };
        let config = Config::load_from(&cli, no_env()).expect("loads");
        assert_eq!(config.listen, "127.0.0.1:6000");
        assert_eq!(config.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(config.auth.password_method, PasswordMethod::Md5);
    }

    #[test]
    fn every_error_is_reported() {
        let cli = Cli {
            listen: Some("nonsense".into()),
            http_listen: Some("also nonsense".into()),
            tls_cert: Some(PathBuf::from("/no/such/cert.pem")),
            ..Cli::default()
        };
        let errors = Config::load_from(&cli, no_env()).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("eddy.toml");
        std::fs::write(&path, "listne = \"127.0.0.1:6000\"\n").expect("write");
        let cli = Cli {
            config: Some(path),
            ..Cli::default()
        };
        let errors = Config::load_from(&cli, no_env()).expect_err("typo is an error");
        assert!(errors[0].contains("listne"), "{errors:?}");
    }
}
