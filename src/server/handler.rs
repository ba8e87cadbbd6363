//! The pgwire handlers: where wire messages meet sessions, and the only place where an
//! [`Error`] becomes a PostgreSQL `ErrorResponse`.
//!
//! Simple query: the string is parsed into statements, each run in turn on the connection's
//! [`Session`] under the session's `statement_timeout` and the connection's cancel signal; results,
//! NOTICEs and ParameterStatus messages go out as they come, the first error ends the string,
//! and ReadyForQuery carries the session's transaction status.
//!
//! Extended query: Parse parses one statement and plans it ([`Session::prepare`]) so Describe can
//! answer without executing; Bind decodes parameters ([`encode::decode_parameters`]); Execute
//! runs the statement and pgwire's portal machinery streams rows with `max_rows` and
//! PortalSuspended; after an error pgwire discards messages until Sync, and Sync reports the
//! session's transaction status.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    ExtendedQueryHandler, SimpleQueryHandler, send_execution_response, send_query_response,
    send_ready_for_query,
};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{Describe, Execute, Sync as PgSync};
use pgwire::messages::response::{EmptyQueryResponse, NoticeResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use pgwire::types::format::FormatOptions;

use datafusion::arrow::record_batch::RecordBatch;
use pgwire::api::copy::{CopyHandler, send_copy_in_response};
use pgwire::api::results::CopyResponse;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};

use crate::error::{Error, ErrorDomain};
use crate::ingest::{self, CopyFormat};
use crate::parser;
use crate::planner::{Engine, Output, Progress};
use crate::server::encode;
use crate::server::session::{Executed, Prepared, Session};

/// Handles both query protocols for every connection.
#[derive(Debug)]
pub struct QueryHandler {
    engine: Arc<Engine>,
    parser: Arc<StatementParser>,
}

impl QueryHandler {
    pub fn new(engine: Arc<Engine>) -> Self {
        let parser = Arc::new(StatementParser {
            engine: Arc::clone(&engine),
        });
        QueryHandler { engine, parser }
    }
}

/// The connection's session, created on first use from the startup parameters.
fn session_of<C: ClientInfo>(client: &C, engine: &Arc<Engine>) -> Arc<Session> {
    if let Some(session) = client.session_extensions().get::<Session>() {
        return session;
    }
    // Read before get_or_insert_with, which holds the extensions' lock while it builds.
    let cancel = client
        .session_extensions()
        .get::<Arc<ConnectionHandle>>()
        .map(|handle| Arc::clone(&*handle));
    client.session_extensions().get_or_insert_with(|| {
        let metadata = client.metadata();
        let session = Session::new(
            Arc::clone(engine),
            metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let (pid, _) = client.pid_and_secret_key();
        session.set_backend(crate::catalog::activity::Backend::new(
            pid,
            metadata,
            Some(client.socket_addr()),
            cancel,
        ));
        session
    })
}

/// Turn an error into what the client sees, logging it by who is at fault.
pub fn error_info(error: &Error) -> ErrorInfo {
    match error.domain() {
        ErrorDomain::Internal => tracing::error!(%error, "internal error"),
        ErrorDomain::External => tracing::warn!(%error, "external error"),
        ErrorDomain::User => tracing::debug!(%error, "statement failed"),
    }
    ErrorInfo::new(
        "ERROR".to_string(),
        error.sqlstate().to_string(),
        error.to_string(),
    )
}

/// The error a pgwire handler returns for `error`.
pub(super) fn user_error(error: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

fn notice(message: &str) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new(
        "NOTICE".to_string(),
        "00000".to_string(),
        message.to_string(),
    )))
}

/// How a statement learns that the client sent a CancelRequest.
enum Cancellation {
    /// Watch the connection's cancel signal here (simple query: one signal per statement).
    Watch,
    /// pgwire's Execute handling already races the statement against the signal; taking a
    /// second signal would drop the one it waits on.
    ByCaller,
}

/// Run `work` under the session's statement timeout and, if asked, the connection's cancel
/// signal, forwarding the progress it reports to the client as NOTICEs while it runs (a
/// model's training, a view's backfill). Err only when the client cannot be written to.
async fn guarded<C>(
    client: &mut C,
    session: &Session,
    cancellation: Cancellation,
    query: &str,
    work: impl std::future::Future<Output = crate::Result<crate::server::session::Executed>>,
) -> PgWireResult<crate::Result<crate::server::session::Executed>>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    // The cancel signal is armed before the statement shows as active, so a
    // pg_cancel_backend that sees it active reaches it.
    let cancel = match (
        cancellation,
        client.session_extensions().get::<Arc<ConnectionHandle>>(),
    ) {
        (Cancellation::Watch, Some(handle)) => Some(handle.start_query().await),
        _ => None,
    };
    let backend = session.backend();
    if let Some(backend) = &backend {
        backend.started(query, session.application_name());
    }
    let started = std::time::Instant::now();
    let timeout_ms = session.statement_timeout_ms();
    let timed = async {
        if timeout_ms == 0 {
            work.await
        } else {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
                Ok(result) => result,
                Err(_) => Err(Error::StatementTimeout),
            }
        }
    };
    let run = async {
        match cancel {
            Some(cancel) => {
                tokio::select! {
                    result = timed => result,
                    // Err means the signal was replaced, not fired: keep running.
                    Ok(()) = cancel => Err(Error::Cancelled),
                }
            }
            None => timed.await,
        }
    };
    let (sender, mut reports) = tokio::sync::mpsc::unbounded_channel();
    session.set_progress(Progress::to(sender));
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Some(report) = reports.recv() => {
                if let Some(backend) = &backend {
                    backend.progressed(&report);
                }
                if let Err(e) = client.send(notice(&report)).await {
                    session.set_progress(Progress::none());
                    return Err(e.into());
                }
            }
        }
    };
    session.set_progress(Progress::none());
    while let Ok(report) = reports.try_recv() {
        client.feed(notice(&report)).await?;
    }
    if let Some(backend) = backend {
        backend.finished();
    }
    let kind = match &result {
        Ok(executed) if matches!(executed.output, Output::Rows { .. }) => 0,
        _ => 1,
    };
    session
        .engine()
        .catalog()
        .activity()
        .statement_done(kind, started.elapsed());
    Ok(result)
}

/// Forward an executed statement's NOTICEs and ParameterStatus changes.
async fn send_side_messages<C>(client: &mut C, executed: &Executed) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for message in &executed.notices {
        client.feed(notice(message)).await?;
    }
    for (name, value) in &executed.parameter_status {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                name.clone(),
                value.clone(),
            )))
            .await?;
    }
    Ok(())
}

/// The pgwire response for an output; rows use the given result formats. A COPY FROM STDIN
/// hands its decoder to the session, which receives the data that follows.
fn into_response(
    output: Output,
    format: Option<&Format>,
    options: &Arc<FormatOptions>,
    session: &Session,
) -> Response {
    match output {
        Output::Rows {
            schema,
            batches,
            verb,
        } => {
            let fields = Arc::new(encode::row_description(&schema, format, options));
            let stream = encode::encode_stream(
                Box::pin(
                    datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                        schema,
                        futures::stream::iter(batches.into_iter().map(Ok)),
                    ),
                ),
                Arc::clone(&fields),
            );
            let mut response = QueryResponse::new(fields, stream);
            response.set_command_tag(verb);
            Response::Query(response)
        }
        Output::Command { tag } => Response::Execution(Tag::new(&tag)),
        Output::CopyIn { relation, decoder } => {
            let columns = relation.schema().fields().len();
            session.begin_copy(relation, decoder);
            Response::CopyIn(CopyResponse::new(0, columns, futures::stream::empty()))
        }
        Output::CopyOut {
            schema,
            batches,
            format: copy_format,
        } => {
            let fields = Arc::new(encode::row_description(&schema, None, options));
            let columns = fields.len();
            let header = copy_format.header.then(|| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                ingest::header_line(&names, &copy_format)
            });
            Response::CopyOut(CopyResponse::new(
                0,
                columns,
                copy_out_stream(batches, fields, copy_format, header),
            ))
        }
        Output::Subscribe(subscription) => {
            let schema = subscription.schema();
            let fields = Arc::new(encode::row_description(&schema, None, options));
            let columns = fields.len();
            Response::CopyOut(CopyResponse::new(
                0,
                columns,
                subscription_stream(*subscription, fields),
            ))
        }
    }
}

/// A subscription's rows as CopyData messages in COPY text format, for as long as it runs.
fn subscription_stream(
    subscription: crate::streaming::subscribe::Subscription,
    fields: Arc<Vec<FieldInfo>>,
) -> impl futures::Stream<Item = PgWireResult<CopyData>> + Send + 'static {
    use futures::StreamExt;
    let format = CopyFormat::new(ingest::CopyKind::Text);
    futures::stream::unfold(Some(subscription), move |state| {
        let fields = Arc::clone(&fields);
        let format = format.clone();
        async move {
            let mut subscription = state?;
            match subscription.next(None).await {
                Ok(Some(batch)) => {
                    let mut messages = Vec::with_capacity(batch.num_rows());
                    for row in 0..batch.num_rows() {
                        let mut line = Vec::new();
                        match ingest::encode_copy_rows(
                            &batch.slice(row, 1),
                            &fields,
                            &format,
                            &mut line,
                        ) {
                            Ok(()) => messages.push(Ok(CopyData::new(line.into()))),
                            Err(e) => {
                                messages.push(Err(user_error(&e)));
                                return Some((messages, None));
                            }
                        }
                    }
                    Some((messages, Some(subscription)))
                }
                Ok(None) => None,
                Err(e) => Some((vec![Err(user_error(&e))], None)),
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// Send a COPY TO STDOUT, flushing whenever the rows pause (a subscription's rows reach the
/// client as they happen) and stopping on the connection's cancel signal.
async fn send_copy_out_live<C>(client: &mut C, response: CopyResponse) -> PgWireResult<()>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::{FutureExt, StreamExt};
    use pgwire::messages::copy::CopyOutResponse;
    let column_formats = response.column_formats();
    let format = response.format;
    let columns = response.columns;
    let mut data_stream = response.data_stream;
    let mut cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
        Some(handle) => Some(handle.start_query().await),
        None => None,
    };
    client
        .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            format,
            columns as i16,
            column_formats,
        )))
        .await?;
    let mut rows = 0usize;
    loop {
        let next = match data_stream.next().now_or_never() {
            Some(next) => next,
            None => {
                client.flush().await?;
                match cancel.as_mut() {
                    Some(cancelled) => tokio::select! {
                        next = data_stream.next() => next,
                        Ok(()) = cancelled => {
                            let e = Error::Cancelled;
                            client.send(PgWireBackendMessage::ErrorResponse(error_info(&e).into())).await?;
                            return Ok(());
                        }
                    },
                    None => data_stream.next().await,
                }
            }
        };
        match next {
            Some(Ok(data)) => {
                rows += 1;
                client.feed(PgWireBackendMessage::CopyData(data)).await?;
            }
            Some(Err(e)) => {
                client
                    .send(PgWireBackendMessage::ErrorResponse(
                        match e {
                            PgWireError::UserError(info) => *info,
                            other => {
                                ErrorInfo::new("ERROR".into(), "XX000".into(), other.to_string())
                            }
                        }
                        .into(),
                    ))
                    .await?;
                return Ok(());
            }
            None => break,
        }
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    send_execution_response(client, Tag::new("COPY").with_rows(rows)).await
}

/// Rows as CopyData messages, one per row (pgwire counts them for the `COPY n` tag); a header
/// line travels with the first row.
fn copy_out_stream(
    batches: Vec<RecordBatch>,
    fields: Arc<Vec<FieldInfo>>,
    format: CopyFormat,
    mut header: Option<Vec<u8>>,
) -> impl futures::Stream<Item = PgWireResult<CopyData>> + Send + 'static {
    let mut messages: Vec<PgWireResult<CopyData>> = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let mut line = header.take().unwrap_or_default();
            let encoded =
                ingest::encode_copy_rows(&batch.slice(row, 1), &fields, &format, &mut line);
            match encoded {
                Ok(()) => messages.push(Ok(CopyData::new(line.into()))),
                Err(e) => {
                    messages.push(Err(user_error(&e)));
                    return futures::stream::iter(messages);
                }
            }
        }
    }
    if let Some(header) = header {
        messages.push(Ok(CopyData::new(header.into())));
    }
    futures::stream::iter(messages)
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let responses = SimpleQueryHandler::do_query(self, client, &query.query).await?;
        for response in responses {
            match response {
                Response::EmptyQuery => {
                    client
                        .feed(PgWireBackendMessage::EmptyQueryResponse(
                            EmptyQueryResponse::new(),
                        ))
                        .await?;
                }
                Response::Query(rows) => send_query_response(client, rows, true).await?,
                Response::Execution(tag)
                | Response::TransactionStart(tag)
                | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
                Response::Error(e) => {
                    client
                        .feed(PgWireBackendMessage::ErrorResponse((*e).into()))
                        .await?;
                }
                Response::CopyIn(copy) => {
                    // The data follows; CopyDone or CopyFail ends the query (see CopyHandler).
                    send_copy_in_response(client, copy).await?;
                    client.set_state(PgWireConnectionState::CopyInProgress(false));
                    return Ok(());
                }
                Response::CopyOut(copy) => send_copy_out_live(client, copy).await?,
                Response::CopyBoth(_) => {
                    let e = Error::Unsupported("COPY BOTH".to_string());
                    client
                        .feed(PgWireBackendMessage::ErrorResponse(error_info(&e).into()))
                        .await?;
                }
            }
        }
        let session = session_of(client, &self.engine);
        let status = session.transaction_status();
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    /// Run every statement of a simple query; the first error ends the string, as in PostgreSQL.
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client, &self.engine);
        let statements = match parser::parse(query) {
            Ok(statements) => statements,
            Err(e) => {
                session.statement_failed();
                return Ok(vec![Response::Error(Box::new(error_info(&e)))]);
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let options = Arc::new(session.format_options());
        let mut responses = Vec::with_capacity(statements.len());
        for statement in &statements {
            match guarded(
                client,
                &session,
                Cancellation::Watch,
                query,
                session.execute(statement, &[], Vec::new()),
            )
            .await?
            {
                Ok(executed) => {
                    send_side_messages(client, &executed).await?;
                    let options = if executed.parameter_status.is_empty() {
                        Arc::clone(&options)
                    } else {
                        Arc::new(session.format_options())
                    };
                    let copy_in = matches!(executed.output, Output::CopyIn { .. });
                    responses.push(into_response(executed.output, None, &options, &session));
                    if copy_in {
                        // The client sends the data next; statements after the COPY in the
                        // same string are not run (a COPY FROM STDIN is sent on its own).
                        break;
                    }
                }
                Err(e) => {
                    session.statement_failed();
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl CopyHandler for QueryHandler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        session_of(client, &self.engine).copy_data(&copy_data.data);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client, &self.engine);
        let result = session.finish_copy().await;
        client.set_transaction_status(session.transaction_status());
        let rows = result.map_err(|e| user_error(&e))?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows as usize).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client, &self.engine);
        session.abort_copy();
        client.set_transaction_status(session.transaction_status());
        user_error(&Error::QueryCanceled(format!(
            "COPY from stdin failed: {}",
            fail.message
        )))
    }
}

/// Parses and plans statements for the extended protocol.
#[derive(Debug)]
pub struct StatementParser {
    engine: Arc<Engine>,
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client, &self.engine);
        let mut statements = parser::parse(sql).map_err(|e| user_error(&e))?;
        if statements.len() > 1 {
            return Err(user_error(&Error::Parse(
                datafusion::sql::sqlparser::parser::ParserError::ParserError(
                    "cannot insert multiple commands into a prepared statement".to_string(),
                ),
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let prepared = session
            .prepare(sql, statement, types.to_vec())
            .await
            .map_err(|e| {
                session.statement_failed();
                user_error(&e)
            })?;
        Ok(Some(prepared))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.result_schema {
            Some(schema) => {
                encode::row_description(schema, column_format, &Arc::new(FormatOptions::default()))
            }
            None => Vec::new(),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Prepared;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::clone(&self.parser)
    }

    /// Describe answers NoData for statements without result columns (pgwire would send an
    /// empty RowDescription when a statement has parameters but no rows).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use pgwire::api::store::Entry;
        use pgwire::messages::extendedquery::{
            TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
        };
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let options = Arc::new(session_of(client, &self.engine).format_options());
        let (parameters, schema, format) = match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                Some(Entry::Value(stmt)) => (
                    Some(described_parameter_types(&stmt)),
                    stmt.statement.result_schema.clone(),
                    None,
                ),
                Some(Entry::Empty) => (Some(Vec::new()), None, None),
                None => return Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => (
                    None,
                    portal.statement.statement.result_schema.clone(),
                    Some(portal.result_column_format.clone()),
                ),
                Some(Entry::Empty) => (None, None, None),
                None => return Err(PgWireError::PortalNotFound(name.to_owned())),
            },
            other => return Err(PgWireError::InvalidTargetType(other)),
        };
        if let Some(types) = parameters {
            client
                .send(PgWireBackendMessage::ParameterDescription(
                    ParameterDescription::new(types.iter().map(Type::oid).collect()),
                ))
                .await?;
        }
        match schema {
            Some(schema) => {
                let fields = encode::row_description(&schema, format.as_ref(), &options);
                client
                    .send(PgWireBackendMessage::RowDescription(RowDescription::new(
                        fields.iter().map(Into::into).collect(),
                    )))
                    .await?;
            }
            None => {
                client
                    .send(PgWireBackendMessage::NoData(NoData::new()))
                    .await?
            }
        }
        Ok(())
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_execute(client, message).await?;
        // pgwire carries the status it saw before the statement forward, so a ROLLBACK TO
        // SAVEPOINT sent through Execute would leave the block failed: the session decides.
        let status = session_of(client, &self.engine).transaction_status();
        client.set_transaction_status(status);
        Ok(())
    }

    /// Sync ends an extended-protocol batch: report the session's transaction status.
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.portal_store().rm_portal(DEFAULT_NAME);
        let session = session_of(client, &self.engine);
        if client.transaction_status() == TransactionStatus::Error {
            // An error pgwire raised itself (unknown portal, bad Bind) also fails the block.
            session.statement_failed();
        }
        let status = session.transaction_status();
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await?;
        client.flush().await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client, &self.engine);
        let prepared = &portal.statement.statement;
        let result = match encode::decode_parameters(portal, &prepared.param_types) {
            Ok(params) => {
                guarded(
                    client,
                    &session,
                    Cancellation::ByCaller,
                    &prepared.sql,
                    session.execute(&prepared.statement, &prepared.declared_types, params),
                )
                .await?
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(executed) => {
                send_side_messages(client, &executed).await?;
                let options = Arc::new(session.format_options());
                Ok(into_response(
                    executed.output,
                    Some(&portal.result_column_format),
                    &options,
                    &session,
                ))
            }
            Err(e) => {
                session.statement_failed();
                Err(user_error(&e))
            }
        }
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Prepared>,
    ) -> PgWireResult<pgwire::api::results::DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let fields = self.parser.get_result_schema(&target.statement, None)?;
        Ok(pgwire::api::results::DescribeStatementResponse::new(
            described_parameter_types(target),
            fields,
        ))
    }
}

/// Parameter types as described to the client: what it declared, else what was inferred.
fn described_parameter_types(stmt: &StoredStatement<Prepared>) -> Vec<Type> {
    stmt.statement.param_types.clone()
}
