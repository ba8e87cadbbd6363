//! EddyDB's own statements, which sqlparser does not know:
//!
//! ```sql
//! CREATE STREAM [IF NOT EXISTS] name (col type, ..., WATERMARK FOR col AS expr)
//!     [INCLUDE key | partition | offset | timestamp [AS col] ...] [WITH (k = v, ...)]
//! DROP STREAM [IF EXISTS] name [, ...]
//! SHOW STREAMS
//! ALTER STREAM name SET (k = v, ...) | RESET (k, ...)
//! CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query [EMIT ON WINDOW CLOSE | EMIT FINAL]
//! DROP MATERIALIZED VIEW [IF EXISTS] name [, ...]
//! SHOW MATERIALIZED VIEWS
//! EXPLAIN MATERIALIZED VIEW name | EXPLAIN CREATE MATERIALIZED VIEW ...
//! SUBSCRIBE [TO] name | (query) [AS OF t] [WITH (SNAPSHOT = bool, PROGRESS)]
//! COPY (SUBSCRIBE ...) TO STDOUT
//! DECLARE name CURSOR FOR SUBSCRIBE ...
//! FETCH [FORWARD] [n | ALL] [FROM | IN] name [WITH (timeout = '1s')]
//! CLOSE name
//! CHECKPOINT
//! CREATE [OR REPLACE] MODEL [IF NOT EXISTS] name [PREDICT column] USING algorithm [WITH (k = v, ...)] AS query
//! RETRAIN MODEL name [WITH (k = v, ...)] [AS query] [WITH (k = v, ...)]
//! DROP MODEL [IF EXISTS] name [, ...]
//! SHOW MODELS | SHOW MODEL VERSIONS name | DESCRIBE MODEL name
//! ALTER MODEL name SET ACTIVE VERSION n | ROLLBACK | SET SHADOW VERSION n | RESET SHADOW
//! CREATE MODEL MONITOR [IF NOT EXISTS] name ON MODEL m FROM relation [WITH (k = v, ...)]
//! DROP MODEL MONITOR [IF EXISTS] name [, ...]
//! SHOW MODEL MONITORS
//! CREATE SINK [IF NOT EXISTS] name FROM relation WITH (k = v, ...)
//! DROP SINK [IF EXISTS] name [, ...]
//! SHOW SINKS
//! ```
//!
//! Before any of that, [`rewrite_sql`] turns the ANSI window table functions
//! (`TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), ...))`) into the short form,
//! `t FOR SYSTEM_TIME AS OF s.ts` into `eddy_temporal(t, 'ts')`, and the model named first in
//! `PREDICT(m, ...)`, `PREDICT_PROBA`, `PREDICT_DISTANCE`, `DRIFT_PSI`, `DRIFT_KS` and
//! `EVALUATE(m)` into the string `'m'` (a bare name would be read as a column).
//!
//! The query string is tokenized once with sqlparser's tokenizer and cut at top-level
//! semicolons. Only when some statement starts with one of these forms does the string take
//! this path: each of ours is parsed here, each other statement goes to the regular parser as
//! its own text. `CREATE STREAM` reuses sqlparser for everything but the watermark: the
//! `WATERMARK FOR` element is cut out, `STREAM` becomes `TABLE`, and the rest is parsed as the
//! `CREATE TABLE` it then is.

use datafusion::sql::sqlparser::ast::{self, Expr, SqlOption, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{Statement, normalize_ident};
use crate::error::{Error, Result};
use crate::storage::RelationKind;

/// A parsed `CREATE STREAM`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStream {
    /// The statement as the `CREATE TABLE` DataFusion plans (columns, types, constraints),
    /// without the watermark and options.
    pub table: Box<ast::Statement>,
    pub watermark: Option<Watermark>,
    /// `WITH (...)` options, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// `WATERMARK FOR column AS expression`.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub column: String,
    /// The expression as written, for planning against the stream's columns.
    pub expr: String,
}

/// A parsed `CREATE MODEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateModel {
    pub name: ast::ObjectName,
    pub or_replace: bool,
    pub if_not_exists: bool,
    /// `PREDICT column`, normalized.
    pub target: Option<String>,
    pub algorithm: String,
    /// `WITH (...)`, names lower-cased.
    pub options: Vec<(String, String)>,
    /// The training query, as written.
    pub query: String,
}

/// A parsed `CREATE MODEL MONITOR`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateMonitor {
    pub name: ast::ObjectName,
    pub if_not_exists: bool,
    pub model: ast::ObjectName,
    /// The relation whose rows are watched.
    pub source: ast::ObjectName,
    /// `WITH (...)`, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// A parsed `CREATE SINK`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSink {
    pub name: ast::ObjectName,
    pub if_not_exists: bool,
    /// The materialized view or stream whose rows go out.
    pub from: ast::ObjectName,
    /// `WITH (...)`, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// A parsed `RETRAIN MODEL`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainModel {
    pub name: ast::ObjectName,
    /// A new training query; None keeps the model's.
    pub query: Option<String>,
    /// Options overriding the model's.
    pub options: Vec<(String, String)>,
}

/// What `ALTER MODEL` changes.
#[derive(Debug, Clone, PartialEq)]
pub enum AlterModel {
    Activate(u32),
    Rollback,
    /// `SET SHADOW VERSION n`, or None for `RESET SHADOW`.
    Shadow(Option<u32>),
}

/// A parsed `CREATE MATERIALIZED VIEW`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateView {
    pub name: ast::ObjectName,
    pub if_not_exists: bool,
    /// The query text, without the EMIT clause.
    pub query: String,
    pub emit_on_close: bool,
}

/// What a `SUBSCRIBE` reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeTarget {
    View(ast::ObjectName),
    /// A query, run as a temporary view.
    Query(String),
}

/// A parsed `SUBSCRIBE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub target: SubscribeTarget,
    pub options: Vec<(String, String)>,
    pub as_of: Option<i64>,
}

/// A piece of a query string: one of our statements, or text for the regular parser.
#[derive(Debug)]
pub enum Piece<'a> {
    Ours(Statement),
    Sql(&'a str),
}

/// A token with its byte range in the query string.
#[derive(Debug)]
struct Tok {
    token: Token,
    start: usize,
    end: usize,
}

/// Cut `sql` into pieces if any statement in it is one of ours; None otherwise (the common
/// case, which keeps the regular path untouched).
pub fn split(sql: &str) -> Result<Option<Vec<Piece<'_>>>> {
    if !mentions_extension(sql) {
        return Ok(None);
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return Ok(None); // the regular parser reports the error
    };
    let tokens = with_offsets(sql, tokens);
    let mut statements: Vec<&[Tok]> = Vec::new();
    let mut depth = 0i32;
    let mut begin = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                statements.push(&tokens[begin..i]);
                begin = i + 1;
            }
            _ => {}
        }
    }
    statements.push(&tokens[begin..]);
    let statements: Vec<&[Tok]> = statements.into_iter().filter(|s| !s.is_empty()).collect();
    if !statements.iter().any(|s| form(s).is_some()) {
        return Ok(None);
    }
    statements
        .into_iter()
        .map(|s| match form(s) {
            Some(form) => parse_form(sql, form, s).map(Piece::Ours),
            None => Ok(Piece::Sql(&sql[s[0].start..s[s.len() - 1].end])),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A cheap test before tokenizing: does the text contain a word only our statements use?
fn mentions_extension(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    [
        "stream",
        "materialized",
        "subscribe",
        "fetch",
        "close",
        "checkpoint",
        "model",
        "sink",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    CreateStream,
    DropStream,
    ShowStreams,
    AlterStream,
    CreateView,
    DropView,
    ShowViews,
    ExplainView,
    ExplainCreateView,
    Subscribe,
    CopySubscribe,
    DeclareSubscribe,
    Fetch,
    Close,
    Checkpoint,
    CreateModel,
    RetrainModel,
    DropModel,
    ShowModels,
    ShowModelVersions,
    DescribeModel,
    AlterModel,
    CreateMonitor,
    DropMonitor,
    ShowMonitors,
    CreateSink,
    DropSink,
    ShowSinks,
}

fn word(t: &Tok) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn form(tokens: &[Tok]) -> Option<Form> {
    let words: Vec<String> = tokens.iter().take(4).map_while(word).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let starts = |prefix: &[&str]| words.starts_with(prefix);
    if starts(&["CREATE", "STREAM"]) {
        Some(Form::CreateStream)
    } else if starts(&["DROP", "STREAM"]) {
        Some(Form::DropStream)
    } else if starts(&["SHOW", "STREAMS"]) {
        Some(Form::ShowStreams)
    } else if starts(&["ALTER", "STREAM"]) {
        Some(Form::AlterStream)
    } else if starts(&["CREATE", "MATERIALIZED", "VIEW"]) {
        Some(Form::CreateView)
    } else if starts(&["DROP", "MATERIALIZED", "VIEW"]) {
        Some(Form::DropView)
    } else if starts(&["SHOW", "MATERIALIZED", "VIEWS"]) {
        Some(Form::ShowViews)
    } else if starts(&["EXPLAIN", "MATERIALIZED", "VIEW"]) {
        Some(Form::ExplainView)
    } else if starts(&["EXPLAIN", "CREATE", "MATERIALIZED", "VIEW"]) {
        Some(Form::ExplainCreateView)
    } else if starts(&["SUBSCRIBE"]) {
        Some(Form::Subscribe)
    } else if starts(&["COPY"])
        && matches!(tokens.get(1).map(|t| &t.token), Some(Token::LParen))
        && tokens.get(2).and_then(word).as_deref() == Some("SUBSCRIBE")
    {
        Some(Form::CopySubscribe)
    } else if starts(&["DECLARE"])
        && tokens
            .iter()
            .skip(2)
            .take(8)
            .any(|t| word(t).as_deref() == Some("SUBSCRIBE"))
    {
        Some(Form::DeclareSubscribe)
    } else if starts(&["FETCH"]) {
        Some(Form::Fetch)
    } else if starts(&["CLOSE"]) && !starts(&["CLOSE", "ALL"]) {
        Some(Form::Close)
    } else if starts(&["CHECKPOINT"]) {
        Some(Form::Checkpoint)
    } else if starts(&["CREATE", "MODEL", "MONITOR"])
        && top_level_word(tokens, "ON")
            .is_some_and(|on| tokens.get(on + 1).and_then(word).as_deref() == Some("MODEL"))
    {
        // `CREATE MODEL monitor USING ...` is a model named monitor.
        Some(Form::CreateMonitor)
    } else if starts(&["DROP", "MODEL", "MONITOR"])
        && tokens
            .get(3)
            .is_some_and(|t| !matches!(t.token, Token::Comma | Token::SemiColon))
    {
        // `DROP MODEL monitor` drops a model named monitor.
        Some(Form::DropMonitor)
    } else if starts(&["SHOW", "MODEL", "MONITORS"]) {
        Some(Form::ShowMonitors)
    } else if starts(&["CREATE", "SINK"]) {
        Some(Form::CreateSink)
    } else if starts(&["DROP", "SINK"]) {
        Some(Form::DropSink)
    } else if starts(&["SHOW", "SINKS"]) {
        Some(Form::ShowSinks)
    } else if starts(&["CREATE", "MODEL"]) || starts(&["CREATE", "OR", "REPLACE", "MODEL"]) {
        Some(Form::CreateModel)
    } else if starts(&["RETRAIN", "MODEL"]) {
        Some(Form::RetrainModel)
    } else if starts(&["DROP", "MODEL"]) {
        Some(Form::DropModel)
    } else if starts(&["SHOW", "MODELS"]) {
        Some(Form::ShowModels)
    } else if starts(&["SHOW", "MODEL", "VERSIONS"]) {
        Some(Form::ShowModelVersions)
    } else if starts(&["DESCRIBE", "MODEL"]) {
        Some(Form::DescribeModel)
    } else if starts(&["ALTER", "MODEL"]) {
        Some(Form::AlterModel)
    } else {
        None
    }
}

/// The index of the parenthesis closing the one at `open`.
fn matching_paren(tokens: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The text of tokens `from..` (to the end).
fn text_of<'a>(sql: &'a str, tokens: &[Tok]) -> &'a str {
    match (tokens.first(), tokens.last()) {
        (Some(first), Some(last)) => &sql[first.start..last.end],
        _ => "",
    }
}

fn parse_create_view(sql: &str, rest: &[Tok]) -> Result<Statement> {
    // rest: after CREATE MATERIALIZED VIEW
    let mut at = 0;
    let mut if_not_exists = false;
    if rest.len() >= 3
        && word(&rest[0]).as_deref() == Some("IF")
        && word(&rest[1]).as_deref() == Some("NOT")
        && word(&rest[2]).as_deref() == Some("EXISTS")
    {
        if_not_exists = true;
        at = 3;
    }
    let as_at = rest
        .iter()
        .enumerate()
        .skip(at)
        .find(|(_, t)| word(t).as_deref() == Some("AS"))
        .map(|(i, _)| i)
        .ok_or_else(|| syntax("expected CREATE MATERIALIZED VIEW name AS query"))?;
    let name = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text_of(sql, &rest[at..as_at]))?
        .parse_object_name(false)?;
    let mut query = &rest[as_at + 1..];
    let mut emit_on_close = false;
    let words: Vec<Option<String>> = query.iter().map(word).collect();
    let n = words.len();
    if n >= 4
        && words[n - 4..].iter().map(|w| w.as_deref()).eq([
            Some("EMIT"),
            Some("ON"),
            Some("WINDOW"),
            Some("CLOSE"),
        ])
    {
        emit_on_close = true;
        query = &query[..n - 4];
    } else if n >= 2
        && words[n - 2..]
            .iter()
            .map(|w| w.as_deref())
            .eq([Some("EMIT"), Some("FINAL")])
    {
        emit_on_close = true;
        query = &query[..n - 2];
    } else if words.iter().any(|w| w.as_deref() == Some("EMIT")) {
        return Err(syntax(
            "expected EMIT ON WINDOW CLOSE or EMIT FINAL at the end of the view",
        ));
    }
    if query.is_empty() {
        return Err(syntax("expected a query after AS"));
    }
    let query = text_of(sql, query).to_string();
    // The query must parse as a query; it is planned when the view is created.
    let parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&query)?
        .parse_statements()?;
    if !matches!(parsed.as_slice(), [ast::Statement::Query(_)]) {
        return Err(syntax("a materialized view is defined by one SELECT query"));
    }
    Ok(Statement::CreateView(CreateView {
        name,
        if_not_exists,
        query,
        emit_on_close,
    }))
}

fn parse_subscribe(sql: &str, rest: &[Tok]) -> Result<Subscribe> {
    // rest: after SUBSCRIBE
    let mut at = 0;
    if rest.first().and_then(word).as_deref() == Some("TO") {
        at = 1;
    }
    let Some(first) = rest.get(at) else {
        return Err(syntax("expected SUBSCRIBE [TO] view or SUBSCRIBE (query)"));
    };
    let target_end;
    let target = if matches!(first.token, Token::LParen) {
        let close = matching_paren(rest, at);
        let close = close.ok_or_else(|| syntax("unbalanced parentheses in SUBSCRIBE (query)"))?;
        target_end = close + 1;
        SubscribeTarget::Query(text_of(sql, &rest[at + 1..close]).to_string())
    } else {
        let mut end = at + 1;
        while end + 1 < rest.len() && matches!(rest[end].token, Token::Period) {
            end += 2;
        }
        target_end = end;
        let name = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(text_of(sql, &rest[at..end]))?
            .parse_object_name(false)?;
        SubscribeTarget::View(name)
    };
    let mut parser =
        Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, &rest[target_end..]))?;
    let mut as_of = None;
    let mut options = Vec::new();
    loop {
        if parser.parse_keywords(&[Keyword::AS, Keyword::OF]) {
            let value = parser.parse_number_value()?;
            as_of = Some(
                value
                    .to_string()
                    .parse::<i64>()
                    .map_err(|_| syntax("AS OF takes a timestamp in milliseconds"))?,
            );
        } else if parser.parse_keyword(Keyword::WITH) {
            parser.expect_token(&Token::LParen)?;
            let items = parser.parse_comma_separated(|p| {
                let name = p.parse_identifier()?.value.to_ascii_lowercase();
                if p.consume_token(&Token::Eq) {
                    let value = p.parse_expr()?;
                    let text = match value {
                        Expr::Value(v) => match v.value {
                            Value::SingleQuotedString(s) => s,
                            Value::Boolean(b) => b.to_string(),
                            other => other.to_string(),
                        },
                        Expr::Identifier(i) => i.value,
                        other => other.to_string(),
                    };
                    Ok((name, text))
                } else {
                    Ok((name, String::new()))
                }
            })?;
            parser.expect_token(&Token::RParen)?;
            options.extend(items);
        } else {
            break;
        }
    }
    parser.expect_token(&Token::EOF)?;
    Ok(Subscribe {
        target,
        options,
        as_of,
    })
}

fn parse_fetch(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, rest))?;
    let _ = parser.parse_keyword(Keyword::FORWARD);
    let count = if parser.parse_keyword(Keyword::ALL) {
        None
    } else if matches!(parser.peek_token().token, Token::Number(..)) {
        Some(usize::try_from(parser.parse_literal_uint()?).unwrap_or(usize::MAX))
    } else if parser.parse_keyword(Keyword::NEXT) {
        Some(1)
    } else if parser
        .parse_one_of_keywords(&[
            Keyword::PRIOR,
            Keyword::FIRST,
            Keyword::LAST,
            Keyword::BACKWARD,
            Keyword::ABSOLUTE,
            Keyword::RELATIVE,
        ])
        .is_some()
    {
        return Err(Error::Unsupported(
            "FETCH other than FORWARD (subscription cursors only move forward)".to_string(),
        ));
    } else {
        Some(1)
    };
    let _ = parser.parse_one_of_keywords(&[Keyword::FROM, Keyword::IN]);
    let cursor = normalize_ident(&parser.parse_identifier()?);
    let mut timeout = None;
    if parser.parse_keyword(Keyword::WITH) {
        parser.expect_token(&Token::LParen)?;
        let options = parser.parse_comma_separated(|p| p.parse_sql_option())?;
        parser.expect_token(&Token::RParen)?;
        for (name, value) in options_text(&options)? {
            if name != "timeout" {
                return Err(Error::InvalidValue(format!(
                    "unknown FETCH option \"{name}\" (known: timeout)"
                )));
            }
            timeout = Some(crate::storage::parse_duration(&value)?);
        }
    }
    parser.expect_token(&Token::EOF)?;
    Ok(Statement::Fetch {
        cursor,
        count,
        timeout,
    })
}

fn parse_names(sql: &str, rest: &[Tok]) -> Result<(Vec<ast::ObjectName>, bool)> {
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, rest))?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
    parser.expect_token(&Token::EOF)?;
    Ok((names, if_exists))
}

fn parse_one_name(sql: &str, rest: &[Tok], form: &str) -> Result<ast::ObjectName> {
    let (mut names, if_exists) = parse_names(sql, rest)?;
    match (names.pop(), names.is_empty(), if_exists) {
        (Some(name), true, false) => Ok(name),
        _ => Err(syntax(format!("expected {form}"))),
    }
}

/// The index of the first top-level `wanted` word in `tokens`.
fn top_level_word(tokens: &[Tok], wanted: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth == 0 && word(t).as_deref() == Some(wanted) => return Some(i),
            _ => {}
        }
    }
    None
}

/// `WITH (k = v, ...)` options, after the WITH.
fn parse_with_options(parser: &mut Parser<'_>) -> Result<Vec<(String, String)>> {
    parser.expect_token(&Token::LParen)?;
    let options = parser.parse_comma_separated(|p| p.parse_sql_option())?;
    parser.expect_token(&Token::RParen)?;
    options_text(&options)
}

/// A query after AS: checked to parse, kept as written.
fn model_query(sql: &str, tokens: &[Tok]) -> Result<String> {
    if tokens.is_empty() {
        return Err(syntax("expected a query after AS"));
    }
    let query = text_of(sql, tokens).to_string();
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&query)?
        .parse_query()?;
    Ok(query)
}

/// `[IF NOT EXISTS] name ON MODEL m FROM relation [WITH (...)]`, after CREATE MODEL MONITOR.
fn parse_create_monitor(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let shape = || {
        syntax(
            "expected CREATE MODEL MONITOR name ON MODEL model FROM relation [WITH (option = value, ...)]",
        )
    };
    let text = rest
        .first()
        .map_or("", |first| &sql[first.start..rest[rest.len() - 1].end]);
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    if !parser.parse_keyword(Keyword::ON) {
        return Err(shape());
    }
    match parser.next_token().token {
        Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("model") => {}
        _ => return Err(shape()),
    }
    let model = parser.parse_object_name(false)?;
    if !parser.parse_keyword(Keyword::FROM) {
        return Err(shape());
    }
    let source = parser.parse_object_name(false)?;
    let options = if parser.parse_keyword(Keyword::WITH) {
        parse_with_options(&mut parser)?
    } else {
        Vec::new()
    };
    if parser.peek_token().token != Token::EOF {
        return Err(shape());
    }
    Ok(Statement::CreateMonitor(CreateMonitor {
        name,
        if_not_exists,
        model,
        source,
        options,
    }))
}

fn parse_create_model(sql: &str, tokens: &[Tok]) -> Result<Statement> {
    let or_replace = tokens.get(1).and_then(word).as_deref() == Some("OR");
    let rest = &tokens[if or_replace { 4 } else { 2 }..];
    let as_at = top_level_word(rest, "AS")
        .ok_or_else(|| syntax("expected CREATE MODEL name ... AS query"))?;
    let mut parser =
        Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, &rest[..as_at]))?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let mut target = None;
    if let Token::Word(w) = parser.peek_token().token
        && w.quote_style.is_none()
        && w.value.eq_ignore_ascii_case("predict")
    {
        parser.next_token();
        target = Some(normalize_ident(&parser.parse_identifier()?));
    }
    if !parser.parse_keyword(Keyword::USING) {
        return Err(syntax(
            "expected CREATE MODEL name [PREDICT column] USING algorithm [WITH (...)] AS query",
        ));
    }
    let algorithm = parser.parse_identifier()?.value.to_ascii_lowercase();
    let options = if parser.parse_keyword(Keyword::WITH) {
        parse_with_options(&mut parser)?
    } else {
        Vec::new()
    };
    parser.expect_token(&Token::EOF)?;
    Ok(Statement::CreateModel(CreateModel {
        name,
        or_replace,
        if_not_exists,
        target,
        algorithm,
        options,
        query: model_query(sql, &rest[as_at + 1..])?,
    }))
}

fn parse_retrain_model(sql: &str, rest: &[Tok]) -> Result<Statement> {
    // A WITH (...) closing the statement belongs to RETRAIN, not to the query.
    let mut end = rest.len();
    let mut options = Vec::new();
    if let Some(close) = rest.len().checked_sub(1)
        && matches!(rest[close].token, Token::RParen)
        && let Some(with) = (0..close).rev().find(|i| {
            word(&rest[*i]).as_deref() == Some("WITH")
                && matches!(rest.get(i + 1).map(|t| &t.token), Some(Token::LParen))
                && matching_paren(rest, i + 1) == Some(close)
        })
    {
        let mut parser =
            Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, &rest[with + 1..]))?;
        options = parse_with_options(&mut parser)?;
        end = with;
    }
    let rest = &rest[..end];
    let as_at = top_level_word(rest, "AS").unwrap_or(rest.len());
    let mut parser =
        Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, &rest[..as_at]))?;
    let name = parser.parse_object_name(false)?;
    if parser.parse_keyword(Keyword::WITH) {
        let before = parse_with_options(&mut parser)?;
        options.splice(0..0, before);
    }
    parser.expect_token(&Token::EOF)?;
    let query = if as_at < rest.len() {
        Some(model_query(sql, &rest[as_at + 1..])?)
    } else {
        None
    };
    Ok(Statement::RetrainModel(RetrainModel {
        name,
        query,
        options,
    }))
}

fn parse_alter_model(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, rest))?;
    let name = parser.parse_object_name(false)?;
    let wrong = || {
        syntax(
            "expected ALTER MODEL name SET ACTIVE VERSION n | ROLLBACK | SET SHADOW VERSION n \
             | RESET SHADOW",
        )
    };
    fn next_word(parser: &mut Parser<'_>) -> String {
        match parser.next_token().token {
            Token::Word(w) => w.value.to_ascii_uppercase(),
            _ => String::new(),
        }
    }
    fn version(parser: &mut Parser<'_>) -> Result<u32> {
        let value = parser.parse_number_value()?.to_string();
        value
            .parse::<u32>()
            .map_err(|_| syntax(format!("a model version is a positive number, got {value}")))
    }
    let action = match next_word(&mut parser).as_str() {
        "ROLLBACK" => AlterModel::Rollback,
        "SET" => match (
            next_word(&mut parser).as_str(),
            next_word(&mut parser).as_str(),
        ) {
            ("ACTIVE", "VERSION") => AlterModel::Activate(version(&mut parser)?),
            ("SHADOW", "VERSION") => AlterModel::Shadow(Some(version(&mut parser)?)),
            _ => return Err(wrong()),
        },
        "RESET" if next_word(&mut parser) == "SHADOW" => AlterModel::Shadow(None),
        _ => return Err(wrong()),
    };
    parser.expect_token(&Token::EOF)?;
    Ok(Statement::AlterModel { name, action })
}

fn syntax(message: impl Into<String>) -> Error {
    Error::Parse(ParserError::ParserError(message.into()))
}

/// A statement of `words` keywords and nothing after them (`SHOW SINKS`, `CHECKPOINT`).
fn bare(tokens: &[Tok], words: usize, name: &str, statement: Statement) -> Result<Statement> {
    if tokens.len() > words {
        return Err(syntax(format!("{name} takes no arguments")));
    }
    Ok(statement)
}

fn parse_form(sql: &str, form: Form, tokens: &[Tok]) -> Result<Statement> {
    match form {
        Form::ShowStreams => bare(
            tokens,
            2,
            "SHOW STREAMS",
            Statement::ShowRelations(RelationKind::Stream),
        ),
        Form::DropStream => parse_drop_stream(sql, &tokens[2..]),
        Form::AlterStream => parse_alter_stream(sql, &tokens[2..]),
        Form::CreateStream => parse_create_stream(sql, tokens),
        Form::CreateView => parse_create_view(sql, &tokens[3..]),
        Form::ExplainCreateView => match parse_create_view(sql, &tokens[4..])? {
            Statement::CreateView(create) => Ok(Statement::ExplainCreateView(create)),
            _ => Err(syntax("expected EXPLAIN CREATE MATERIALIZED VIEW")),
        },
        Form::DropView => {
            let (names, if_exists) = parse_names(sql, &tokens[3..])?;
            Ok(Statement::DropView { names, if_exists })
        }
        Form::ShowViews => bare(tokens, 3, "SHOW MATERIALIZED VIEWS", Statement::ShowViews),
        Form::ExplainView => {
            let (mut names, if_exists) = parse_names(sql, &tokens[3..])?;
            match (names.pop(), names.is_empty(), if_exists) {
                (Some(name), true, false) => Ok(Statement::ExplainView(name)),
                _ => Err(syntax("expected EXPLAIN MATERIALIZED VIEW name")),
            }
        }
        Form::Subscribe => Ok(Statement::Subscribe(parse_subscribe(sql, &tokens[1..])?)),
        Form::CopySubscribe => {
            // COPY ( SUBSCRIBE ... ) TO STDOUT
            let close = matching_paren(tokens, 1);
            let close =
                close.ok_or_else(|| syntax("unbalanced parentheses in COPY (SUBSCRIBE ...)"))?;
            let tail: Vec<String> = tokens[close + 1..].iter().filter_map(word).collect();
            if tail != ["TO", "STDOUT"] {
                return Err(syntax("expected COPY (SUBSCRIBE ...) TO STDOUT"));
            }
            Ok(Statement::Subscribe(parse_subscribe(
                sql,
                &tokens[3..close],
            )?))
        }
        Form::DeclareSubscribe => {
            let name = match &tokens[1].token {
                Token::Word(w) => normalize_ident(&ast::Ident {
                    value: w.value.clone(),
                    quote_style: w.quote_style,
                    span: datafusion::sql::sqlparser::tokenizer::Span::empty(),
                }),
                _ => return Err(syntax("expected DECLARE name CURSOR FOR SUBSCRIBE ...")),
            };
            let at = tokens
                .iter()
                .position(|t| word(t).as_deref() == Some("SUBSCRIBE"))
                .ok_or_else(|| syntax("expected DECLARE name CURSOR FOR SUBSCRIBE ..."))?;
            let between: Vec<String> = tokens[2..at].iter().filter_map(word).collect();
            if between.first().map(String::as_str) != Some("CURSOR")
                || between.last().map(String::as_str) != Some("FOR")
            {
                return Err(syntax("expected DECLARE name CURSOR FOR SUBSCRIBE ..."));
            }
            Ok(Statement::DeclareSubscribe {
                cursor: name,
                subscribe: parse_subscribe(sql, &tokens[at + 1..])?,
            })
        }
        Form::Fetch => parse_fetch(sql, &tokens[1..]),
        Form::Close => {
            let mut parser =
                Parser::new(&PostgreSqlDialect {}).try_with_sql(text_of(sql, &tokens[1..]))?;
            let cursor = normalize_ident(&parser.parse_identifier()?);
            parser.expect_token(&Token::EOF)?;
            Ok(Statement::CloseCursor(cursor))
        }
        Form::Checkpoint => bare(tokens, 1, "CHECKPOINT", Statement::Checkpoint),
        Form::CreateModel => parse_create_model(sql, tokens),
        Form::RetrainModel => parse_retrain_model(sql, &tokens[2..]),
        Form::DropModel => {
            let (names, if_exists) = parse_names(sql, &tokens[2..])?;
            Ok(Statement::DropModel { names, if_exists })
        }
        Form::ShowModels => bare(tokens, 2, "SHOW MODELS", Statement::ShowModels),
        Form::ShowModelVersions => Ok(Statement::ShowModelVersions(parse_one_name(
            sql,
            &tokens[3..],
            "SHOW MODEL VERSIONS name",
        )?)),
        Form::DescribeModel => Ok(Statement::DescribeModel(parse_one_name(
            sql,
            &tokens[2..],
            "DESCRIBE MODEL name",
        )?)),
        Form::AlterModel => parse_alter_model(sql, &tokens[2..]),
        Form::CreateMonitor => parse_create_monitor(sql, &tokens[3..]),
        Form::DropMonitor => {
            let (names, if_exists) = parse_names(sql, &tokens[3..])?;
            Ok(Statement::DropMonitor { names, if_exists })
        }
        Form::ShowMonitors => bare(tokens, 3, "SHOW MODEL MONITORS", Statement::ShowMonitors),
        Form::CreateSink => parse_create_sink(sql, &tokens[2..]),
        Form::DropSink => {
            let (names, if_exists) = parse_names(sql, &tokens[2..])?;
            Ok(Statement::DropSink { names, if_exists })
        }
        Form::ShowSinks => bare(tokens, 2, "SHOW SINKS", Statement::ShowSinks),
    }
}

/// `[IF NOT EXISTS] name FROM relation WITH (...)`, after CREATE SINK.
fn parse_create_sink(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let shape = || syntax("expected CREATE SINK name FROM relation WITH (connector = ..., ...)");
    let text = rest
        .first()
        .map_or("", |first| &sql[first.start..rest[rest.len() - 1].end]);
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text)?;
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    if !parser.parse_keyword(Keyword::FROM) {
        return Err(shape());
    }
    let from = parser.parse_object_name(false)?;
    if !parser.parse_keyword(Keyword::WITH) {
        return Err(shape());
    }
    let options = parse_with_options(&mut parser)?;
    if parser.peek_token().token != Token::EOF {
        return Err(shape());
    }
    Ok(Statement::CreateSink(CreateSink {
        name,
        if_not_exists,
        from,
        options,
    }))
}

fn parse_drop_stream(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let text = rest
        .first()
        .map_or("", |first| &sql[first.start..rest[rest.len() - 1].end]);
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text)?;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
    parser.expect_token(&Token::EOF)?;
    Ok(Statement::DropStream { names, if_exists })
}

fn parse_alter_stream(sql: &str, rest: &[Tok]) -> Result<Statement> {
    let text = rest
        .first()
        .map_or("", |first| &sql[first.start..rest[rest.len() - 1].end]);
    let mut parser = Parser::new(&PostgreSqlDialect {}).try_with_sql(text)?;
    let name = parser.parse_object_name(false)?;
    let (set, reset) = if parser.parse_keyword(Keyword::SET) {
        parser.expect_token(&Token::LParen)?;
        let options = parser.parse_comma_separated(|p| p.parse_sql_option())?;
        parser.expect_token(&Token::RParen)?;
        (options_text(&options)?, Vec::new())
    } else if parser.parse_keyword(Keyword::RESET) {
        parser.expect_token(&Token::LParen)?;
        let names = parser.parse_comma_separated(|p| p.parse_identifier())?;
        parser.expect_token(&Token::RParen)?;
        (
            Vec::new(),
            names.iter().map(|n| n.value.to_ascii_lowercase()).collect(),
        )
    } else {
        return Err(syntax(
            "expected SET (option = value, ...) or RESET (option, ...) after ALTER STREAM name",
        ));
    };
    parser.expect_token(&Token::EOF)?;
    Ok(Statement::AlterStream { name, set, reset })
}

/// `WITH (k = v)` options as (lower-case name, value text).
fn options_text(options: &[SqlOption]) -> Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|option| match option {
            SqlOption::KeyValue { key, value } => {
                let value = match value {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                        Value::Number(n, _) => n.to_string(),
                        Value::Boolean(b) => b.to_string(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(ident) => ident.value.clone(),
                    other => other.to_string(),
                };
                Ok((key.value.to_ascii_lowercase(), value))
            }
            other => Err(syntax(format!(
                "expected option = value, found \"{other}\""
            ))),
        })
        .collect()
}

fn parse_create_stream(sql: &str, tokens: &[Tok]) -> Result<Statement> {
    // Byte ranges to cut from the statement, and the STREAM keyword to turn into TABLE.
    let stream_keyword = &tokens[1];
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut watermark: Option<Watermark> = None;
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        let starts_element = depth == 1
            && i > 0
            && matches!(tokens[i - 1].token, Token::LParen | Token::Comma)
            && word(&tokens[i]).as_deref() == Some("WATERMARK");
        if !starts_element {
            i += 1;
            continue;
        }
        // The element runs to the next comma at this depth or the closing parenthesis.
        let mut end = i;
        let mut inner = 0i32;
        while end + 1 < tokens.len() {
            match tokens[end + 1].token {
                Token::LParen => inner += 1,
                Token::RParen if inner == 0 => break,
                Token::RParen => inner -= 1,
                Token::Comma if inner == 0 => break,
                _ => {}
            }
            end += 1;
        }
        if watermark.is_some() {
            return Err(syntax("a stream has at most one WATERMARK"));
        }
        watermark = Some(parse_watermark(sql, &tokens[i..=end])?);
        // Cut the element with the comma before it (or after it, if it comes first).
        let (cut_start, cut_end) = if matches!(tokens[i - 1].token, Token::Comma) {
            (tokens[i - 1].start, tokens[end].end)
        } else if matches!(tokens.get(end + 1).map(|t| &t.token), Some(Token::Comma)) {
            (tokens[i].start, tokens[end + 1].end)
        } else {
            (tokens[i].start, tokens[end].end)
        };
        cuts.push((cut_start, cut_end));
        i = end + 1;
    }
    // `INCLUDE partition AS p` (a connector's metadata as a column): cut, added to the columns
    // with its type, and passed on as option `include.partition = 'p'`.
    let mut included: Vec<(String, String)> = Vec::new();
    let columns_end = tokens.iter().enumerate().scan(0i32, |depth, (i, t)| {
        match t.token {
            Token::LParen => *depth += 1,
            Token::RParen => *depth -= 1,
            _ => {}
        }
        Some((i, *depth == 0 && matches!(t.token, Token::RParen)))
    });
    let columns_end = columns_end
        .filter(|(_, closes)| *closes)
        .map(|(i, _)| i)
        .next();
    let mut i = columns_end.map_or(tokens.len(), |end| end + 1);
    while i < tokens.len() {
        if word(&tokens[i]).as_deref() != Some("INCLUDE") {
            i += 1;
            continue;
        }
        let kind = tokens
            .get(i + 1)
            .and_then(word)
            .map(|w| w.to_ascii_lowercase())
            .ok_or_else(|| {
                syntax("expected INCLUDE key | partition | offset | timestamp [AS column]")
            })?;
        if !["key", "partition", "offset", "timestamp"].contains(&kind.as_str()) {
            return Err(syntax(format!(
                "cannot INCLUDE \"{kind}\" (key, partition, offset or timestamp)"
            )));
        }
        let (name, end) = if tokens.get(i + 2).and_then(word).as_deref() == Some("AS") {
            let name = match tokens.get(i + 3).map(|t| &t.token) {
                Some(Token::Word(w)) if w.quote_style.is_some() => w.value.clone(),
                Some(Token::Word(w)) => w.value.to_lowercase(),
                _ => {
                    return Err(syntax(format!(
                        "expected a column name after INCLUDE {kind} AS"
                    )));
                }
            };
            (name, i + 3)
        } else {
            (format!("_{kind}"), i + 1)
        };
        if included.iter().any(|(k, _)| *k == kind) {
            return Err(syntax(format!("INCLUDE {kind} appears twice")));
        }
        cuts.push((tokens[i].start, tokens[end].end));
        included.push((kind, name));
        i = end + 1;
    }
    // Dotted option names (`fields.amount.kind = ...`, the connector spelling) become one
    // quoted name, which sqlparser takes as an option key.
    let mut edits: Vec<(usize, usize, String)> = cuts
        .into_iter()
        .map(|(start, end)| (start, end, String::new()))
        .collect();
    if let (Some(end), false) = (columns_end, included.is_empty()) {
        let at = tokens[end].start;
        let columns: String = included
            .iter()
            .map(|(kind, name)| {
                let column_type = match kind.as_str() {
                    "key" => "TEXT",
                    "partition" => "INTEGER",
                    "offset" => "BIGINT",
                    _ => "TIMESTAMPTZ",
                };
                format!(", \"{}\" {column_type}", name.replace('"', "\"\""))
            })
            .collect();
        edits.push((at, at, columns));
    }
    if let Some(with) = top_level_word(tokens, "WITH") {
        let mut i = with + 1;
        while i < tokens.len() {
            let starts_option = matches!(tokens[i - 1].token, Token::LParen | Token::Comma)
                && matches!(tokens[i].token, Token::Word(_));
            let mut end = i;
            while starts_option
                && matches!(tokens.get(end + 1).map(|t| &t.token), Some(Token::Period))
                && matches!(tokens.get(end + 2).map(|t| &t.token), Some(Token::Word(_)))
            {
                end += 2;
            }
            if end > i {
                let name: String = tokens[i..=end]
                    .iter()
                    .map(|t| match &t.token {
                        Token::Word(w) => w.value.clone(),
                        _ => ".".to_string(),
                    })
                    .collect();
                edits.push((tokens[i].start, tokens[end].end, format!("\"{name}\"")));
            }
            i = end + 1;
        }
    }
    edits.sort_by_key(|(start, _, _)| *start);
    let statement_end = tokens[tokens.len() - 1].end;
    let mut text = String::with_capacity(statement_end - tokens[0].start);
    text.push_str(&sql[tokens[0].start..stream_keyword.start]);
    text.push_str("TABLE");
    let mut at = stream_keyword.end;
    for (start, end, replacement) in edits {
        text.push_str(&sql[at..start]);
        text.push_str(&replacement);
        at = end;
    }
    text.push_str(&sql[at..statement_end]);
    let mut parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)?
        .parse_statements()?;
    let (Some(mut table), true) = (parsed.pop(), parsed.is_empty()) else {
        return Err(syntax("expected one CREATE STREAM statement"));
    };
    let ast::Statement::CreateTable(create) = &mut table else {
        return Err(syntax("expected CREATE STREAM name (columns ...)"));
    };
    if create.query.is_some() {
        return Err(Error::Unsupported(
            "CREATE STREAM ... AS SELECT (create the stream, then INSERT ... SELECT)".to_string(),
        ));
    }
    let mut options = match std::mem::take(&mut create.table_options) {
        ast::CreateTableOptions::None => Vec::new(),
        ast::CreateTableOptions::With(options) => options_text(&options)?,
        other => return Err(syntax(format!("unexpected options \"{other}\""))),
    };
    options.extend(
        included
            .into_iter()
            .map(|(kind, name)| (format!("include.{kind}"), name)),
    );
    Ok(Statement::CreateStream(CreateStream {
        table: Box::new(super::rewrite_types(table)?),
        watermark,
        options,
    }))
}

fn parse_watermark(sql: &str, element: &[Tok]) -> Result<Watermark> {
    let shape = || syntax("expected WATERMARK FOR column AS expression");
    if element.len() < 5 || word(&element[1]).as_deref() != Some("FOR") {
        return Err(shape());
    }
    let column = match &element[2].token {
        Token::Word(w) => normalize_ident(&ast::Ident {
            value: w.value.clone(),
            quote_style: w.quote_style,
            span: datafusion::sql::sqlparser::tokenizer::Span::empty(),
        }),
        _ => return Err(shape()),
    };
    if word(&element[3]).as_deref() != Some("AS") {
        return Err(shape());
    }
    let expr = sql[element[4].start..element[element.len() - 1].end].to_string();
    // The expression must at least parse; it is planned against the columns at creation.
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&expr)?
        .parse_expr()?;
    Ok(Watermark { column, expr })
}

/// Rewrite the ANSI window table functions to the short form, `SESSION(` to
/// `session_window(` (SESSION is a keyword to sqlparser), and `t FOR SYSTEM_TIME AS OF x.c` to
/// `eddy_temporal(t, 'c')`. None when nothing needs rewriting (the common case).
pub fn rewrite_sql(sql: &str) -> Result<Option<String>> {
    let lower = sql.to_ascii_lowercase();
    if ![
        "descriptor",
        "system_time",
        "session",
        "predict",
        "evaluate",
        "drift_",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return Ok(None);
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        return Ok(None);
    };
    let tokens = with_offsets(sql, tokens);
    // (start, end, replacement) byte edits, non-overlapping.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let is_window = |t: &Tok| matches!(word(t).as_deref(), Some("TUMBLE" | "HOP" | "SESSION"));
    let mut i = 0;
    while i < tokens.len() {
        // TABLE ( TUMBLE ( ... ) ) -> TUMBLE ( ... )
        if word(&tokens[i]).as_deref() == Some("TABLE")
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::LParen))
            && tokens.get(i + 2).is_some_and(is_window)
            && let Some(close) = matching_paren(&tokens, i + 1)
        {
            edits.push((tokens[i].start, tokens[i + 1].end, String::new()));
            edits.push((tokens[close].start, tokens[close].end, String::new()));
            i += 2;
            continue;
        }
        // TUMBLE ( TABLE x [PARTITION BY a, b], DESCRIPTOR ( ts ), ... )
        if is_window(&tokens[i])
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::LParen))
            && let Some(close) = matching_paren(&tokens, i + 1)
        {
            let previous = i.checked_sub(1).map(|p| &tokens[p]);
            let in_from = previous.is_some_and(|p| {
                matches!(p.token, Token::Comma | Token::LParen)
                    || matches!(word(p).as_deref(), Some("FROM" | "JOIN"))
            });
            if word(&tokens[i]).as_deref() == Some("SESSION") && in_from {
                edits.push((tokens[i].start, tokens[i].end, "session_window".to_string()));
            }
            let args = &tokens[i + 2..close];
            if args.first().and_then(word).as_deref() == Some("TABLE") && args.len() > 1 {
                edits.push((args[0].start, args[1].start, String::new()));
                let mut partition = Vec::new();
                if let Some(p) = args
                    .iter()
                    .position(|t| word(t).as_deref() == Some("PARTITION"))
                {
                    let descriptor = args
                        .iter()
                        .position(|t| word(t).as_deref() == Some("DESCRIPTOR"))
                        .ok_or_else(|| syntax("expected DESCRIPTOR(column) after PARTITION BY"))?;
                    // PARTITION BY a, b , DESCRIPTOR: the keys, the comma before DESCRIPTOR stays.
                    let keys_end = descriptor.saturating_sub(1);
                    if p < 1 || p + 2 >= keys_end {
                        return Err(syntax(
                            "expected SESSION(TABLE relation PARTITION BY column, ..., DESCRIPTOR(column), gap)",
                        ));
                    }
                    partition = args[p + 2..keys_end]
                        .iter()
                        .filter(|t| !matches!(t.token, Token::Comma))
                        .map(|t| sql[t.start..t.end].to_string())
                        .collect();
                    edits.push((args[p - 1].end, args[keys_end - 1].end, String::new()));
                }
                if let Some(d) = args
                    .iter()
                    .position(|t| word(t).as_deref() == Some("DESCRIPTOR"))
                    && matches!(args.get(d + 1).map(|t| &t.token), Some(Token::LParen))
                    && matches!(args.get(d + 3).map(|t| &t.token), Some(Token::RParen))
                {
                    edits.push((args[d].start, args[d + 1].end, String::new()));
                    edits.push((args[d + 3].start, args[d + 3].end, String::new()));
                }
                if !partition.is_empty() {
                    edits.push((
                        tokens[close].start,
                        tokens[close].start,
                        format!(", {}", partition.join(", ")),
                    ));
                }
            }
            i += 2;
            continue;
        }
        // PREDICT ( model , ... ) -> PREDICT ( 'model' , ... )
        if matches!(
            word(&tokens[i]).as_deref(),
            Some(
                "PREDICT"
                    | "PREDICT_PROBA"
                    | "PREDICT_DISTANCE"
                    | "EVALUATE"
                    | "DRIFT_PSI"
                    | "DRIFT_KS"
            )
        ) && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::LParen))
            && matches!(tokens.get(i + 2).map(|t| &t.token), Some(Token::Word(_)))
            // A table or alias of that name (INSERT INTO predict (a, b)) is no call.
            && !i.checked_sub(1).and_then(|p| word(&tokens[p])).is_some_and(|w| {
                matches!(
                    w.as_str(),
                    "INTO" | "TABLE" | "COPY" | "AS" | "WITH" | "UPDATE"
                )
            })
        {
            let mut end = i + 2;
            while end + 2 < tokens.len()
                && matches!(tokens[end + 1].token, Token::Period)
                && matches!(tokens[end + 2].token, Token::Word(_))
            {
                end += 2;
            }
            if matches!(
                tokens.get(end + 1).map(|t| &t.token),
                Some(Token::Comma | Token::RParen)
            ) {
                let name: Vec<String> = tokens[i + 2..=end]
                    .iter()
                    .filter_map(|t| match &t.token {
                        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
                        Token::Word(w) => Some(w.value.to_lowercase()),
                        _ => None,
                    })
                    .collect();
                edits.push((
                    tokens[i + 2].start,
                    tokens[end].end,
                    format!("'{}'", name.join(".").replace('\'', "''")),
                ));
                // EVALUATE(m, (query)): the query goes to the table function as its text (a
                // subquery argument must give one column), run when the result is read.
                if word(&tokens[i]).as_deref() == Some("EVALUATE")
                    && matches!(tokens.get(end + 1).map(|t| &t.token), Some(Token::Comma))
                    && matches!(tokens.get(end + 2).map(|t| &t.token), Some(Token::LParen))
                    && let Some(close) = matching_paren(&tokens, end + 2)
                    && close > end + 3
                {
                    let inner = &sql[tokens[end + 3].start..tokens[close - 1].end];
                    // One level: each would double the quoting of the next.
                    if tokens[end + 3..close]
                        .iter()
                        .any(|t| word(t).as_deref() == Some("EVALUATE"))
                    {
                        return Err(Error::Unsupported(
                            "EVALUATE inside the query of an EVALUATE".to_string(),
                        ));
                    }
                    let inner = rewrite_sql(inner)?.unwrap_or_else(|| inner.to_string());
                    edits.push((
                        tokens[end + 2].start,
                        tokens[close].end,
                        format!("'{}'", inner.replace('\'', "''")),
                    ));
                    i = close + 1;
                    continue;
                }
                i = end + 1;
                continue;
            }
        }
        // name FOR SYSTEM_TIME AS OF x.col
        if word(&tokens[i]).as_deref() == Some("FOR")
            && tokens.get(i + 1).and_then(word).as_deref() == Some("SYSTEM_TIME")
            && tokens.get(i + 2).and_then(word).as_deref() == Some("AS")
            && tokens.get(i + 3).and_then(word).as_deref() == Some("OF")
            && i > 0
        {
            // The table name: words joined by periods, ending just before FOR.
            let mut start = i - 1;
            while start >= 2 && matches!(tokens[start - 1].token, Token::Period) {
                start -= 2;
            }
            // The time column: a (qualified) name after OF; its last part names the column.
            let mut end = i + 4;
            while end + 2 < tokens.len() && matches!(tokens[end + 1].token, Token::Period) {
                end += 2;
            }
            let column = match tokens.get(end).map(|t| &t.token) {
                Some(Token::Word(w)) => w.value.clone(),
                _ => return Err(syntax("expected FOR SYSTEM_TIME AS OF column")),
            };
            let table = &sql[tokens[start].start..tokens[i - 1].end];
            edits.push((
                tokens[start].start,
                tokens[end].end,
                format!("eddy_temporal({table}, '{}')", column.replace('\'', "''")),
            ));
            i = end + 1;
            continue;
        }
        i += 1;
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|e| (e.0, e.1));
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (start, end, replacement) in edits {
        if start < at {
            continue;
        }
        out.push_str(&sql[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&sql[at..]);
    Ok(Some(out))
}

/// Attach byte offsets to tokens (sqlparser gives 1-based line and character columns) and drop
/// whitespace and comments.
fn with_offsets(sql: &str, tokens: Vec<TokenWithSpan>) -> Vec<Tok> {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> usize {
        let Some(&start) = line_starts.get((line as usize).saturating_sub(1)) else {
            return sql.len();
        };
        let rest = &sql[start..];
        rest.char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(sql.len(), |(i, _)| start + i)
    };
    tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .map(|t| Tok {
            start: offset(t.span.start.line, t.span.start.column),
            end: offset(t.span.end.line, t.span.end.column),
            token: t.token,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(sql: &str) -> Vec<String> {
        split(sql)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Ours(s) => format!("{s:?}"),
                Piece::Sql(t) => format!("SQL {t}"),
            })
            .collect()
    }

    #[test]
    fn create_stream_with_watermark_and_options() {
        let sql = "CREATE STREAM bids (auction BIGINT, ts TIMESTAMPTZ,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (retention = '30 days'); SELECT 1";
        let pieces = split(sql).unwrap().unwrap();
        assert_eq!(pieces.len(), 2);
        let Piece::Ours(Statement::CreateStream(create)) = &pieces[0] else {
            panic!("{pieces:?}")
        };
        assert_eq!(
            create.watermark,
            Some(Watermark {
                column: "ts".into(),
                expr: "ts - INTERVAL '5' SECOND".into()
            })
        );
        assert_eq!(create.options, vec![("retention".into(), "30 days".into())]);
        assert!(
            create
                .table
                .to_string()
                .starts_with("CREATE TABLE bids (auction BIGINT, ts TIMESTAMPTZ)"),
            "{}",
            create.table
        );
        assert!(matches!(&pieces[1], Piece::Sql("SELECT 1")));
    }

    #[test]
    fn ansi_windows_and_temporal_joins_are_rewritten() {
        let rewrite = |s: &str| rewrite_sql(s).unwrap().unwrap();
        assert_eq!(
            rewrite("SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' MINUTE))"),
            "SELECT * FROM TUMBLE(bids, ts, INTERVAL '1' MINUTE)"
        );
        assert_eq!(
            rewrite(
                "SELECT * FROM TABLE(SESSION(TABLE bids PARTITION BY bidder, DESCRIPTOR(ts), INTERVAL '30' SECOND))"
            ),
            "SELECT * FROM session_window(bids, ts, INTERVAL '30' SECOND, bidder)"
        );
        assert_eq!(
            rewrite("SELECT * FROM SESSION(bids, ts, INTERVAL '1' SECOND)"),
            "SELECT * FROM session_window(bids, ts, INTERVAL '1' SECOND)"
        );
        assert_eq!(
            rewrite(
                "SELECT * FROM bids b JOIN users FOR SYSTEM_TIME AS OF b.ts AS u ON b.bidder = u.id"
            ),
            "SELECT * FROM bids b JOIN eddy_temporal(users, 'ts') AS u ON b.bidder = u.id"
        );
        assert!(rewrite_sql("SELECT 1").unwrap().is_none());
        // Malformed forms are errors or left to the regular parser, never a panic.
        assert!(rewrite_sql("SELECT session() FROM sessions").is_ok());
        assert!(rewrite_sql("SELECT * FROM hop()").is_ok());
        assert!(
            rewrite_sql(
                "SELECT * FROM SESSION(TABLE t PARTITION BY DESCRIPTOR(ts), INTERVAL '1' MINUTE)"
            )
            .is_err()
        );
    }

    #[test]
    fn view_and_subscribe_statements() {
        let create = ours(
            "CREATE MATERIALIZED VIEW v AS SELECT a, count(*) FROM s GROUP BY a EMIT ON WINDOW CLOSE",
        );
        assert!(create[0].contains("emit_on_close: true"), "{create:?}");
        assert!(
            create[0].contains("query: \"SELECT a, count(*) FROM s GROUP BY a\""),
            "{create:?}"
        );
        assert!(
            ours("SUBSCRIBE TO v WITH (SNAPSHOT = false, PROGRESS)")[0]
                .contains("(\"progress\", \"\")")
        );
        assert!(
            ours("SUBSCRIBE (SELECT * FROM v) AS OF 17 WITH (snapshot = false)")[0]
                .contains("as_of: Some(17)")
        );
        assert!(ours("COPY (SUBSCRIBE v) TO STDOUT")[0].starts_with("Subscribe"));
        assert!(ours("DECLARE c CURSOR FOR SUBSCRIBE v")[0].starts_with("DeclareSubscribe"));
        assert!(ours("FETCH 100 c WITH (timeout = '1s')")[0].contains("count: Some(100)"));
        assert!(ours("FETCH ALL FROM c")[0].contains("count: None"));
        assert!(ours("FETCH c")[0].contains("count: Some(1)"));
        assert!(split("FETCH PRIOR FROM c").is_err());
        assert!(ours("DROP MATERIALIZED VIEW IF EXISTS a, b")[0].contains("if_exists: true"));
        assert!(split("CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT SOMETIMES").is_err());
    }

    #[test]
    fn watermark_first_and_other_forms() {
        let sql = "create stream s (watermark for t as t, t timestamp)";
        let Piece::Ours(Statement::CreateStream(c)) = split(sql).unwrap().unwrap().remove(0) else {
            panic!()
        };
        assert!(c.table.to_string().contains("(t TIMESTAMP)"), "{}", c.table);
        assert_eq!(ours("SHOW STREAMS"), vec!["ShowRelations(Stream)"]);
        assert!(ours("DROP STREAM IF EXISTS a, b")[0].contains("if_exists: true"));
        assert!(ours("ALTER STREAM s SET (retention = '1 day')")[0].contains("retention"));
        assert!(split("SELECT 'stream'").unwrap().is_none());
        assert!(split("CREATE STREAM s (a int, WATERMARK ts)").is_err());
        let sql = "CREATE STREAM k (amount DOUBLE PRECISION) INCLUDE partition AS p \
                   INCLUDE timestamp WITH (connector = 'kafka')";
        let Piece::Ours(Statement::CreateStream(c)) = split(sql).unwrap().unwrap().remove(0) else {
            panic!("not a stream");
        };
        assert!(
            c.table
                .to_string()
                .contains("\"p\" INTEGER, \"_timestamp\" TIMESTAMPTZ"),
            "{}",
            c.table
        );
        assert!(
            c.options
                .contains(&("include.partition".into(), "p".into()))
        );
        assert!(
            c.options
                .contains(&("include.timestamp".into(), "_timestamp".into()))
        );
        assert!(split("CREATE STREAM k (a int) INCLUDE headers").is_err());
        assert!(split("CREATE STREAM k (a int) INCLUDE key AS").is_err());
        assert!(split("ALTER STREAM s RENAME TO t").is_err());
    }
}
