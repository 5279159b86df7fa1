//! Parses the SQL AWS DMS runs on Redshift into the tables, key columns and seq range a fix needs.
//!
//! DMS applies a batch by sweeping its intermediate table `awsdms_changes<hash>` into each target
//! table (`INSERT … SELECT … FROM`, `UPDATE … FROM`, `DELETE … USING`), joining the target's key
//! columns to the intermediate table's `seg1..segN` columns and limiting the sweep to a range of
//! `seq`. In one-by-one mode it sends single-row statements with literal values instead. Both are
//! parsed with `sqlparser`'s Redshift dialect, never with regular expressions: names may be quoted
//! or not, qualified or not, aliased or not, and the statement carries DMS's version comment.
//!
//! Names follow Redshift's rules: unquoted identifiers fold to lower case, quoted ones are kept as
//! written, and an unqualified table is in schema `public`.

use sqlparser::ast::{
    BinaryOperator, Delete, Expr, FromTable, Ident, Insert, ObjectName, ObjectNamePart, Query,
    SelectItem, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UnaryOperator,
    Update, UpdateTableFromKind, Value,
};
use sqlparser::dialect::RedshiftSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::config::QualifiedName;

/// The schema an unqualified table name lives in.
pub const DEFAULT_SCHEMA: &str = "public";

/// How the name of DMS's intermediate table begins (followed by a hash).
pub const CHANGES_TABLE_PREFIX: &str = "awsdms_changes";

/// The intermediate table's column numbering the changes.
const SEQ_COLUMN: &str = "seq";

/// Most operator tokens a statement may have. A chain of `n` binary operators parses into a tree
/// `n` deep, and dropping or printing it recurses that deep: this bound keeps that within a
/// 2 MiB thread stack. DMS's widest statements (1600 columns) stay far below it.
pub const MAX_OPERATORS: usize = 10_000;

/// Why a statement is not one this parser understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementParseError {
    #[error("statement text is empty")]
    Empty,
    #[error("statement is not valid Redshift SQL: {0}")]
    Syntax(String),
    #[error("expected one statement, found {0}")]
    NotOneStatement(usize),
    #[error("not an INSERT, UPDATE or DELETE statement: {0}")]
    NotDml(String),
    #[error("unsupported {what} in DMS statement: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error("seq range is empty: {low} > {high}")]
    EmptySeqRange { low: i64, high: i64 },
    #[error("statement has {0} operators, more than the {MAX_OPERATORS} accepted")]
    TooComplex(usize),
}

impl StatementParseError {
    fn unsupported(what: &'static str, detail: impl ToString) -> Self {
        Self::Unsupported {
            what,
            detail: detail.to_string(),
        }
    }
}

/// What a DMS statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Insert,
    Update,
    Delete,
}

impl StatementKind {
    /// The lower-case name, as used in the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
        }
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key column of the target joined to the intermediate table's column holding its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyColumn {
    /// Column of the target table, e.g. `id`.
    pub target_column: String,
    /// Column of the intermediate table, e.g. `seg1`.
    pub changes_column: String,
}

/// What a fix needs to know about one DMS statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmsStatement {
    pub kind: StatementKind,
    /// The table written to; schema `public` when the statement does not name one.
    pub target: QualifiedName,
    /// The `awsdms_changes…` table swept; `None` for one-by-one (single-row) statements.
    pub changes_table: Option<QualifiedName>,
    /// Target key columns and the intermediate columns they are matched with, in statement order.
    pub key_columns: Vec<KeyColumn>,
    /// The inclusive `seq` range swept, when the statement bounds it on both sides.
    pub seq_range: Option<(i64, i64)>,
}

/// A parsed statement plus how its table names were written.
///
/// Fixes accept identifiers parsed from query text only if they were quoted (docs/architecture.md):
/// DMS always quotes, so an unquoted name hints at a statement DMS did not write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDmsStatement {
    pub statement: DmsStatement,
    /// Every part of the target table's name was quoted.
    pub target_quoted: bool,
    /// Every part of the intermediate table's name was quoted (false when there is none).
    pub changes_table_quoted: bool,
}

/// Parses one DMS statement (leading comments, line breaks and a trailing `;` allowed).
pub fn parse_dms_statement(sql: &str) -> Result<DmsStatement, StatementParseError> {
    parse_dms_statement_detailed(sql).map(|p| p.statement)
}

/// [`parse_dms_statement`], also telling whether the table names were quoted.
pub fn parse_dms_statement_detailed(sql: &str) -> Result<ParsedDmsStatement, StatementParseError> {
    let (mut statements, first_word) = parse_statements(sql)?;
    if statements.len() != 1 {
        return Err(if statements.is_empty() {
            StatementParseError::Empty
        } else {
            StatementParseError::NotOneStatement(statements.len())
        });
    }
    match statements.remove(0) {
        Statement::Insert(insert) => parse_insert(&insert),
        Statement::Update(update) => parse_update(&update),
        Statement::Delete(delete) => parse_delete(&delete),
        _ => Err(StatementParseError::NotDml(first_word)),
    }
}

/// Tokenizes (refusing inputs that would parse into trees too deep to handle) and parses;
/// also returns the first word, to name what a non-DML statement is.
fn parse_statements(sql: &str) -> Result<(Vec<Statement>, String), StatementParseError> {
    if sql.trim().is_empty() {
        return Err(StatementParseError::Empty);
    }
    let dialect = RedshiftSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| StatementParseError::Syntax(e.to_string()))?;
    let operators = tokens.iter().filter(|t| is_operator(&t.token)).count();
    if operators > MAX_OPERATORS {
        return Err(StatementParseError::TooComplex(operators));
    }
    let first_word = tokens
        .iter()
        .find_map(|t| match &t.token {
            Token::Word(w) => Some(w.value.to_uppercase()),
            _ => None,
        })
        .unwrap_or_default();
    let statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| StatementParseError::Syntax(e.to_string()))?;
    Ok((statements, first_word))
}

/// Whether a token can chain expressions (`AND`, `OR`, comparisons, arithmetic, `::`, …).
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(w.keyword, Keyword::AND | Keyword::OR),
        Token::Whitespace(_)
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::Comma
        | Token::LParen
        | Token::RParen
        | Token::Period
        | Token::SemiColon
        | Token::Placeholder(_)
        | Token::EOF => false,
        _ => true,
    }
}

/// Checks that `sql` parses as one or more statements in sqlparser's Redshift dialect.
///
/// Tests run every statement dmsguard sends to Redshift through this: the lab's stand-in is
/// PostgreSQL and accepts more than Redshift does.
pub fn is_valid_redshift_sql(sql: &str) -> Result<(), String> {
    let (statements, _) = parse_statements(sql).map_err(|e| e.to_string())?;
    if statements.is_empty() {
        return Err("no statement".to_owned());
    }
    Ok(())
}

/// A table named in the statement, with its alias.
#[derive(Debug)]
struct TableRef {
    name: QualifiedName,
    alias: Option<String>,
    quoted: bool,
}

impl TableRef {
    /// Whether a column qualifier (`alias`, `table`, `schema.table`, `db.schema.table`) names it.
    fn is_named_by(&self, qualifier: &[String]) -> bool {
        match qualifier {
            [single] => {
                self.alias.as_deref() == Some(single.as_str())
                    || (self.alias.is_none() && *single == self.name.table)
            }
            [.., schema, table] => *schema == self.name.schema && *table == self.name.table,
            [] => false,
        }
    }

    fn is_changes_table(&self) -> bool {
        self.name
            .table
            .to_ascii_lowercase()
            .starts_with(CHANGES_TABLE_PREFIX)
    }
}

/// An identifier as Redshift resolves it: unquoted folds to lower case.
fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// A table name, defaulting the schema; `db.schema.table` keeps schema and table.
fn table_name(name: &ObjectName) -> Result<(QualifiedName, bool), StatementParseError> {
    let idents = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(ident),
            ObjectNamePart::Function(_) => {
                Err(StatementParseError::unsupported("table name", name))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let quoted = idents.iter().all(|i| i.quote_style.is_some());
    let qualified = match idents.as_slice() {
        [table] => QualifiedName {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: ident_name(table),
        },
        [schema, table] | [_, schema, table] => QualifiedName {
            schema: ident_name(schema),
            table: ident_name(table),
        },
        _ => return Err(StatementParseError::unsupported("table name", name)),
    };
    Ok((qualified, quoted))
}

fn table_ref(name: &ObjectName, alias: Option<&Ident>) -> Result<TableRef, StatementParseError> {
    let (name, quoted) = table_name(name)?;
    Ok(TableRef {
        name,
        alias: alias.map(ident_name),
        quoted,
    })
}

/// The named tables of a `FROM`/`USING` list, joins included; subqueries and functions skipped.
fn named_tables(from: &[TableWithJoins]) -> Result<Vec<TableRef>, StatementParseError> {
    let mut tables = Vec::new();
    for twj in from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            if let TableFactor::Table { name, alias, .. } = factor {
                tables.push(table_ref(name, alias.as_ref().map(|a| &a.name))?);
            }
        }
    }
    Ok(tables)
}

fn changes_table(tables: Vec<TableRef>) -> Option<TableRef> {
    tables.into_iter().find(TableRef::is_changes_table)
}

/// A column reference, seen through parentheses and casts.
#[derive(Debug)]
struct ColumnRef {
    qualifier: Vec<String>,
    column: String,
}

fn column_ref(expr: &Expr) -> Option<ColumnRef> {
    match strip_casts(expr) {
        Expr::Identifier(ident) => Some(ColumnRef {
            qualifier: Vec::new(),
            column: ident_name(ident),
        }),
        Expr::CompoundIdentifier(idents) => {
            let (column, qualifier) = idents.split_last()?;
            Some(ColumnRef {
                qualifier: qualifier.iter().map(ident_name).collect(),
                column: ident_name(column),
            })
        }
        _ => None,
    }
}

fn strip_casts(mut expr: &Expr) -> &Expr {
    loop {
        match expr {
            Expr::Nested(inner) => expr = inner,
            Expr::Cast { expr: inner, .. } => expr = inner,
            _ => return expr,
        }
    }
}

/// An integer literal (`5`, `-5`, `'5'`), seen through parentheses and casts.
fn integer_literal(expr: &Expr) -> Option<i64> {
    match strip_casts(expr) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            Value::SingleQuotedString(s) => s.trim().parse().ok(),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match strip_casts(expr) {
            // Parsed with its sign so that i64::MIN fits.
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => format!("-{n}").parse().ok(),
                _ => None,
            },
            other => integer_literal(other)?.checked_neg(),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => integer_literal(expr),
        _ => None,
    }
}

/// The terms of a top-level `AND` chain (walked without recursion: chains can be long).
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) => stack.push(inner),
            other => out.push(other),
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Target,
    Changes,
    Unknown,
}

/// The tables a statement's `WHERE` clause can refer to.
struct Scope<'a> {
    target: Option<&'a TableRef>,
    changes: Option<&'a TableRef>,
}

impl Scope<'_> {
    fn side(&self, column: &ColumnRef) -> Side {
        if column.qualifier.is_empty() {
            return match (self.target, self.changes) {
                // Only one table in scope: an unqualified column is its.
                (None, Some(_)) => Side::Changes,
                (Some(_), None) => Side::Target,
                _ => Side::Unknown,
            };
        }
        if self
            .changes
            .is_some_and(|c| c.is_named_by(&column.qualifier))
        {
            Side::Changes
        } else if self
            .target
            .is_some_and(|t| t.is_named_by(&column.qualifier))
        {
            Side::Target
        } else {
            Side::Unknown
        }
    }

    /// `target.col = changes.segN` in either order.
    fn key_column(&self, expr: &Expr) -> Option<KeyColumn> {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = expr
        else {
            return None;
        };
        let (l, r) = (column_ref(left)?, column_ref(right)?);
        let (target, changes) = match (self.side(&l), self.side(&r)) {
            (Side::Target, Side::Changes) => (l, r),
            (Side::Changes, Side::Target) => (r, l),
            (Side::Target, Side::Unknown) => (l, r),
            (Side::Unknown, Side::Target) => (r, l),
            (Side::Unknown, Side::Changes) => (l, r),
            (Side::Changes, Side::Unknown) => (r, l),
            (Side::Unknown, Side::Unknown) if is_segment_column(&r.column) => (l, r),
            (Side::Unknown, Side::Unknown) if is_segment_column(&l.column) => (r, l),
            _ => return None,
        };
        if matches!(changes.column.as_str(), "seq" | "tbl" | "op") {
            return None;
        }
        Some(KeyColumn {
            target_column: target.column,
            changes_column: changes.column,
        })
    }

    fn is_seq(&self, expr: &Expr) -> bool {
        self.changes.is_some()
            && column_ref(expr).is_some_and(|c| {
                c.column == SEQ_COLUMN && matches!(self.side(&c), Side::Changes | Side::Unknown)
            })
    }

    /// The inclusive bounds one `WHERE` term puts on `seq`.
    fn seq_bounds(&self, expr: &Expr) -> (Option<i64>, Option<i64>) {
        match expr {
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } if self.is_seq(expr) => (integer_literal(low), integer_literal(high)),
            Expr::BinaryOp { left, op, right } => {
                let (op, value) = if self.is_seq(left) {
                    (op.clone(), integer_literal(right))
                } else if self.is_seq(right) {
                    (flip(op), integer_literal(left))
                } else {
                    return (None, None);
                };
                let Some(v) = value else {
                    return (None, None);
                };
                match op {
                    BinaryOperator::GtEq => (Some(v), None),
                    BinaryOperator::Gt => (v.checked_add(1), None),
                    BinaryOperator::LtEq => (None, Some(v)),
                    BinaryOperator::Lt => (None, v.checked_sub(1)),
                    BinaryOperator::Eq => (Some(v), Some(v)),
                    _ => (None, None),
                }
            }
            _ => (None, None),
        }
    }
}

/// The operator with its operands swapped (`a < b` is `b > a`).
fn flip(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        other => other.clone(),
    }
}

/// `seg1`, `seg2`, …: the intermediate table's key columns.
fn is_segment_column(name: &str) -> bool {
    name.strip_prefix("seg")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Key columns and seq range found in a `WHERE` clause.
type WhereFacts = (Vec<KeyColumn>, Option<(i64, i64)>);

/// Key columns and seq range of a `WHERE` clause.
fn analyse_where(
    scope: &Scope<'_>,
    selection: Option<&Expr>,
    with_keys: bool,
) -> Result<WhereFacts, StatementParseError> {
    let Some(selection) = selection else {
        return Ok((Vec::new(), None));
    };
    let mut keys: Vec<KeyColumn> = Vec::new();
    let (mut low, mut high): (Option<i64>, Option<i64>) = (None, None);
    for term in conjuncts(selection) {
        if with_keys && scope.changes.is_some() {
            if let Some(key) = scope.key_column(term) {
                if !keys.contains(&key) {
                    keys.push(key);
                }
                continue;
            }
        }
        let (lo, hi) = scope.seq_bounds(term);
        if let Some(lo) = lo {
            low = Some(low.map_or(lo, |l| l.max(lo)));
        }
        if let Some(hi) = hi {
            high = Some(high.map_or(hi, |h| h.min(hi)));
        }
    }
    let range = match (low, high) {
        (Some(low), Some(high)) if low > high => {
            return Err(StatementParseError::EmptySeqRange { low, high })
        }
        (Some(low), Some(high)) => Some((low, high)),
        _ => None,
    };
    Ok((keys, range))
}

fn parse_update(update: &Update) -> Result<ParsedDmsStatement, StatementParseError> {
    if !update.table.joins.is_empty() {
        return Err(StatementParseError::unsupported(
            "join in UPDATE target",
            &update.table,
        ));
    }
    let target = match &update.table.relation {
        TableFactor::Table { name, alias, .. } => table_ref(name, alias.as_ref().map(|a| &a.name))?,
        other => return Err(StatementParseError::unsupported("UPDATE target", other)),
    };
    let from = match &update.from {
        Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) => {
            named_tables(f)?
        }
        None => Vec::new(),
    };
    let changes = changes_table(from);
    let scope = Scope {
        target: Some(&target),
        changes: changes.as_ref(),
    };
    let (key_columns, seq_range) = analyse_where(&scope, update.selection.as_ref(), true)?;
    Ok(finish(
        StatementKind::Update,
        target,
        changes,
        key_columns,
        seq_range,
    ))
}

fn parse_delete(delete: &Delete) -> Result<ParsedDmsStatement, StatementParseError> {
    if !delete.tables.is_empty() {
        return Err(StatementParseError::unsupported(
            "multi-table DELETE",
            "DELETE names several tables before FROM",
        ));
    }
    let from = match &delete.from {
        FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
    };
    let [first] = from.as_slice() else {
        return Err(StatementParseError::unsupported(
            "DELETE target",
            "expected exactly one table after FROM",
        ));
    };
    let mut tables = named_tables(std::slice::from_ref(first))?;
    if tables.len() != 1 || !first.joins.is_empty() {
        return Err(StatementParseError::unsupported("DELETE target", first));
    }
    let target = tables.remove(0);
    let using = match &delete.using {
        Some(using) => named_tables(using)?,
        None => Vec::new(),
    };
    let changes = changes_table(using);
    let scope = Scope {
        target: Some(&target),
        changes: changes.as_ref(),
    };
    let (key_columns, seq_range) = analyse_where(&scope, delete.selection.as_ref(), true)?;
    Ok(finish(
        StatementKind::Delete,
        target,
        changes,
        key_columns,
        seq_range,
    ))
}

fn parse_insert(insert: &Insert) -> Result<ParsedDmsStatement, StatementParseError> {
    let target = match &insert.table {
        TableObject::TableName(name) => {
            table_ref(name, insert.table_alias.as_ref().map(|a| &a.alias))?
        }
        other => return Err(StatementParseError::unsupported("INSERT target", other)),
    };
    let columns: Vec<String> = insert
        .columns
        .iter()
        .filter_map(|c| match c.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => Some(ident_name(ident)),
            _ => None,
        })
        .collect();
    let Some(select) = insert.source.as_deref().and_then(select_of) else {
        // `INSERT … VALUES (…)`: a one-by-one statement.
        return Ok(finish(
            StatementKind::Insert,
            target,
            None,
            Vec::new(),
            None,
        ));
    };
    let changes = changes_table(named_tables(&select.from)?);
    let scope = Scope {
        target: None,
        changes: changes.as_ref(),
    };
    let mut key_columns = Vec::new();
    if changes.is_some() && columns.len() == select.projection.len() {
        for (target_column, item) in columns.iter().zip(&select.projection) {
            let expr = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            if let Some(c) = column_ref(expr) {
                if is_segment_column(&c.column) && scope.side(&c) == Side::Changes {
                    key_columns.push(KeyColumn {
                        target_column: target_column.clone(),
                        changes_column: c.column,
                    });
                }
            }
        }
    }
    let (_, seq_range) = analyse_where(&scope, select.selection.as_ref(), false)?;
    Ok(finish(
        StatementKind::Insert,
        target,
        changes,
        key_columns,
        seq_range,
    ))
}

fn select_of(query: &Query) -> Option<&sqlparser::ast::Select> {
    match query.body.as_ref() {
        SetExpr::Select(select) => Some(select),
        SetExpr::Query(inner) => select_of(inner),
        _ => None,
    }
}

fn finish(
    kind: StatementKind,
    target: TableRef,
    changes: Option<TableRef>,
    key_columns: Vec<KeyColumn>,
    seq_range: Option<(i64, i64)>,
) -> ParsedDmsStatement {
    ParsedDmsStatement {
        target_quoted: target.quoted,
        changes_table_quoted: changes.as_ref().is_some_and(|c| c.quoted),
        statement: DmsStatement {
            kind,
            target: target.name,
            changes_table: changes.map(|c| c.name),
            key_columns,
            seq_range,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COMMENT: &str = "/* Applied by AWS DMS 3.5.3 */";
    const LAB_INSERT: &str = r#"INSERT INTO "public"."orders" ("id","status") SELECT CAST(changes."seg1" AS bigint), CAST(changes."c2" AS varchar(20)) FROM "public"."awsdms_changes1a2b3c4d" changes WHERE changes."tbl" = 'public.orders' AND changes."op" = 'I' AND changes."seq" >= 1 AND changes."seq" <= 250"#;
    const LAB_DELETE: &str = r#"DELETE FROM "public"."orders" USING "public"."awsdms_changes1a2b3c4d" changes WHERE "public"."orders"."id" = CAST(changes."seg1" AS bigint) AND changes."tbl" = 'public.orders' AND changes."op" = 'D' AND changes."seq" >= 251 AND changes."seq" <= 300"#;
    const LAB_UPDATE: &str = r#"UPDATE "public"."orders" SET "status" = CAST(changes."c2" AS varchar(20)) FROM "public"."awsdms_changes1a2b3c4d" changes WHERE "public"."orders"."id" = CAST(changes."seg1" AS bigint) AND changes."tbl" = 'public.orders' AND changes."op" = 'U' AND changes."seq" >= 301 AND changes."seq" <= 420"#;

    fn name(schema: &str, table: &str) -> QualifiedName {
        QualifiedName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        }
    }

    fn key(target: &str, changes: &str) -> KeyColumn {
        KeyColumn {
            target_column: target.to_owned(),
            changes_column: changes.to_owned(),
        }
    }

    fn orders_statement(kind: StatementKind, seq: (i64, i64)) -> DmsStatement {
        DmsStatement {
            kind,
            target: name("public", "orders"),
            changes_table: Some(name("public", "awsdms_changes1a2b3c4d")),
            key_columns: vec![key("id", "seg1")],
            seq_range: Some(seq),
        }
    }

    fn parse(sql: &str) -> DmsStatement {
        parse_dms_statement(sql).unwrap_or_else(|e| panic!("{e}\n{sql}"))
    }

    #[test]
    fn lab_simulator_shapes_with_dms_comment() {
        assert_eq!(
            parse(&format!("{COMMENT} {LAB_INSERT}")),
            orders_statement(StatementKind::Insert, (1, 250))
        );
        assert_eq!(
            parse(&format!("{COMMENT} {LAB_DELETE}")),
            orders_statement(StatementKind::Delete, (251, 300))
        );
        assert_eq!(
            parse(&format!("{COMMENT} {LAB_UPDATE}")),
            orders_statement(StatementKind::Update, (301, 420))
        );
    }

    #[test]
    fn names_from_dms_are_reported_as_quoted() {
        let p = parse_dms_statement_detailed(LAB_UPDATE).unwrap();
        assert!(p.target_quoted && p.changes_table_quoted);
        let p = parse_dms_statement_detailed(
            "UPDATE public.orders SET a = c.c1 FROM public.awsdms_changesab c WHERE orders.id = c.seg1",
        )
        .unwrap();
        assert!(!p.target_quoted && !p.changes_table_quoted);
    }

    #[test]
    fn comments_anywhere_and_line_breaks() {
        let variants = [
            format!("-- Applied by AWS DMS 3.5.3\n{LAB_UPDATE}"),
            format!("{COMMENT}\n-- second comment\n{LAB_UPDATE};"),
            format!(
                "\n\n  {COMMENT}\r\n{}\n",
                LAB_UPDATE.replace(" AND ", "\r\n\tAND ")
            ),
            LAB_UPDATE.replace(" SET ", " /* inline */ SET\n"),
            LAB_UPDATE.replace(' ', "\n"),
        ];
        for sql in variants {
            assert_eq!(
                parse(&sql),
                orders_statement(StatementKind::Update, (301, 420)),
                "{sql}"
            );
        }
    }

    #[test]
    fn quoted_mixed_case_names_are_kept_unquoted_ones_fold() {
        let sql = r#"UPDATE "Sales"."OrderItems" SET "Qty" = CAST(c."c3" AS int) FROM "Sales"."awsdms_changesDEADBEEF" c WHERE "Sales"."OrderItems"."OrderId" = CAST(c."seg1" AS bigint) AND c."seq" >= 5 AND c."seq" <= 9"#;
        let s = parse(sql);
        assert_eq!(s.target, name("Sales", "OrderItems"));
        assert_eq!(
            s.changes_table,
            Some(name("Sales", "awsdms_changesDEADBEEF"))
        );
        assert_eq!(s.key_columns, vec![key("OrderId", "seg1")]);
        assert_eq!(s.seq_range, Some((5, 9)));

        let sql = "UPDATE Sales.OrderItems SET Qty = CAST(C.C3 AS int) FROM Sales.AWSDMS_CHANGESDEADBEEF C WHERE OrderItems.OrderId = CAST(C.SEG1 AS bigint) AND C.SEQ BETWEEN 5 AND 9";
        let s = parse(sql);
        assert_eq!(s.target, name("sales", "orderitems"));
        assert_eq!(
            s.changes_table,
            Some(name("sales", "awsdms_changesdeadbeef"))
        );
        assert_eq!(s.key_columns, vec![key("orderid", "seg1")]);
        assert_eq!(s.seq_range, Some((5, 9)));
    }

    #[test]
    fn unqualified_target_defaults_to_public_and_three_part_names_keep_schema() {
        let s = parse(
            r#"DELETE FROM "orders" USING "awsdms_changes0f" changes WHERE "orders"."id" = changes."seg1" AND changes."seq" >= 1 AND changes."seq" <= 2"#,
        );
        assert_eq!(s.target, name("public", "orders"));
        assert_eq!(s.changes_table, Some(name("public", "awsdms_changes0f")));
        assert_eq!(s.key_columns, vec![key("id", "seg1")]);

        let s = parse(
            r#"DELETE FROM "dev"."app"."orders" USING "dev"."app"."awsdms_changes0f" ch WHERE "dev"."app"."orders"."id" = ch."seg1" AND ch."seq" = 7"#,
        );
        assert_eq!(s.target, name("app", "orders"));
        assert_eq!(s.key_columns, vec![key("id", "seg1")]);
        assert_eq!(s.seq_range, Some((7, 7)));
    }

    #[test]
    fn aliases_with_and_without_as() {
        let variants = [
            r#"UPDATE "public"."orders" o SET "status" = c."c2" FROM "public"."awsdms_changes1a2b3c4d" c WHERE o."id" = CAST(c."seg1" AS bigint) AND c."seq" >= 301 AND c."seq" <= 420"#,
            r#"UPDATE "public"."orders" AS o SET "status" = c."c2" FROM "public"."awsdms_changes1a2b3c4d" AS c WHERE o."id" = CAST(c."seg1" AS bigint) AND c."seq" >= 301 AND c."seq" <= 420"#,
            // No alias on the changes table: qualified by its name, with and without schema.
            r#"UPDATE "public"."orders" SET "status" = "awsdms_changes1a2b3c4d"."c2" FROM "public"."awsdms_changes1a2b3c4d" WHERE "orders"."id" = CAST("public"."awsdms_changes1a2b3c4d"."seg1" AS bigint) AND "awsdms_changes1a2b3c4d"."seq" >= 301 AND "awsdms_changes1a2b3c4d"."seq" <= 420"#,
            // Operands swapped, `::` casts, unqualified target column.
            r#"UPDATE "public"."orders" SET "status" = c."c2" FROM "public"."awsdms_changes1a2b3c4d" c WHERE c."seg1"::bigint = "id" AND 301 <= c."seq" AND 420 >= c."seq""#,
            // Strict bounds and BETWEEN mixed.
            r#"UPDATE "public"."orders" SET "status" = c."c2" FROM "public"."awsdms_changes1a2b3c4d" c WHERE ("id" = (CAST(c."seg1" AS bigint))) AND c."seq" > 300 AND c."seq" < 421"#,
            r#"UPDATE "public"."orders" SET "status" = c."c2" FROM "public"."awsdms_changes1a2b3c4d" c WHERE "public"."orders"."id" = c."seg1" AND (c."seq" BETWEEN 301 AND 420)"#,
            // Unqualified changes columns on both sides of the key comparison.
            r#"UPDATE "public"."orders" SET "status" = "c2" FROM "public"."awsdms_changes1a2b3c4d" WHERE "id" = CAST("seg1" AS bigint) AND "seq" >= 301 AND "seq" <= 420"#,
        ];
        for sql in variants {
            assert_eq!(
                parse(sql),
                orders_statement(StatementKind::Update, (301, 420)),
                "{sql}"
            );
        }
    }

    #[test]
    fn several_key_segments_in_statement_order() {
        let update = r#"UPDATE "public"."order_lines" SET "qty" = CAST(c."c3" AS int) FROM "public"."awsdms_changes99" c WHERE "public"."order_lines"."order_id" = CAST(c."seg1" AS bigint) AND CAST(c."seg2" AS int) = "public"."order_lines"."line_no" AND c."tbl" = 'public.order_lines' AND c."op" = 'U' AND c."seq" >= 10 AND c."seq" <= 20"#;
        let s = parse(update);
        assert_eq!(
            s.key_columns,
            vec![key("order_id", "seg1"), key("line_no", "seg2")]
        );
        let insert = r#"INSERT INTO "public"."order_lines" ("order_id","line_no","qty") SELECT CAST(c."seg1" AS bigint), CAST(c."seg2" AS int) AS "line_no", CAST(c."c3" AS int) FROM "public"."awsdms_changes99" c WHERE c."seq" BETWEEN 10 AND 20"#;
        let s = parse(insert);
        assert_eq!(
            s.key_columns,
            vec![key("order_id", "seg1"), key("line_no", "seg2")]
        );
        assert_eq!(s.seq_range, Some((10, 20)));
    }

    #[test]
    fn dms_case_expressions_lowercase_keywords_and_fully_qualified_changes_columns() {
        // The shape DMS 3.x uses for UPDATEs that keep unchanged columns.
        let sql = r#"/* Applied by AWS DMS 3.5.3 */
UPDATE  "public"."orders"
SET "status"= CASE WHEN "public"."awsdms_changes6C7D4D8E"."c2" IS NULL THEN "public"."orders"."status" WHEN "public"."awsdms_changes6C7D4D8E"."c2" = '<att_null>' THEN NULL ELSE  CAST ( "public"."awsdms_changes6C7D4D8E"."c2" as VARCHAR(20)) END ,
    "total"= CASE WHEN "public"."awsdms_changes6C7D4D8E"."c3" IS NULL THEN "public"."orders"."total" ELSE CAST ( "public"."awsdms_changes6C7D4D8E"."c3" as NUMERIC(12,2)) END
from "public"."awsdms_changes6C7D4D8E"
where "public"."orders"."id"= CAST ( "public"."awsdms_changes6C7D4D8E"."seg1" as INT8) and "public"."awsdms_changes6C7D4D8E"."seq" >= 17 and "public"."awsdms_changes6C7D4D8E"."seq" <= 33"#;
        assert_eq!(
            parse(sql),
            DmsStatement {
                kind: StatementKind::Update,
                target: name("public", "orders"),
                changes_table: Some(name("public", "awsdms_changes6C7D4D8E")),
                key_columns: vec![key("id", "seg1")],
                seq_range: Some((17, 33)),
            }
        );
    }

    fn wide_update(columns: usize) -> String {
        let sets: Vec<String> = (1..=columns)
            .map(|i| format!("\"column_number_{i}\" = CAST(changes.\"c{i}\" AS varchar(256))"))
            .collect();
        format!(
            "{COMMENT} UPDATE \"public\".\"wide_table\" SET {} FROM \"public\".\"awsdms_changes0badf00d\" changes WHERE \"public\".\"wide_table\".\"id\" = CAST(changes.\"seg1\" AS bigint) AND changes.\"tbl\" = 'public.wide_table' AND changes.\"op\" = 'U' AND changes.\"seq\" >= 1000 AND changes.\"seq\" <= 1999",
            sets.join(", ")
        )
    }

    #[test]
    fn wide_tables_over_4000_characters() {
        let update = wide_update(150);
        assert!(update.len() > 4000, "{}", update.len());
        let s = parse(&update);
        assert_eq!(s.target, name("public", "wide_table"));
        assert_eq!(s.key_columns, vec![key("id", "seg1")]);
        assert_eq!(s.seq_range, Some((1000, 1999)));

        let cols: Vec<String> = (1..=150)
            .map(|i| format!("\"column_number_{i}\""))
            .collect();
        let exprs: Vec<String> = (1..=150)
            .map(|i| format!("CAST(changes.\"c{i}\" AS varchar(256))"))
            .collect();
        let insert = format!(
            "{COMMENT}\nINSERT INTO \"public\".\"wide_table\" (\"id\",{})\nSELECT CAST(changes.\"seg1\" AS bigint),{}\nFROM \"public\".\"awsdms_changes0badf00d\" changes WHERE changes.\"seq\" >= 1 AND changes.\"seq\" <= 2",
            cols.join(","),
            exprs.join(",")
        );
        assert!(insert.len() > 4000);
        let s = parse(&insert);
        assert_eq!(s.kind, StatementKind::Insert);
        assert_eq!(s.key_columns, vec![key("id", "seg1")]);
        assert_eq!(s.seq_range, Some((1, 2)));
    }

    #[test]
    fn truncated_statement_is_an_error() {
        // What SYS_QUERY_HISTORY keeps of a wide statement: its first 4000 characters.
        let update = wide_update(150);
        let truncated: String = update.chars().take(4000).collect();
        assert!(matches!(
            parse_dms_statement(&truncated),
            Err(StatementParseError::Syntax(_))
        ));
    }

    #[test]
    fn one_by_one_statements_have_no_changes_table() {
        for (sql, kind) in [
            (
                format!("{COMMENT} INSERT INTO \"public\".\"orders\" (\"id\",\"status\") VALUES (42,'awsdms_changes1a2b3c4d')"),
                StatementKind::Insert,
            ),
            (
                format!("{COMMENT} UPDATE \"public\".\"orders\" SET \"status\"='paid' WHERE \"id\"=42"),
                StatementKind::Update,
            ),
            (
                format!("{COMMENT} DELETE FROM \"public\".\"orders\" WHERE \"id\"=42"),
                StatementKind::Delete,
            ),
        ] {
            assert_eq!(
                parse(&sql),
                DmsStatement {
                    kind,
                    target: name("public", "orders"),
                    changes_table: None,
                    key_columns: Vec::new(),
                    seq_range: None,
                },
                "{sql}"
            );
        }
    }

    #[test]
    fn seq_bounded_on_one_side_only_has_no_range() {
        let sql = LAB_UPDATE.replace(r#" AND changes."seq" <= 420"#, "");
        assert_eq!(parse(&sql).seq_range, None);
    }

    #[test]
    fn contradictory_seq_range_is_an_error() {
        let sql = LAB_UPDATE.replace("<= 420", "<= 3");
        assert_eq!(
            parse_dms_statement(&sql),
            Err(StatementParseError::EmptySeqRange { low: 301, high: 3 })
        );
    }

    #[test]
    fn non_dms_input_gets_an_error() {
        assert_eq!(parse_dms_statement(""), Err(StatementParseError::Empty));
        assert_eq!(parse_dms_statement("  \n"), Err(StatementParseError::Empty));
        assert_eq!(
            parse_dms_statement(COMMENT),
            Err(StatementParseError::Empty)
        );
        assert!(matches!(
            parse_dms_statement("SELECT * FROM orders"),
            Err(StatementParseError::NotDml(_))
        ));
        assert!(matches!(
            parse_dms_statement("CREATE TABLE t (id int)"),
            Err(StatementParseError::NotDml(_))
        ));
        assert!(matches!(
            parse_dms_statement(&format!("{LAB_UPDATE}; {LAB_DELETE}")),
            Err(StatementParseError::NotOneStatement(2))
        ));
        for garbage in [
            "hello world",
            "UPDATE",
            "UPDATE \"public\".\"orders\" SET",
            "DELETE FROM (",
            "\u{0}\u{1}'",
            "/* unterminated",
        ] {
            assert!(
                matches!(
                    parse_dms_statement(garbage),
                    Err(StatementParseError::Syntax(_))
                ),
                "{garbage:?}: {:?}",
                parse_dms_statement(garbage)
            );
        }
    }

    #[test]
    fn redshift_validity_check() {
        assert!(is_valid_redshift_sql(LAB_UPDATE).is_ok());
        assert!(is_valid_redshift_sql(
            "INSERT INTO \"public\".\"t\" (\"id\") SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"t\" WHERE \"id\" = $2)"
        )
        .is_ok());
        assert!(is_valid_redshift_sql("SELECT FROM WHERE").is_err());
        assert!(is_valid_redshift_sql("").is_err());
    }

    #[test]
    fn very_long_condition_chains_do_not_overflow_the_stack() {
        let chain = |n: usize| vec!["\"x\" = 1"; n].join(" AND ");
        let run = |sql: String| {
            std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || parse_dms_statement(&sql))
                .unwrap()
                .join()
                .expect("parser thread died")
        };
        // Just under the limit: parsed (and dropped) on a 2 MiB stack.
        let n = MAX_OPERATORS / 2;
        let s = run(format!(
            "UPDATE \"public\".\"t\" SET \"a\" = 1 WHERE {}",
            chain(n)
        ))
        .unwrap();
        assert_eq!(s.kind, StatementKind::Update);
        assert!(matches!(
            run(format!("SELECT 1 WHERE {}", chain(n))),
            Err(StatementParseError::NotDml(w)) if w == "SELECT"
        ));
        // Far over it: refused before parsing.
        assert!(matches!(
            run(format!(
                "UPDATE \"public\".\"t\" SET \"a\" = 1 WHERE {}",
                chain(50_000)
            )),
            Err(StatementParseError::TooComplex(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(sql in "\\PC{0,300}") {
            let _ = parse_dms_statement(&sql);
            let _ = is_valid_redshift_sql(&sql);
        }

        #[test]
        fn cut_or_spliced_dms_statements_never_panic(
            cut in 0usize..LAB_UPDATE.len(),
            junk in "[ -~]{0,20}",
        ) {
            let mut sql = LAB_UPDATE[..cut].to_owned();
            sql.push_str(&junk);
            sql.push_str(&LAB_DELETE[cut.min(LAB_DELETE.len())..]);
            let _ = parse_dms_statement(&sql);
        }

        #[test]
        fn any_seq_bounds_round_trip(a in any::<i64>(), b in any::<i64>()) {
            let (low, high) = (a.min(b), a.max(b));
            let sql = format!(
                "UPDATE \"public\".\"orders\" SET \"x\" = c.\"c1\" FROM \"public\".\"awsdms_changes1\" c WHERE \"id\" = c.\"seg1\" AND c.\"seq\" >= {low} AND c.\"seq\" <= {high}"
            );
            prop_assert_eq!(parse_dms_statement(&sql).unwrap().seq_range, Some((low, high)));
        }
    }
}
