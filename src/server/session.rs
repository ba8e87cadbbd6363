//! One client session: its settings, its transaction-block state and its DataFusion state.
//!
//! The pgwire handlers parse a query, then call [`Session::execute`] once per statement. The
//! session runs session commands itself (SET/SHOW/RESET, transaction control) and hands
//! DataFusion statements to the [`Engine`]. Alongside the output it reports NOTICE messages and
//! the reported parameters (ParameterStatus) that changed, which the handler forwards.
//!
//! Transactions: every statement is applied atomically on its own as it runs. `BEGIN ... COMMIT`
//! blocks are tracked so clients see the transaction status they expect (`T`, and `E` after an
//! error, when further statements are refused until ROLLBACK), but a block groups nothing:
//! ROLLBACK cannot undo statements already applied, and the session says so in a NOTICE when a
//! block that wrote data is rolled back or a client asks for a stricter isolation level.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use pgwire::api::Type;
use pgwire::messages::response::TransactionStatus;
use pgwire::types::format::FormatOptions;

use crate::error::{Error, Result};
use crate::ingest::RowDecoder;
use crate::parser::Statement;
use crate::planner::{self, Engine, Output, Progress};
use crate::server::settings::{Settings, SharedSettings};
use crate::storage::{IngestPath, Relation};
use crate::streaming::subscribe::Subscription;

/// Where the session is with respect to a transaction block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Block {
    /// Not in a block: each statement stands alone.
    #[default]
    Idle,
    /// Inside `BEGIN ...`.
    Open,
    /// Inside a block after an error: only ROLLBACK / COMMIT / ROLLBACK TO are accepted.
    Failed,
}

#[derive(Debug, Default)]
struct TransactionState {
    block: Block,
    /// Savepoint names, oldest first, each with the settings when it was made.
    savepoints: Vec<(String, Settings)>,
    /// Statements in the current block that changed data or the catalog.
    writes: usize,
    /// The settings when the block began: ROLLBACK restores them, COMMIT those set LOCAL.
    settings_at_begin: Option<Settings>,
    /// Parameters (lowercase) whose latest change in this block was a SET LOCAL, with the
    /// settings from just before their first SET LOCAL: COMMIT puts them back to that.
    local_settings: BTreeMap<String, Settings>,
}

impl TransactionState {
    /// Where the newest savepoint called `name` is in the stack.
    fn savepoint_position(&self, name: &str) -> Result<usize> {
        self.savepoints
            .iter()
            .rposition(|(s, _)| s == name)
            .ok_or_else(|| Error::NotFound {
                kind: "savepoint",
                name: name.to_string(),
            })
    }
}

/// The result of one statement, with what the client must be told besides.
#[derive(Debug)]
pub struct Executed {
    pub output: Output,
    pub notices: Vec<String>,
    /// Reported parameters whose value changed: (name, new value).
    pub parameter_status: Vec<(String, String)>,
}

impl Executed {
    fn of(output: Output) -> Self {
        Executed {
            output,
            notices: Vec::new(),
            parameter_status: Vec::new(),
        }
    }

    fn command(tag: &str) -> Self {
        Executed::of(Output::Command {
            tag: tag.to_string(),
        })
    }

    fn with_notice(mut self, notice: impl Into<String>) -> Self {
        self.notices.push(notice.into());
        self
    }
}

/// A statement prepared for the extended protocol: parsed, and for DataFusion statements
/// planned once so its parameter and result types can be described without executing it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The text the client sent, for `pg_stat_activity`.
    pub sql: String,
    pub statement: Statement,
    /// Parameter types declared by the client in Parse (None where it sent 0).
    pub declared_types: Vec<Option<Type>>,
    /// Parameter types: declared, else inferred by the planner, else text.
    pub param_types: Vec<Type>,
    /// Result columns, if the statement returns rows.
    pub result_schema: Option<SchemaRef>,
}

/// One connected client's session.
#[derive(Debug)]
pub struct Session {
    engine: Arc<Engine>,
    settings: SharedSettings,
    state: RwLock<SessionState>,
    transaction: Mutex<TransactionState>,
    /// The `COPY ... FROM STDIN` receiving data, between CopyInResponse and CopyDone.
    copy: Mutex<Option<PendingCopy>>,
    /// Cursors over subscriptions (`DECLARE c CURSOR FOR SUBSCRIBE ...`).
    cursors: tokio::sync::Mutex<HashMap<String, Subscription>>,
    /// Where the running statement reports progress (the handler forwards it as NOTICEs).
    progress: Mutex<Progress>,
    /// The session's place in `pg_stat_activity` (none for the server's own sessions).
    backend: Mutex<Option<crate::catalog::activity::Registration>>,
}

/// A COPY FROM STDIN in progress: rows decoded as CopyData arrives, stored at CopyDone.
#[derive(Debug)]
struct PendingCopy {
    relation: Relation,
    decoder: Box<RowDecoder>,
    /// The first error; later data is ignored and CopyDone reports it.
    error: Option<Error>,
}

impl Session {
    /// Send the running statement's progress reports to `progress` (until replaced).
    pub fn set_progress(&self, progress: Progress) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = progress;
    }

    fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new session with the client's startup parameters applied.
    pub fn new<'a>(
        engine: Arc<Engine>,
        startup: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Session {
        let settings = Arc::new(RwLock::new(Settings::new(startup)));
        let mut state = engine.session_state(Arc::clone(&settings));
        apply_time_zone(&mut state, &read(&settings).get_opt("TimeZone"));
        Session {
            engine,
            settings,
            state: RwLock::new(state),
            transaction: Mutex::new(TransactionState::default()),
            copy: Mutex::new(None),
            cursors: tokio::sync::Mutex::new(HashMap::new()),
            progress: Mutex::new(Progress::none()),
            backend: Mutex::new(None),
        }
    }

    /// List the session in `pg_stat_activity` as `backend`; `pg_backend_pid()` returns its pid.
    pub fn set_backend(&self, backend: crate::catalog::activity::Backend) {
        let pid = backend.pid;
        let registration = self.engine.catalog().activity().register(backend);
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(registration);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let _ = datafusion::execution::FunctionRegistry::register_udf(
            &mut *state,
            Arc::new(crate::catalog::pg_functions::pg_backend_pid(pid)),
        );
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The listed backend, if any.
    pub fn backend(&self) -> Option<Arc<crate::catalog::activity::Backend>> {
        self.backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|r| Arc::clone(&r.backend))
    }

    /// Start receiving COPY data for `relation`.
    pub fn begin_copy(&self, relation: Relation, decoder: Box<RowDecoder>) {
        *self.copy.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingCopy {
            relation,
            decoder,
            error: None,
        });
    }

    /// One CopyData message. A decoding error is kept for CopyDone: the client is still
    /// sending, and PostgreSQL reports the error once the copy ends.
    pub fn copy_data(&self, data: &[u8]) {
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(copy) = copy.as_mut()
            && copy.error.is_none()
            && let Err(e) = copy.decoder.push(data)
        {
            copy.error = Some(e);
        }
    }

    /// CopyDone: store every row atomically, or none; returns the row count.
    pub async fn finish_copy(&self) -> Result<u64> {
        let copy = self.copy.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(copy) = copy else {
            return Err(Error::ProtocolViolation(
                "CopyDone without a COPY in progress".into(),
            ));
        };
        let result = match copy.error {
            Some(e) => Err(e),
            None => match copy.decoder.finish() {
                Ok(batches) => copy.relation.insert(batches, IngestPath::Copy).await,
                Err(e) => Err(e),
            },
        };
        if result.is_err() {
            self.statement_failed();
        }
        result
    }

    /// CopyFail: the client gave up; nothing is stored.
    pub fn abort_copy(&self) {
        self.copy.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.statement_failed();
    }

    /// The wire-protocol transaction status for ReadyForQuery.
    pub fn transaction_status(&self) -> TransactionStatus {
        match self.lock_transaction().block {
            Block::Idle => TransactionStatus::Idle,
            Block::Open => TransactionStatus::Transaction,
            Block::Failed => TransactionStatus::Error,
        }
    }

    /// A statement failed: inside a block, the block is now failed.
    pub fn statement_failed(&self) {
        let mut tx = self.lock_transaction();
        if tx.block == Block::Open {
            tx.block = Block::Failed;
        }
    }

    /// How values are rendered as text for this session (DateStyle, TimeZone, ...).
    pub fn format_options(&self) -> FormatOptions {
        let settings = read(&self.settings);
        let mut options = FormatOptions::default();
        let get = |name: &str| settings.get(name).unwrap_or_default();
        options.date_style = get("DateStyle");
        options.interval_style = get("IntervalStyle");
        options.bytea_output = get("bytea_output");
        options.time_zone = get("TimeZone");
        options.extra_float_digits = get("extra_float_digits").parse().unwrap_or(1);
        options
    }

    /// `statement_timeout` in milliseconds (0: none).
    pub fn statement_timeout_ms(&self) -> u64 {
        read(&self.settings).statement_timeout_ms()
    }

    /// The `application_name` setting now.
    pub fn application_name(&self) -> Option<String> {
        read(&self.settings).get_opt("application_name")
    }

    /// Parse-time work for the extended protocol.
    pub async fn prepare(
        &self,
        sql: &str,
        statement: Statement,
        declared_types: Vec<Option<Type>>,
    ) -> Result<Prepared> {
        let (param_types, result_schema) = match &statement {
            Statement::DataFusion(ast) => {
                let state = self.state();
                let plan = self.engine.plan(&state, ast, &declared_types).await?;
                let inferred = planner::parameter_types(&plan)?;
                let count = inferred.len().max(declared_types.len());
                let param_types = (0..count)
                    .map(|i| {
                        declared_types
                            .get(i)
                            .cloned()
                            .flatten()
                            .or_else(|| {
                                inferred
                                    .get(i)
                                    .cloned()
                                    .flatten()
                                    .map(|t| crate::catalog::pg_types::pg_type_of(&t))
                            })
                            .unwrap_or(Type::TEXT)
                    })
                    .collect();
                let result_schema = result_schema_of(&plan)
                    .map(|schema| planner::with_postgres_column_names(ast, schema));
                if let Some(schema) = &result_schema {
                    check_column_count(schema)?;
                }
                (param_types, result_schema)
            }
            Statement::Show(name) => (Vec::new(), Some(show_schema(name.as_deref()))),
            Statement::ShowRelations(kind) => match self.engine.show_relations(*kind)? {
                Output::Rows { schema, .. } => (Vec::new(), Some(schema)),
                _ => (Vec::new(), None),
            },
            Statement::Fetch { cursor, .. } => {
                let cursors = self.cursors.lock().await;
                let subscription = cursors.get(cursor).ok_or_else(|| Error::NotFound {
                    kind: "cursor",
                    name: cursor.clone(),
                })?;
                (Vec::new(), Some(subscription.schema()))
            }
            Statement::ShowViews => match self.engine.show_views()? {
                Output::Rows { schema, .. } => (Vec::new(), Some(schema)),
                _ => (Vec::new(), None),
            },
            Statement::ShowModels => (
                Vec::new(),
                Some(crate::planner::models::system_schema("models")),
            ),
            Statement::ShowModelVersions(_) => (
                Vec::new(),
                Some(crate::planner::models::system_schema("model_versions")),
            ),
            Statement::ShowMonitors => (
                Vec::new(),
                Some(crate::planner::monitors::system_schema("model_monitors")),
            ),
            Statement::ShowSinks => (
                Vec::new(),
                Some(crate::connectors::sink::Sinks::system_schema()),
            ),
            Statement::DescribeModel(name) => match self.engine.describe_model(name)? {
                Output::Rows { schema, .. } => (Vec::new(), Some(schema)),
                _ => (Vec::new(), None),
            },
            Statement::CopyTo { query, .. } => {
                // Rows go out as COPY data, not DataRows: no row description, but the query
                // is checked now.
                self.engine.plan(&self.state(), query, &[]).await?;
                (Vec::new(), None)
            }
            _ => (Vec::new(), None),
        };
        Ok(Prepared {
            sql: sql.to_string(),
            statement,
            declared_types,
            param_types,
            result_schema,
        })
    }

    /// Execute one statement with bound parameter values.
    pub async fn execute(
        &self,
        statement: &Statement,
        declared_types: &[Option<Type>],
        params: Vec<ScalarValue>,
    ) -> Result<Executed> {
        self.check_not_failed(statement)?;
        let executed = match statement {
            Statement::DataFusion(ast) => {
                let state = self.state();
                let plan = self.engine.plan(&state, ast, declared_types).await?;
                let plan = planner::bind_parameters(plan, params)?;
                let executed = match planner::on_conflict(ast) {
                    Some(on) => self.engine.upsert(&state, plan, on).await?,
                    None => self.engine.execute(&state, plan).await?,
                };
                let output = match executed {
                    Output::Rows {
                        schema,
                        batches,
                        verb,
                    } => Output::Rows {
                        schema: check_column_count(&planner::with_postgres_column_names(
                            ast, schema,
                        ))?,
                        batches,
                        verb,
                    },
                    command => command,
                };
                if matches!(output, Output::Command { .. }) {
                    self.lock_transaction().writes += 1;
                }
                Executed::of(output)
            }
            Statement::Set { name, value, local } => self.set(name, value.as_deref(), *local)?,
            Statement::Reset(Some(name)) => {
                let (canonical, reported) = write(&self.settings).reset(name)?;
                let mut executed = Executed::command("RESET");
                self.after_setting_change(&canonical, reported, &mut executed)?;
                executed
            }
            Statement::Reset(None) => {
                let changed = write(&self.settings).reset_all();
                let mut executed = Executed::command("RESET");
                for (name, _) in changed {
                    self.after_setting_change(&name, true, &mut executed)?;
                }
                executed
            }
            Statement::Show(name) => Executed::of(self.show(name.as_deref())?),
            Statement::Begin { isolation } => self.begin(isolation.as_deref()),
            Statement::Commit => self.commit(),
            Statement::Rollback => self.rollback(),
            Statement::Savepoint(name) => self.savepoint(name)?,
            Statement::ReleaseSavepoint(name) => self.release(name)?,
            Statement::RollbackToSavepoint(name) => self.rollback_to(name)?,
            Statement::SetTransaction { isolation } => {
                let executed = Executed::command("SET");
                match isolation_notice(isolation.as_deref()) {
                    Some(notice) => executed.with_notice(notice),
                    None => executed,
                }
            }
            Statement::NoOp { tag } => Executed::command(tag),
            Statement::CreateStream(create) => {
                self.lock_transaction().writes += 1;
                Executed::of(self.engine.create_stream(&self.state(), create).await?)
            }
            Statement::DropStream { names, if_exists } => {
                self.lock_transaction().writes += 1;
                Executed::of(self.engine.drop_streams(names, *if_exists).await?)
            }
            Statement::AlterStream { name, set, reset } => {
                self.lock_transaction().writes += 1;
                Executed::of(self.engine.alter_stream(name, set, reset).await?)
            }
            Statement::ShowRelations(kind) => Executed::of(self.engine.show_relations(*kind)?),
            Statement::CreateView(create) => {
                self.lock_transaction().writes += 1;
                Executed::of(
                    self.engine
                        .create_view(&self.state(), create, &self.progress())
                        .await?,
                )
            }
            Statement::ExplainCreateView(create) => Executed::of(
                self.engine
                    .explain_create_view(&self.state(), create)
                    .await?,
            ),
            Statement::DropView { names, if_exists } => {
                self.lock_transaction().writes += 1;
                Executed::of(self.engine.drop_views(names, *if_exists).await?)
            }
            Statement::ShowViews => Executed::of(self.engine.show_views()?),
            Statement::ExplainView(name) => Executed::of(self.engine.explain_view(name)?),
            Statement::Subscribe(subscribe) => {
                let subscription = self.engine.subscribe(&self.state(), subscribe).await?;
                Executed::of(Output::Subscribe(Box::new(subscription)))
            }
            Statement::DeclareSubscribe { cursor, subscribe } => {
                let subscription = self.engine.subscribe(&self.state(), subscribe).await?;
                let mut cursors = self.cursors.lock().await;
                if cursors.contains_key(cursor) {
                    return Err(Error::AlreadyExists {
                        kind: "cursor",
                        name: cursor.clone(),
                    });
                }
                cursors.insert(cursor.clone(), subscription);
                Executed::command("DECLARE CURSOR")
            }
            Statement::Fetch {
                cursor,
                count,
                timeout,
            } => {
                let mut cursors = self.cursors.lock().await;
                let subscription = cursors.get_mut(cursor).ok_or_else(|| Error::NotFound {
                    kind: "cursor",
                    name: cursor.clone(),
                })?;
                let schema = subscription.schema();
                let batches = subscription
                    .fetch(count.unwrap_or(usize::MAX), *timeout)
                    .await?;
                Executed::of(Output::Rows {
                    schema,
                    batches,
                    verb: "FETCH",
                })
            }
            Statement::Checkpoint => Executed::of(self.engine.checkpoint().await?),
            Statement::CreateModel(create) => {
                let (output, notices) = self
                    .engine
                    .create_model(&self.state(), create, &self.progress())
                    .await?;
                Executed {
                    notices,
                    ..Executed::of(output)
                }
            }
            Statement::RetrainModel(retrain) => {
                let (output, notices) = self
                    .engine
                    .retrain_model(&self.state(), retrain, &self.progress())
                    .await?;
                Executed {
                    notices,
                    ..Executed::of(output)
                }
            }
            Statement::DropModel { names, if_exists } => {
                Executed::of(self.engine.drop_models(names, *if_exists).await?)
            }
            Statement::AlterModel { name, action } => {
                Executed::of(self.engine.alter_model(name, action)?)
            }
            Statement::ShowModels => Executed::of(self.engine.show_models()?),
            Statement::ShowModelVersions(name) => {
                Executed::of(self.engine.show_model_versions(name)?)
            }
            Statement::DescribeModel(name) => Executed::of(self.engine.describe_model(name)?),
            Statement::CreateMonitor(create) => {
                let (output, notices) = self
                    .engine
                    .create_monitor(&self.state(), create, &self.progress())
                    .await?;
                Executed {
                    notices,
                    ..Executed::of(output)
                }
            }
            Statement::DropMonitor { names, if_exists } => {
                Executed::of(self.engine.drop_monitors(names, *if_exists).await?)
            }
            Statement::ShowMonitors => Executed::of(self.engine.show_monitors()?),
            Statement::CreateSink(create) => Executed::of(self.engine.create_sink(create).await?),
            Statement::DropSink { names, if_exists } => {
                Executed::of(self.engine.drop_sinks(names, *if_exists).await?)
            }
            Statement::ShowSinks => Executed::of(self.engine.show_sinks()?),
            Statement::CloseCursor(cursor) => {
                if self.cursors.lock().await.remove(cursor).is_none() {
                    return Err(Error::NotFound {
                        kind: "cursor",
                        name: cursor.clone(),
                    });
                }
                Executed::command("CLOSE CURSOR")
            }
            Statement::CopyFrom {
                table,
                columns,
                format,
            } => {
                self.lock_transaction().writes += 1;
                Executed::of(self.engine.copy_in(table, columns, format).await?)
            }
            Statement::CopyTo { query, format } => {
                let state = self.state();
                let plan = self.engine.plan(&state, query, &[]).await?;
                match self.engine.execute(&state, plan).await? {
                    Output::Rows {
                        schema, batches, ..
                    } => Executed::of(Output::CopyOut {
                        schema: planner::with_postgres_column_names(query, schema),
                        batches,
                        format: format.clone(),
                    }),
                    _ => {
                        return Err(Error::Unsupported(
                            "COPY of a statement without rows".into(),
                        ));
                    }
                }
            }
        };
        Ok(executed)
    }

    fn state(&self) -> SessionState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock_transaction(&self) -> std::sync::MutexGuard<'_, TransactionState> {
        self.transaction.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_not_failed(&self, statement: &Statement) -> Result<()> {
        let failed = self.lock_transaction().block == Block::Failed;
        let allowed = matches!(
            statement,
            Statement::Commit | Statement::Rollback | Statement::RollbackToSavepoint(_)
        );
        if failed && !allowed {
            Err(Error::InFailedTransaction)
        } else {
            Ok(())
        }
    }

    fn set(&self, name: &str, value: Option<&str>, local: bool) -> Result<Executed> {
        if local && self.lock_transaction().block == Block::Idle {
            // As PostgreSQL: outside a block SET LOCAL would last for no time at all.
            return Ok(Executed::command("SET")
                .with_notice("SET LOCAL can only be used in transaction blocks"));
        }
        let before = local.then(|| read(&self.settings).clone());
        let (canonical, reported) = match value {
            Some(value) => write(&self.settings).set(name, value)?,
            None => write(&self.settings).reset(name)?,
        };
        let key = canonical.to_ascii_lowercase();
        let mut tx = self.lock_transaction();
        if let Some(before) = before {
            tx.local_settings.entry(key).or_insert(before);
        } else {
            // A plain SET after SET LOCAL outlives the block, as in PostgreSQL.
            tx.local_settings.remove(&key);
        }
        drop(tx);
        let mut executed = Executed::command("SET");
        self.after_setting_change(&canonical, reported, &mut executed)?;
        Ok(executed)
    }

    /// Undo SETs made since `earlier` was taken (only the lowercase names in `only`, if given),
    /// telling the client about reported parameters that change back.
    fn restore_settings(
        &self,
        earlier: Option<&Settings>,
        only: Option<&BTreeSet<String>>,
        executed: &mut Executed,
    ) {
        let Some(earlier) = earlier else {
            return;
        };
        let changed = write(&self.settings).restore_from(earlier, only);
        for (canonical, reported) in changed {
            // The values were valid when set, so applying them again cannot fail.
            let _ = self.after_setting_change(&canonical, reported, executed);
        }
    }

    /// Propagate a changed setting: to DataFusion (time zone) and to the client.
    fn after_setting_change(
        &self,
        canonical: &str,
        reported: bool,
        executed: &mut Executed,
    ) -> Result<()> {
        let value = read(&self.settings).get(canonical)?;
        if canonical == "TimeZone" {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            apply_time_zone(&mut state, &Some(value.clone()));
        }
        if reported {
            executed
                .parameter_status
                .push((canonical.to_string(), value));
        }
        Ok(())
    }

    fn show(&self, name: Option<&str>) -> Result<Output> {
        let settings = read(&self.settings);
        match name {
            Some(name) => {
                let value = settings.get(name)?;
                let schema = show_schema(Some(name));
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(StringArray::from(vec![value]))],
                )?;
                Ok(Output::Rows {
                    schema,
                    batches: vec![batch],
                    verb: "SHOW",
                })
            }
            None => {
                let all = settings.all();
                let schema = show_schema(None);
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                let values: Vec<&str> = all.iter().map(|(_, v)| v.as_str()).collect();
                let descriptions: Vec<&str> = all.iter().map(|_| "").collect();
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from(names)),
                        Arc::new(StringArray::from(values)),
                        Arc::new(StringArray::from(descriptions)),
                    ],
                )?;
                Ok(Output::Rows {
                    schema,
                    batches: vec![batch],
                    verb: "SHOW",
                })
            }
        }
    }

    fn begin(&self, isolation: Option<&str>) -> Executed {
        let mut tx = self.lock_transaction();
        let mut executed = Executed::command("BEGIN");
        if tx.block != Block::Idle {
            executed = executed.with_notice("there is already a transaction in progress");
        } else {
            *tx = TransactionState {
                block: Block::Open,
                settings_at_begin: Some(read(&self.settings).clone()),
                ..TransactionState::default()
            };
        }
        if let Some(notice) = isolation_notice(isolation) {
            executed = executed.with_notice(notice);
        }
        executed
    }

    fn commit(&self) -> Executed {
        let mut tx = self.lock_transaction();
        let previous = tx.block;
        let ended = std::mem::take(&mut *tx);
        drop(tx);
        let mut executed = match previous {
            Block::Idle => {
                Executed::command("COMMIT").with_notice("there is no transaction in progress")
            }
            Block::Open => Executed::command("COMMIT"),
            // PostgreSQL answers COMMIT of a failed block with ROLLBACK.
            Block::Failed => Executed::command("ROLLBACK"),
        };
        // A committed block keeps its SETs but not its SET LOCALs; a failed one keeps neither.
        if previous == Block::Open {
            for (name, before) in &ended.local_settings {
                let only = BTreeSet::from([name.clone()]);
                self.restore_settings(Some(before), Some(&only), &mut executed);
            }
        } else {
            self.restore_settings(ended.settings_at_begin.as_ref(), None, &mut executed);
        }
        executed
    }

    fn rollback(&self) -> Executed {
        let mut tx = self.lock_transaction();
        let previous = std::mem::take(&mut *tx);
        drop(tx);
        let mut executed = Executed::command("ROLLBACK");
        self.restore_settings(previous.settings_at_begin.as_ref(), None, &mut executed);
        match previous.block {
            Block::Idle => executed.with_notice("there is no transaction in progress"),
            _ if previous.writes > 0 => {
                executed.with_notice(unapplied_rollback_notice(previous.writes))
            }
            _ => executed,
        }
    }

    fn savepoint(&self, name: &str) -> Result<Executed> {
        let mut tx = self.lock_transaction();
        if tx.block == Block::Idle {
            return Err(Error::NoTransactionBlock("SAVEPOINT"));
        }
        let settings = read(&self.settings).clone();
        tx.savepoints.push((name.to_string(), settings));
        Ok(Executed::command("SAVEPOINT"))
    }

    fn release(&self, name: &str) -> Result<Executed> {
        let mut tx = self.lock_transaction();
        if tx.block == Block::Idle {
            return Err(Error::NoTransactionBlock("RELEASE SAVEPOINT"));
        }
        let position = tx.savepoint_position(name)?;
        tx.savepoints.truncate(position);
        Ok(Executed::command("RELEASE"))
    }

    fn rollback_to(&self, name: &str) -> Result<Executed> {
        let mut tx = self.lock_transaction();
        if tx.block == Block::Idle {
            return Err(Error::NoTransactionBlock("ROLLBACK TO SAVEPOINT"));
        }
        let position = tx.savepoint_position(name)?;
        tx.savepoints.truncate(position + 1);
        tx.block = Block::Open;
        let at_savepoint = tx.savepoints.get(position).map(|(_, s)| s.clone());
        let writes = tx.writes;
        drop(tx);
        let mut executed = Executed::command("ROLLBACK");
        // SETs made since the savepoint are undone, as in PostgreSQL.
        self.restore_settings(at_savepoint.as_ref(), None, &mut executed);
        Ok(if writes > 0 {
            executed.with_notice(unapplied_rollback_notice(writes))
        } else {
            executed
        })
    }
}

fn unapplied_rollback_notice(writes: usize) -> String {
    format!(
        "EddyDB applies each statement atomically when it runs; ROLLBACK cannot undo the {writes} \
         statement(s) of this transaction block that changed data"
    )
}

fn isolation_notice(isolation: Option<&str>) -> Option<String> {
    match isolation {
        Some(level) if level.contains("serializable") || level.contains("repeatable") => {
            Some(format!(
                "EddyDB does not provide {level} transactions: each statement is applied \
                 atomically on its own and sees the latest committed data"
            ))
        }
        _ => None,
    }
}

fn apply_time_zone(state: &mut SessionState, tz: &Option<String>) {
    let tz = tz
        .as_ref()
        .map(|tz| match tz.to_ascii_uppercase().as_str() {
            "UTC" | "GMT" | "Z" | "ETC/UTC" => "+00:00".to_string(),
            _ => tz.clone(),
        });
    state.config_mut().options_mut().execution.time_zone = tz;
    // Functions whose result type depends on the time zone (`now()` returns timestamptz in it)
    // are rebuilt from the new configuration, as DataFusion's own SET does.
    let options = state.config().options();
    let updated: Vec<_> = state
        .scalar_functions()
        .values()
        .filter_map(|udf| udf.inner().with_updated_config(options))
        .collect();
    for udf in updated {
        // Registering replaces the function of the same name; it cannot fail for scalar UDFs.
        let _ = datafusion::execution::FunctionRegistry::register_udf(state, Arc::new(udf));
    }
}

fn show_schema(name: Option<&str>) -> SchemaRef {
    match name {
        Some(name) => {
            let column = name.to_ascii_lowercase().replace(' ', "_");
            let column = if column == "time_zone" {
                "timezone".to_string()
            } else {
                column
            };
            let column = if column == "transaction_isolation_level" {
                "transaction_isolation".to_string()
            } else {
                column
            };
            Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]))
        }
        None => Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
        ])),
    }
}

/// A result the wire protocol can describe: RowDescription counts columns in 16 signed bits.
fn check_column_count(schema: &SchemaRef) -> Result<SchemaRef> {
    const MAX_COLUMNS: usize = i16::MAX as usize;
    if schema.fields().len() > MAX_COLUMNS {
        return Err(Error::InvalidValue(format!(
            "a result has at most {MAX_COLUMNS} columns, this one has {}",
            schema.fields().len()
        )));
    }
    Ok(Arc::clone(schema))
}

/// The columns a plan returns to the client; None for commands (DDL, DML).
fn result_schema_of(plan: &LogicalPlan) -> Option<SchemaRef> {
    match plan {
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => None,
        LogicalPlan::Statement(_) => None,
        other => Some(Arc::new(other.schema().as_arrow().clone())),
    }
}

fn read(settings: &SharedSettings) -> std::sync::RwLockReadGuard<'_, Settings> {
    settings.read().unwrap_or_else(|e| e.into_inner())
}

fn write(settings: &SharedSettings) -> std::sync::RwLockWriteGuard<'_, Settings> {
    settings.write().unwrap_or_else(|e| e.into_inner())
}
