//! Who may connect: trust, SCRAM-SHA-256, and (only when configured) MD5 or cleartext passwords;
//! and TLS.
//!
//! The decision is made per connection at startup. With no users configured, loopback clients
//! are trusted and everyone else is refused. With users, a client proves its password with the
//! configured method (SCRAM-SHA-256 unless `auth.password_method` says otherwise), except that
//! loopback clients are trusted while `auth.trust_loopback` is on. The mechanics of each method
//! are pgwire's; this module chooses one and supplies the passwords.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::md5pass::{Md5PasswordAuth, hash_md5_password};
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthDriver, AuthOutcome, AuthSource, LoginInfo, Password, ServerParameterProvider,
    StartupHandler, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, ConnectionManager};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::config::{AuthConfig, PasswordMethod};
use crate::server::settings::Settings;

/// SCRAM iteration count, as PostgreSQL's default.
const SCRAM_ITERATIONS: usize = 4096;

/// Sends the ParameterStatus set at the end of startup, from the session's own settings so
/// what the client is told matches what `SHOW` will say.
#[derive(Debug, Default)]
pub struct ParameterProvider;

impl ServerParameterProvider for ParameterProvider {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let metadata = client.metadata();
        let mut settings = Settings::new(metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(user) = metadata.get("user") {
            let _ = settings.set("session_authorization", user);
        }
        let reported = [
            "server_version",
            "server_encoding",
            "client_encoding",
            "application_name",
            "DateStyle",
            "IntervalStyle",
            "TimeZone",
            "integer_datetimes",
            "standard_conforming_strings",
            "is_superuser",
            "session_authorization",
            "default_transaction_read_only",
            "in_hot_standby",
            "search_path",
        ];
        Some(
            reported
                .iter()
                .filter_map(|name| settings.get(name).ok().map(|v| (name.to_string(), v)))
                .collect(),
        )
    }
}

/// Users and their passwords in the form each method needs.
#[derive(Debug)]
struct UserPasswords {
    method: PasswordMethod,
    /// name -> (cleartext password, SCRAM salt, SCRAM salted password)
    users: HashMap<String, (String, Vec<u8>, Vec<u8>)>,
}

impl UserPasswords {
    fn new(config: &AuthConfig) -> Self {
        let users = config
            .users
            .iter()
            .map(|u| {
                let salt: [u8; 16] = rand_salt();
                let salted = gen_salted_password(&u.password, &salt, SCRAM_ITERATIONS);
                (u.name.clone(), (u.password.clone(), salt.to_vec(), salted))
            })
            .collect();
        UserPasswords {
            method: config.password_method,
            users,
        }
    }
}

fn rand_salt<const N: usize>() -> [u8; N] {
    let mut salt = [0u8; N];
    for b in &mut salt {
        *b = rand::random();
    }
    salt
}

#[async_trait]
impl AuthSource for UserPasswords {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let Some((password, scram_salt, salted)) = self.users.get(user) else {
            return Err(PgWireError::InvalidPassword(user.to_string()));
        };
        Ok(match self.method {
            PasswordMethod::ScramSha256 => Password::new(Some(scram_salt.clone()), salted.clone()),
            PasswordMethod::Md5 => {
                let salt: [u8; 4] = rand_salt();
                let hash = hash_md5_password(user, password, &salt);
                Password::new(Some(salt.to_vec()), hash.into_bytes())
            }
            PasswordMethod::Cleartext => Password::new(None, password.as_bytes().to_vec()),
        })
    }
}

/// Chooses trust or a password method for each connection, then lets pgwire run it.
pub struct Startup {
    driver: AuthDriver<Arc<ParameterProvider>>,
    password_auth: Option<Arc<dyn AuthMechanismFactory>>,
    trust_loopback: bool,
}

impl Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("password_auth", &self.password_auth.is_some())
            .field("trust_loopback", &self.trust_loopback)
            .finish()
    }
}

impl Startup {
    /// `tls_cert_pem`, when TLS is on, enables SCRAM-SHA-256-PLUS channel binding.
    pub fn new(
        config: &AuthConfig,
        connections: Arc<ConnectionManager>,
        tls_cert_pem: Option<&[u8]>,
    ) -> crate::Result<Self> {
        let driver =
            AuthDriver::new(Arc::new(ParameterProvider)).with_connection_manager(connections);
        let password_auth: Option<Arc<dyn AuthMechanismFactory>> = if config.users.is_empty() {
            None
        } else {
            let source = Arc::new(UserPasswords::new(config));
            Some(match config.password_method {
                PasswordMethod::ScramSha256 => {
                    let mut scram = ScramAuth::new(source);
                    if let Some(pem) = tls_cert_pem {
                        scram.configure_certificate(pem).map_err(|e| {
                            crate::Error::Config(format!("tls.cert for SCRAM channel binding: {e}"))
                        })?;
                    }
                    Arc::new(SaslMechanisms::new(vec![Arc::new(scram)]))
                }
                PasswordMethod::Md5 => Arc::new(Md5PasswordAuth::new(source)),
                PasswordMethod::Cleartext => Arc::new(CleartextPasswordAuth::new(source)),
            })
        };
        Ok(Startup {
            driver,
            password_auth,
            trust_loopback: config.trust_loopback,
        })
    }
}

fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        "28000".to_string(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let loopback = client.socket_addr().ip().is_loopback();
                match &self.password_auth {
                    Some(_) if loopback && self.trust_loopback => {
                        self.driver.complete_authentication(client, None).await
                    }
                    Some(factory) => {
                        match self
                            .driver
                            .begin_authentication(client, factory.create())
                            .await?
                        {
                            AuthOutcome::InProgress => Ok(()),
                            AuthOutcome::Authenticated { final_message, .. } => {
                                self.driver
                                    .complete_authentication(client, final_message)
                                    .await
                            }
                        }
                    }
                    None if loopback => self.driver.complete_authentication(client, None).await,
                    None => Err(refused(format!(
                        "no password is configured for connections from {}: add [[auth.users]] \
                         to the EddyDB configuration",
                        client.socket_addr().ip()
                    ))),
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let outcome = match self.driver.advance_authentication(client, message).await {
                    // SCRAM clients leave the user out of their first message (it is in the
                    // startup packet), so the refusal names the startup user instead of "".
                    Err(PgWireError::InvalidPassword(user)) if user.is_empty() => {
                        let login = LoginInfo::from_client_info(client);
                        return Err(PgWireError::InvalidPassword(
                            login.user().unwrap_or_default().to_owned(),
                        ));
                    }
                    outcome => outcome?,
                };
                match outcome {
                    AuthOutcome::InProgress => Ok(()),
                    AuthOutcome::Authenticated { final_message, .. } => {
                        self.driver
                            .complete_authentication(client, final_message)
                            .await
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

/// A TLS acceptor from PEM files, or None when TLS is not configured.
pub fn tls_acceptor(
    tls: &crate::config::TlsConfig,
) -> crate::Result<Option<(pgwire::tokio::TlsAcceptor, Vec<u8>)>> {
    let (Some(cert_path), Some(key_path)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(cert_path)?;
    let key_pem = std::fs::read(key_path)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::Error::Config(format!("tls.cert {}: {e}", cert_path.display())))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| crate::Error::Config(format!("tls.key {}: {e}", key_path.display())))?
        .ok_or_else(|| {
            crate::Error::Config(format!(
                "tls.key {}: no private key found",
                key_path.display()
            ))
        })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| crate::Error::Config(format!("TLS certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some((
        pgwire::tokio::TlsAcceptor::from(Arc::new(config)),
        cert_pem,
    )))
}
