//! Session settings (PostgreSQL GUCs): what `SET`, `RESET`, `SHOW`, `current_setting` and
//! `set_config` read and write.
//!
//! Each session owns one [`Settings`] behind an `Arc<RwLock<..>>`, shared with the SQL functions
//! `current_setting`/`set_config` registered on that session's DataFusion state, so a value set by
//! either path is seen by both. Names are case-insensitive, as in PostgreSQL. Parameters that
//! PostgreSQL reports to the client (ParameterStatus) are marked, so the server can send a
//! ParameterStatus message after they change.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

/// The server version EddyDB reports: psql chooses its catalog queries by this number.
pub const SERVER_VERSION: &str = "16.6";
/// `server_version_num` matching [`SERVER_VERSION`].
pub const SERVER_VERSION_NUM: &str = "160006";

/// One known parameter: its canonical name, default and whether clients are told of changes.
#[derive(Debug, Clone, Copy)]
struct ParamSpec {
    name: &'static str,
    default: &'static str,
    reported: bool,
    read_only: bool,
}

const fn param(name: &'static str, default: &'static str, reported: bool) -> ParamSpec {
    ParamSpec {
        name,
        default,
        reported,
        read_only: false,
    }
}

const fn read_only(name: &'static str, default: &'static str, reported: bool) -> ParamSpec {
    ParamSpec {
        name,
        default,
        reported,
        read_only: true,
    }
}

/// The parameters EddyDB knows, with PostgreSQL's defaults.
const PARAMS: &[ParamSpec] = &[
    param("application_name", "", true),
    param("bytea_output", "hex", false),
    param("client_encoding", "UTF8", true),
    param("client_min_messages", "notice", false),
    param("DateStyle", "ISO, MDY", true),
    param("default_transaction_isolation", "read committed", false),
    param("default_transaction_read_only", "off", true),
    param("extra_float_digits", "1", false),
    read_only("in_hot_standby", "off", true),
    read_only("integer_datetimes", "on", true),
    param("IntervalStyle", "postgres", true),
    read_only("is_superuser", "on", true),
    param("lc_messages", "C", false),
    param("lc_monetary", "C", false),
    param("lc_numeric", "C", false),
    param("lc_time", "C", false),
    read_only("max_identifier_length", "63", false),
    param("search_path", "\"$user\", public", true),
    read_only("server_encoding", "UTF8", true),
    read_only("server_version", SERVER_VERSION, true),
    read_only("server_version_num", SERVER_VERSION_NUM, false),
    param("session_authorization", "eddy", true),
    param("standard_conforming_strings", "on", true),
    param("statement_timeout", "0", false),
    param("idle_in_transaction_session_timeout", "0", false),
    param("lock_timeout", "0", false),
    param("TimeZone", "UTC", true),
    param("transaction_isolation", "read committed", false),
    param("transaction_read_only", "off", false),
    param("geqo", "on", false),
    param("jit", "off", false),
    param("synchronous_commit", "on", false),
    param("row_security", "on", false),
    param("work_mem", "4MB", false),
];

fn spec(name: &str) -> Option<&'static ParamSpec> {
    let canonical = canonical_alias(name);
    PARAMS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(canonical))
}

/// PostgreSQL accepts a few spellings for the same parameter.
fn canonical_alias(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "time zone" | "time_zone" | "timezone" => "TimeZone",
        "datestyle" => "DateStyle",
        "intervalstyle" => "IntervalStyle",
        "transaction isolation level" => "transaction_isolation",
        "names" => "client_encoding",
        "session authorization" => "session_authorization",
        _ => name,
    }
}

/// A session's parameter values. Unknown names with a dot (`myapp.tenant`) are custom
/// parameters, as in PostgreSQL; other unknown names are an error.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<String, String>,
}

/// Settings shared between a session and the SQL functions registered for it.
pub type SharedSettings = Arc<RwLock<Settings>>;

impl Settings {
    /// Settings with every parameter at its default, then the client's startup parameters.
    pub fn new<'a>(startup: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut settings = Settings::default();
        for (name, value) in startup {
            // Startup parameters that are not settings (user, database, options) are ignored.
            if spec(name).is_some_and(|s| !s.read_only) {
                let _ = settings.set(name, value);
            }
        }
        settings
    }

    /// The current value of `name`, or an error naming the unknown parameter.
    pub fn get(&self, name: &str) -> Result<String> {
        let canonical = canonical_alias(name);
        if let Some(v) = self.values.get(&canonical.to_ascii_lowercase()) {
            return Ok(v.clone());
        }
        match spec(canonical) {
            Some(p) => Ok(p.default.to_string()),
            None => Err(Error::InvalidParameter(format!(
                "unrecognized configuration parameter \"{name}\""
            ))),
        }
    }

    /// Like [`Settings::get`], but `None` for unknown parameters (`current_setting(name, true)`).
    pub fn get_opt(&self, name: &str) -> Option<String> {
        self.get(name).ok()
    }

    /// Set `name` to `value`. Returns the canonical name and whether clients must be told
    /// (ParameterStatus).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(String, bool)> {
        let canonical = canonical_alias(name);
        let (canonical, reported) = match spec(canonical) {
            Some(p) if p.read_only => {
                return Err(Error::InvalidValue(format!(
                    "parameter \"{}\" cannot be changed",
                    p.name
                )));
            }
            Some(p) => (p.name.to_string(), p.reported),
            None if canonical.contains('.') => (canonical.to_string(), false),
            None => {
                return Err(Error::InvalidParameter(format!(
                    "unrecognized configuration parameter \"{name}\""
                )));
            }
        };
        let value = normalize_value(&canonical, value)?;
        self.values.insert(canonical.to_ascii_lowercase(), value);
        Ok((canonical, reported))
    }

    /// Back to the default. Returns the canonical name and whether it is reported.
    pub fn reset(&mut self, name: &str) -> Result<(String, bool)> {
        let canonical = canonical_alias(name);
        match spec(canonical) {
            Some(p) => {
                self.values.remove(&p.name.to_ascii_lowercase());
                Ok((p.name.to_string(), p.reported))
            }
            None if canonical.contains('.') => {
                self.values.remove(&canonical.to_ascii_lowercase());
                Ok((canonical.to_string(), false))
            }
            None => Err(Error::InvalidParameter(format!(
                "unrecognized configuration parameter \"{name}\""
            ))),
        }
    }

    /// Put parameters back to their values in `earlier` (all of them, or only the lowercase
    /// names in `only`): how a transaction's SETs are undone. Returns the canonical name of every
    /// parameter that changed and whether it is reported.
    pub fn restore_from(
        &mut self,
        earlier: &Settings,
        only: Option<&BTreeSet<String>>,
    ) -> Vec<(String, bool)> {
        let keys: BTreeSet<String> = self
            .values
            .keys()
            .chain(earlier.values.keys())
            .filter(|k| only.is_none_or(|names| names.contains(*k)))
            .cloned()
            .collect();
        let mut changed = Vec::new();
        for key in keys {
            let before = earlier.values.get(&key);
            if self.values.get(&key) == before {
                continue;
            }
            match before {
                Some(value) => self.values.insert(key.clone(), value.clone()),
                None => self.values.remove(&key),
            };
            changed.push(match spec(&key) {
                Some(p) => (p.name.to_string(), p.reported),
                None => (key, false),
            });
        }
        changed
    }

    /// `RESET ALL`: the reported parameters that changed, to announce again.
    pub fn reset_all(&mut self) -> Vec<(String, String)> {
        let changed: Vec<String> = self.values.keys().cloned().collect();
        self.values.clear();
        changed
            .into_iter()
            .filter_map(|k| spec(&k).filter(|p| p.reported))
            .map(|p| (p.name.to_string(), p.default.to_string()))
            .collect()
    }

    /// Every known parameter and its value, for `SHOW ALL` and `pg_settings`.
    pub fn all(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = PARAMS
            .iter()
            .map(|p| (p.name.to_string(), self.get(p.name).unwrap_or_default()))
            .collect();
        for (k, v) in &self.values {
            if spec(k).is_none() {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    /// `statement_timeout` in milliseconds; 0 means none.
    pub fn statement_timeout_ms(&self) -> u64 {
        self.get("statement_timeout")
            .ok()
            .and_then(|v| parse_duration_ms(&v))
            .unwrap_or(0)
    }
}

/// Validate and normalise a value the way PostgreSQL displays it afterwards.
fn normalize_value(name: &str, value: &str) -> Result<String> {
    let value = value.trim();
    match name {
        "statement_timeout" | "idle_in_transaction_session_timeout" | "lock_timeout" => {
            let ms = parse_duration_ms(value).ok_or_else(|| {
                Error::InvalidValue(format!(
                    "invalid value for parameter \"{name}\": \"{value}\""
                ))
            })?;
            Ok(if ms == 0 {
                "0".to_string()
            } else {
                format!("{ms}ms")
            })
        }
        "extra_float_digits" => {
            let n: i32 = value.parse().map_err(|_| {
                Error::InvalidValue(format!(
                    "invalid value for parameter \"extra_float_digits\": \"{value}\""
                ))
            })?;
            if !(-15..=3).contains(&n) {
                return Err(Error::InvalidValue(format!(
                    "{n} is outside the valid range for parameter \"extra_float_digits\" (-15 .. 3)"
                )));
            }
            Ok(n.to_string())
        }
        "client_encoding" => {
            let upper = value.to_ascii_uppercase().replace('-', "");
            if upper == "UTF8" || upper == "UNICODE" {
                Ok("UTF8".to_string())
            } else {
                Err(Error::Unsupported(format!(
                    "client encoding \"{value}\" (EddyDB speaks UTF8 only)"
                )))
            }
        }
        "DateStyle" => {
            // EddyDB always writes ISO dates; accept the usual spellings and keep the ordering part.
            let upper = value.to_ascii_uppercase();
            let order = if upper.contains("DMY") {
                "DMY"
            } else if upper.contains("YMD") {
                "YMD"
            } else {
                "MDY"
            };
            if upper.contains("SQL") || upper.contains("GERMAN") || upper.contains("POSTGRES") {
                return Err(Error::Unsupported(format!(
                    "DateStyle \"{value}\" (EddyDB writes ISO dates only)"
                )));
            }
            Ok(format!("ISO, {order}"))
        }
        "TimeZone" => {
            let tz = value.trim_matches('\'');
            if tz.eq_ignore_ascii_case("local") || tz.eq_ignore_ascii_case("default") {
                return Ok("UTC".to_string());
            }
            if ["UTC", "GMT", "Z", "Etc/UTC", "Zulu"]
                .iter()
                .any(|utc| tz.eq_ignore_ascii_case(utc))
            {
                return Ok("UTC".to_string());
            }
            // The zone must be one the encoder and DataFusion can apply (IANA names as the tz
            // database spells them, offsets).
            if datafusion::arrow::array::timezone::Tz::from_str(tz).is_err() {
                return Err(Error::InvalidValue(format!(
                    "invalid value for parameter \"TimeZone\": \"{tz}\""
                )));
            }
            Ok(tz.to_string())
        }
        "transaction_isolation" | "default_transaction_isolation" => Ok(value.to_ascii_lowercase()),
        _ => Ok(value.to_string()),
    }
}

/// Parse a PostgreSQL duration setting: a bare number is milliseconds; units us, ms, s, min, h, d.
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'').trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    if num < 0.0 {
        return None;
    }
    Some((num * factor).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_aliases() {
        let mut s = Settings::new([("application_name", "psql")]);
        assert_eq!(s.get("application_name").unwrap(), "psql");
        assert_eq!(s.get("server_version_num").unwrap(), SERVER_VERSION_NUM);
        let (name, reported) = s.set("time zone", "Europe/Lisbon").unwrap();
        assert_eq!((name.as_str(), reported), ("TimeZone", true));
        assert_eq!(s.get("timezone").unwrap(), "Europe/Lisbon");
        assert!(s.get("no_such_thing").is_err());
        assert!(s.set("server_version", "1").is_err());
        s.set("myapp.tenant", "7").unwrap();
        assert_eq!(s.get("MYAPP.TENANT").unwrap(), "7");
    }

    #[test]
    fn statement_timeout_units() {
        let mut s = Settings::default();
        s.set("statement_timeout", "2s").unwrap();
        assert_eq!(s.statement_timeout_ms(), 2000);
        assert_eq!(s.get("statement_timeout").unwrap(), "2000ms");
        s.set("statement_timeout", "150").unwrap();
        assert_eq!(s.statement_timeout_ms(), 150);
        assert!(s.set("statement_timeout", "soon").is_err());
    }
}
