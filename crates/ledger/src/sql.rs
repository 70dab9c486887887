//! The SQL connection every table of state-pack is read and written through: one small
//! interface over two backends, SQLite (embedded, the default, in this crate) and Postgres
//! (the `state-pack-postgres` crate, for several servers on one database).
//!
//! Statements are written once, in the SQL both understand: `?N` parameters (a backend
//! rewrites them to its own), `ON CONFLICT` instead of `INSERT OR ...`, `RETURNING` instead
//! of `last_insert_rowid()`, integers as 64-bit, blobs as bytes. Values cross the interface
//! as SQLite's dynamic [`Value`]s and rows are read with rusqlite's [`FromSql`], so the two
//! backends return the same Rust values for the same rows.
//!
//! A write transaction ([`Db::write`]) holds the database's one writer lock for its whole
//! length: SQLite's `BEGIN IMMEDIATE`, Postgres's `pg_advisory_xact_lock`. That lock is what
//! keeps one hash-linked log contiguous when several processes append to it.

use std::cell::RefCell;

pub use rusqlite::params;
pub use rusqlite::types::{FromSql, ToSql, Value, ValueRef};

/// Opens a database named by a URL (`postgres://...`): the backends outside this crate
/// register one with [`set_connector`].
pub type Connector = fn(&str) -> Result<Db, SqlError>;

static CONNECTOR: std::sync::OnceLock<Connector> = std::sync::OnceLock::new();

/// Lets `--db` name a database by URL in this process: the `state-pack` binary registers
/// `state_pack_postgres::connect` here at start. A second call is ignored.
pub fn set_connector(connect: Connector) {
    let _ = CONNECTOR.set(connect);
}

/// Whether `location` is a URL (`scheme://...`) rather than a file.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// Connects to the database at `url` through the registered [`Connector`].
pub fn connect_url(url: &str) -> Result<Db, SqlError> {
    match CONNECTOR.get() {
        Some(connect) => connect(url),
        None => Err(SqlError::Postgres(format!(
            "{} names a database server, and this program has no backend for one (use the \
             state-pack binary)",
            url.split("://").next().unwrap_or(url)
        ))),
    }
}

/// Which database a [`Db`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An SQLite file or in-memory database.
    Sqlite,
    /// A Postgres server.
    Postgres,
}

/// A failed statement, from either backend.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite failed.
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    /// The Postgres backend failed (its message, password masked).
    #[error("postgres: {0}")]
    Postgres(String),
    /// A statement that must return a row returned none.
    #[error("query returned no rows")]
    NoRows,
    /// A column could not be read as the type asked for.
    #[error("column {column}: {reason}")]
    Column {
        /// The column's index.
        column: usize,
        /// Why.
        reason: String,
    },
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => SqlError::NoRows,
            e => SqlError::Sqlite(e),
        }
    }
}

/// `.optional()` on a one-row result: no row is `Ok(None)`.
pub trait OptionalExtension<T> {
    /// `Ok(None)` where the statement returned no row.
    fn optional(self) -> Result<Option<T>, SqlError>;
}

impl<T> OptionalExtension<T> for Result<T, SqlError> {
    fn optional(self) -> Result<Option<T>, SqlError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(SqlError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a backend does; [`Db`] wraps one. Implemented here for SQLite and in
/// `state-pack-postgres` for Postgres.
pub trait Backend: Send {
    /// Which database this is.
    fn kind(&self) -> Kind;
    /// Runs one statement; rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize, SqlError>;
    /// Runs one statement; every row it returned.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError>;
    /// Runs several statements without parameters (a migration).
    fn execute_batch(&mut self, sql: &str) -> Result<(), SqlError>;
    /// Starts a transaction; `write` takes the database's writer lock for all of it.
    fn begin(&mut self, write: bool) -> Result<(), SqlError>;
    /// Commits the open transaction.
    fn commit(&mut self) -> Result<(), SqlError>;
    /// Rolls the open transaction back.
    fn rollback(&mut self) -> Result<(), SqlError>;
    /// The SQLite connection, where this is one (pragmas, SQLite's own tests).
    fn sqlite(&self) -> Option<&rusqlite::Connection> {
        None
    }
    /// A new connection to the same database, set up the same way; `None` where there is
    /// no way back to it (an in-memory database).
    fn connect_again(&self) -> Option<Result<Box<dyn Backend>, SqlError>>;
}

/// One connection to a state-pack database, SQLite or Postgres. Like a rusqlite
/// `Connection` it is `Send` but not `Sync`: one thread uses it at a time.
pub struct Db {
    backend: RefCell<Box<dyn Backend>>,
    kind: Kind,
    /// Where it points, for messages (a path, or a URL with its password masked).
    label: String,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("kind", &self.kind)
            .field("label", &self.label)
            .finish()
    }
}

/// Parameters of a statement: `params![...]`, an array of values of one type, or
/// [`values_from_iter`].
pub trait Params {
    /// The values, in order.
    fn values(self) -> Result<Vec<Value>, SqlError>;
}

fn to_value(p: &dyn ToSql) -> Result<Value, SqlError> {
    use rusqlite::types::ToSqlOutput;
    Ok(match p.to_sql()? {
        ToSqlOutput::Borrowed(v) => v.into(),
        ToSqlOutput::Owned(v) => v,
        other => {
            return Err(SqlError::Column {
                column: 0,
                reason: format!("unsupported parameter {other:?}"),
            })
        }
    })
}

impl Params for &[&dyn ToSql] {
    fn values(self) -> Result<Vec<Value>, SqlError> {
        self.iter().map(|p| to_value(*p)).collect()
    }
}

impl Params for [&(dyn ToSql + Send + Sync); 0] {
    fn values(self) -> Result<Vec<Value>, SqlError> {
        Ok(Vec::new())
    }
}

macro_rules! array_params {
    ($($n:literal)*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn values(self) -> Result<Vec<Value>, SqlError> {
                self.iter().map(|p| to_value(p)).collect()
            }
        }
    )*};
}
array_params!(1 2 3 4 5 6 7 8);

/// Parameters from an iterator of values of one type.
pub struct FromIter(Vec<Value>);

/// Parameters from an iterator, for statements built with a variable number of `?`s.
pub fn values_from_iter<I>(iter: I) -> Result<FromIter, SqlError>
where
    I: IntoIterator,
    I::Item: ToSql,
{
    iter.into_iter()
        .map(|p| to_value(&p))
        .collect::<Result<_, _>>()
        .map(FromIter)
}

impl Params for FromIter {
    fn values(self) -> Result<Vec<Value>, SqlError> {
        Ok(self.0)
    }
}

/// A column index: rows are read by position.
pub trait ColumnIndex {
    /// The position.
    fn index(self) -> usize;
}

impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One row a statement returned.
#[derive(Debug)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// Column `idx` as a `T` (rusqlite's conversions: `i64`, `Option<..>`, `Vec<u8>`,
    /// `String`, `bool`, ...).
    pub fn get<I: ColumnIndex, T: FromSql>(&self, idx: I) -> rusqlite::Result<T> {
        let idx = idx.index();
        let v = self
            .values
            .get(idx)
            .ok_or(rusqlite::Error::InvalidColumnIndex(idx))?;
        T::column_result(ValueRef::from(v)).map_err(|e| match e {
            rusqlite::types::FromSqlError::InvalidType => {
                rusqlite::Error::InvalidColumnType(idx, String::new(), v.data_type())
            }
            other => rusqlite::Error::FromSqlConversionFailure(idx, v.data_type(), Box::new(other)),
        })
    }
}

/// A statement bound to its connection, as rusqlite's `prepare` gives (backends cache the
/// prepared form by its text).
pub struct Stmt<'d> {
    db: &'d Db,
    sql: String,
}

impl Stmt<'_> {
    /// Every row, each mapped by `f`.
    pub fn query_map<P: Params, T, F>(
        &mut self,
        params: P,
        f: F,
    ) -> Result<std::vec::IntoIter<rusqlite::Result<T>>, SqlError>
    where
        F: FnMut(&Row) -> rusqlite::Result<T>,
    {
        self.db.query_map(&self.sql, params, f)
    }

    /// The first row, mapped by `f`; [`SqlError::NoRows`] if there is none.
    pub fn query_row<P: Params, T, F>(&mut self, params: P, f: F) -> Result<T, SqlError>
    where
        F: FnOnce(&Row) -> rusqlite::Result<T>,
    {
        self.db.query_row(&self.sql, params, f)
    }

    /// Runs it; rows changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize, SqlError> {
        self.db.execute(&self.sql, params)
    }
}

impl Db {
    /// A connection over `backend`; `label` names it in messages.
    pub fn new(backend: Box<dyn Backend>, label: impl Into<String>) -> Self {
        Self {
            kind: backend.kind(),
            backend: RefCell::new(backend),
            label: label.into(),
        }
    }

    /// An SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection, label: impl Into<String>) -> Self {
        Self::new(Box::new(Sqlite(conn)), label)
    }

    /// Which database this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where it points: the file, or the URL with its password masked.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A new connection to the same database (for a part of state-pack that keeps its own
    /// connection: graph checkpoints, a server's reads); `None` for an in-memory database.
    pub fn connect_again(&self) -> Option<Result<Db, SqlError>> {
        let backend = self.backend.borrow().connect_again()?;
        Some(backend.map(|b| Db::new(b, self.label.clone())))
    }

    /// Runs `f` on the SQLite connection underneath, if this is SQLite.
    pub fn with_sqlite<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> T) -> Option<T> {
        self.backend.borrow().sqlite().map(f)
    }

    /// Runs one statement; rows changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, SqlError> {
        let values = params.values()?;
        self.backend.borrow_mut().execute(sql, &values)
    }

    /// Runs several statements without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<(), SqlError> {
        self.backend.borrow_mut().execute_batch(sql)
    }

    /// Every row of one statement.
    pub fn query<P: Params>(&self, sql: &str, params: P) -> Result<Vec<Row>, SqlError> {
        let values = params.values()?;
        let rows = self.backend.borrow_mut().query(sql, &values)?;
        Ok(rows.into_iter().map(|values| Row { values }).collect())
    }

    /// Every row, each mapped by `f`.
    pub fn query_map<P: Params, T, F>(
        &self,
        sql: &str,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<rusqlite::Result<T>>, SqlError>
    where
        F: FnMut(&Row) -> rusqlite::Result<T>,
    {
        let rows = self.query(sql, params)?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }

    /// The first row, mapped by `f`; [`SqlError::NoRows`] if there is none.
    pub fn query_row<P: Params, T, F>(&self, sql: &str, params: P, f: F) -> Result<T, SqlError>
    where
        F: FnOnce(&Row) -> rusqlite::Result<T>,
    {
        let rows = self.query(sql, params)?;
        let row = rows.first().ok_or(SqlError::NoRows)?;
        Ok(f(row)?)
    }

    /// The statement `sql`, to run once or many times.
    pub fn prepare(&self, sql: &str) -> Result<Stmt<'_>, SqlError> {
        Ok(Stmt {
            db: self,
            sql: sql.to_owned(),
        })
    }

    /// The same as [`prepare`](Self::prepare): every backend caches statements by text.
    pub fn prepare_cached(&self, sql: &str) -> Result<Stmt<'_>, SqlError> {
        self.prepare(sql)
    }

    /// A transaction that holds the writer lock from its first statement: what appends to
    /// the log. Rolled back if dropped without [`Tx::commit`].
    pub fn write(&self) -> Result<Tx<'_>, SqlError> {
        self.backend.borrow_mut().begin(true)?;
        Ok(Tx {
            db: self,
            done: false,
        })
    }

    /// A transaction that only reads: one consistent view of the database.
    pub fn read(&self) -> Result<Tx<'_>, SqlError> {
        self.backend.borrow_mut().begin(false)?;
        Ok(Tx {
            db: self,
            done: false,
        })
    }
}

/// An open transaction; derefs to its [`Db`]. Dropped without [`commit`](Tx::commit), it
/// rolls back.
pub struct Tx<'d> {
    db: &'d Db,
    done: bool,
}

impl Tx<'_> {
    /// Commits it.
    pub fn commit(mut self) -> Result<(), SqlError> {
        self.done = true;
        self.db.backend.borrow_mut().commit()
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.db.backend.borrow_mut().rollback() {
                tracing::warn!(error = %e, "rollback failed");
            }
        }
    }
}

/// The SQLite backend.
pub struct Sqlite(pub rusqlite::Connection);

impl Backend for Sqlite {
    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params))?)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(
                (0..columns)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        Ok(out)
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), SqlError> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn begin(&mut self, write: bool) -> Result<(), SqlError> {
        Ok(self.0.execute_batch(if write {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        })?)
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        Ok(self.0.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<(), SqlError> {
        Ok(self.0.execute_batch("ROLLBACK")?)
    }

    fn sqlite(&self) -> Option<&rusqlite::Connection> {
        Some(&self.0)
    }

    fn connect_again(&self) -> Option<Result<Box<dyn Backend>, SqlError>> {
        let path = self.0.path().filter(|p| !p.is_empty())?;
        Some(
            crate::db::open_sqlite(std::path::Path::new(path))
                .map(|c| Box::new(Sqlite(c)) as Box<dyn Backend>)
                .map_err(SqlError::from),
        )
    }
}

/// Rewrites `?N` and `?` parameters to Postgres's `$N` (a bare `?` takes the next number),
/// leaving quoted strings and identifiers alone.
pub fn numbered_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 1u32;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_postgres() {
        assert_eq!(
            numbered_params("SELECT a FROM t WHERE b = ?1 AND c = '?' AND d IN (?, ?)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d IN ($1, $2)"
        );
        assert_eq!(numbered_params("x = ?12"), "x = $12");
    }

    #[test]
    fn rows_read_back_as_written() {
        let db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap(), "memory");
        db.execute_batch("CREATE TABLE t (a INTEGER, b BLOB, c TEXT)")
            .unwrap();
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            params![7i64, vec![1u8, 2], None::<String>],
        )
        .unwrap();
        let (a, b, c) = db
            .query_row("SELECT a, b, c FROM t", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })
            .unwrap();
        assert_eq!((a, b, c), (7, vec![1, 2], None));
        assert!(matches!(
            db.query_row("SELECT a FROM t WHERE a = 8", [], |r| r.get::<_, i64>(0)),
            Err(SqlError::NoRows)
        ));
        assert!(db
            .query_row("SELECT b FROM t", [], |r| r.get::<_, i64>(0))
            .is_err());
    }

    #[test]
    fn a_dropped_transaction_rolls_back() {
        let db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap(), "memory");
        db.execute_batch("CREATE TABLE t (a INTEGER)").unwrap();
        {
            let tx = db.write().unwrap();
            tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        }
        let tx = db.write().unwrap();
        tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
        tx.commit().unwrap();
        let n: i64 = db
            .query_row("SELECT sum(a) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
