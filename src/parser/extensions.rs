//! EddyDB's own statements, which sqlparser does not know:
//!
//! ```sql
//! CREATE STREAM [IF NOT EXISTS] name (col type, ..., WATERMARK FOR col AS expr) [WITH (k = v, ...)]
//! DROP STREAM [IF EXISTS] name [, ...]
//! SHOW STREAMS
//! ALTER STREAM name SET (k = v, ...) | RESET (k, ...)
//! ```
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
    lower.contains("stream")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    CreateStream,
    DropStream,
    ShowStreams,
    AlterStream,
}

fn word(t: &Tok) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn form(tokens: &[Tok]) -> Option<Form> {
    let words: Vec<String> = tokens.iter().take(2).map_while(word).collect();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["CREATE", "STREAM"] => Some(Form::CreateStream),
        ["DROP", "STREAM"] => Some(Form::DropStream),
        ["SHOW", "STREAMS"] => Some(Form::ShowStreams),
        ["ALTER", "STREAM"] => Some(Form::AlterStream),
        _ => None,
    }
}

fn syntax(message: impl Into<String>) -> Error {
    Error::Parse(ParserError::ParserError(message.into()))
}

fn parse_form(sql: &str, form: Form, tokens: &[Tok]) -> Result<Statement> {
    match form {
        Form::ShowStreams => {
            if tokens.len() > 2 {
                return Err(syntax("SHOW STREAMS takes no arguments"));
            }
            Ok(Statement::ShowRelations(RelationKind::Stream))
        }
        Form::DropStream => parse_drop_stream(sql, &tokens[2..]),
        Form::AlterStream => parse_alter_stream(sql, &tokens[2..]),
        Form::CreateStream => parse_create_stream(sql, tokens),
    }
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
    let statement_end = tokens[tokens.len() - 1].end;
    let mut text = String::with_capacity(statement_end - tokens[0].start);
    text.push_str(&sql[tokens[0].start..stream_keyword.start]);
    text.push_str("TABLE");
    let mut at = stream_keyword.end;
    for (start, end) in cuts {
        text.push_str(&sql[at..start]);
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
    let options = match std::mem::take(&mut create.table_options) {
        ast::CreateTableOptions::None => Vec::new(),
        ast::CreateTableOptions::With(options) => options_text(&options)?,
        other => return Err(syntax(format!("unexpected options \"{other}\""))),
    };
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
        assert!(split("ALTER STREAM s RENAME TO t").is_err());
    }
}
