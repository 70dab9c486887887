//! Postgres as state-pack's database: the [`Backend`] behind `--db postgres://...`.
//!
//! The ledger crate owns the SQL (its statements are written in the dialect both backends
//! share) and the schema (`crates/ledger/migrations/postgres/`); this crate only carries
//! statements to a Postgres server and values back:
//!
//! - **One thread per connection.** The `postgres` client runs its own small runtime, which
//!   must not be entered from a thread that already runs one (a server's handlers). Each
//!   connection therefore lives on a thread of its own; a statement is sent to it and the
//!   caller waits for the answer, exactly as it would wait on SQLite's file lock.
//! - **One writer lock.** A write transaction takes `pg_advisory_xact_lock` on one key
//!   before its first statement, so writers on any number of servers append to the log one
//!   at a time and the chain stays contiguous; readers are never blocked.
//! - **Values as SQLite has them.** Parameters arrive as SQLite [`Value`]s and are written as
//!   the column's Postgres type (`BIGINT`, `BYTEA`, `TEXT`, ...); rows come back as the same
//!   values, so the ledger reads both backends with one code path.
//!
//! ```no_run
//! let db = state_pack_postgres::connect("postgres://state_pack@127.0.0.1:5432/state_pack")?;
//! let store = state_pack_ledger::LedgerDb::open_db(
//!     db,
//!     state_pack_ledger::Signer::from_seed([7; 32]),
//!     state_pack_ledger::DEFAULT_CHECKPOINT_EVERY,
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, Config, NoTls, Statement};
use state_pack_ledger::sql::{Backend, Db, Kind, SqlError, Value};

/// The key of the advisory lock every write transaction holds: the ASCII of "statepak".
pub const WRITER_LOCK: i64 = 0x7374_6174_6570_616b;

/// Whether `location` names a Postgres database (`postgres://` or `postgresql://`).
pub fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for messages and logs.
pub fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((auth, host)) => (auth, host),
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Connects to the Postgres database at `url` (libpq's URL form: `postgres://user:password@
/// host:port/dbname?options=...`), without TLS: run it on loopback or a private network.
/// An unreachable server is an error naming the (masked) URL.
pub fn connect(url: &str) -> Result<Db, SqlError> {
    let label = masked(url);
    let mut config =
        Config::from_str(url).map_err(|e| SqlError::Postgres(format!("{label}: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let backend = Postgres::start(config, label.clone())?;
    Ok(Db::new(Box::new(backend), label))
}

/// Creates a new, empty database on the server that `server_url` (the URL of any database
/// on it, with a role allowed to `CREATE DATABASE`) points at, named uniquely; returns the
/// new database's URL. For tests and benchmarks, which each want a database of their own.
pub fn create_database(server_url: &str) -> Result<String, SqlError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let name = format!("t_{}_{micros}_{n}", std::process::id());
    let (base, _) = server_url
        .split('?')
        .next()
        .and_then(|u| u.rsplit_once('/'))
        .filter(|(base, _)| base.contains("://"))
        .ok_or_else(|| {
            SqlError::Postgres(format!(
                "{} does not end in /<database>",
                masked(server_url)
            ))
        })?;
    connect(server_url)?.execute_batch(&format!("CREATE DATABASE {name}"))?;
    Ok(format!("{base}/{name}"))
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The connection's thread: the client and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    config: Config,
    label: String,
    /// A transaction is open.
    in_transaction: bool,
    /// The connection dropped while a transaction was open: its statements are gone with
    /// it, and nothing more may run as part of it (it can only be rolled back).
    lost_transaction: bool,
}

impl Conn {
    fn reconnect(&mut self) -> Result<(), SqlError> {
        self.client = self
            .config
            .connect(NoTls)
            .map_err(|e| pg_error(&self.label, e))?;
        self.statements.clear();
        tracing::warn!(db = %self.label, "reconnected to postgres");
        Ok(())
    }

    /// Connects again if the server closed the connection (a restarted Postgres), so one
    /// outage does not fail every later statement; a transaction open when it dropped is
    /// lost, and says so.
    fn ready(&mut self) -> Result<(), SqlError> {
        if self.client.is_closed() {
            self.lost_transaction |= self.in_transaction;
            self.reconnect()?;
        }
        if self.lost_transaction {
            return Err(SqlError::Postgres(format!(
                "{}: the connection dropped inside a transaction, which was rolled back",
                self.label
            )));
        }
        Ok(())
    }
}

/// A Postgres connection, run on a thread of its own.
pub struct Postgres {
    jobs: mpsc::Sender<Job>,
    config: Config,
    label: String,
}

fn pg_error(label: &str, e: postgres::Error) -> SqlError {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut t = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                t.push_str(&format!(" ({detail})"));
            }
            t
        }
        None => e.to_string(),
    };
    SqlError::Postgres(format!("{label}: {text}"))
}

impl Postgres {
    fn start(config: Config, label: String) -> Result<Self, SqlError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let thread_config = config.clone();
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("state-pack-postgres".into())
            .spawn(move || {
                let client = match thread_config.connect(NoTls) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(pg_error(&thread_label, e)));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let mut conn = Conn {
                    client,
                    statements: HashMap::new(),
                    config: thread_config,
                    label: thread_label,
                    in_transaction: false,
                    lost_transaction: false,
                };
                // Runs until every sender (the backend) is dropped.
                for job in inbox {
                    job(&mut conn);
                }
            })
            .map_err(|e| SqlError::Postgres(format!("{label}: cannot start its thread: {e}")))?;
        started
            .recv()
            .map_err(|_| SqlError::Postgres(format!("{label}: its thread stopped")))??;
        tracing::debug!(db = %label, "connected to postgres");
        Ok(Self {
            jobs,
            config,
            label,
        })
    }

    /// Runs `f` on the connection's thread and waits for its answer. A connection the server
    /// closed (a restarted Postgres) is opened again and, outside a transaction, `f` runs
    /// once more on it; inside one, the transaction is reported lost.
    fn run<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Conn) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, SqlError> {
        self.run_raw(move |conn| {
            conn.ready()?;
            match f(conn) {
                Err(e) if e.is_closed() && !conn.in_transaction => {
                    conn.reconnect()?;
                    f(conn).map_err(|e| pg_error(&conn.label, e))
                }
                Err(e) => {
                    if e.is_closed() {
                        conn.lost_transaction = true;
                    }
                    Err(pg_error(&conn.label, e))
                }
                Ok(v) => Ok(v),
            }
        })
    }

    fn run_raw<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, SqlError> + Send + 'static,
    ) -> Result<T, SqlError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move |conn: &mut Conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| SqlError::Postgres(format!("{}: connection thread gone", self.label)))?;
        rx.recv()
            .map_err(|_| SqlError::Postgres(format!("{}: connection thread gone", self.label)))?
    }

    /// Runs `run` with `sql` prepared (once per connection) and `params` bound.
    fn statement_with<T: Send + 'static>(
        &self,
        sql: &str,
        params: &[Value],
        run: impl Fn(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T, postgres::Error>
            + Send
            + 'static,
    ) -> Result<T, SqlError> {
        let sql = sql.to_owned();
        let params: Vec<Param> = params.iter().cloned().map(Param).collect();
        self.run(move |conn| {
            let stmt = Self::statement(conn, &sql)?;
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            run(&mut conn.client, &stmt, &refs)
        })
    }

    fn statement(conn: &mut Conn, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = conn
            .client
            .prepare(&state_pack_ledger::sql::numbered_params(sql))?;
        conn.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

/// A parameter as the column's Postgres type wants it.
#[derive(Debug)]
struct Param(Value);

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(format!("an integer cannot be written as {ty}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(format!("a real cannot be written as {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR | Type::UNKNOWN => {
                    s.as_str().to_sql(&Type::TEXT, out)
                }
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                _ => Err(format!("text cannot be written as {ty}").into()),
            },
            Value::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                _ => Err(format!("a blob cannot be written as {ty}").into()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Column `i` of `row` as a SQLite value.
fn column(row: &postgres::Row, i: usize) -> Result<Value, String> {
    let ty = row.columns()[i].type_().clone();
    let bad = |e: postgres::Error| format!("column {i} ({ty}): {e}");
    Ok(match ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Integer),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(bad)?
            .map_or(Value::Null, |v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Text),
        Type::BYTEA => row
            .try_get::<_, Option<Vec<u8>>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Blob),
        other => {
            return Err(format!(
                "column {i} has type {other}, which state-pack does not read (cast it to BIGINT, TEXT or BYTEA)"
            ))
        }
    })
}

impl Backend for Postgres {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize, SqlError> {
        self.statement_with(sql, params, |client, stmt, refs| client.execute(stmt, refs))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, SqlError> {
        let rows =
            self.statement_with(sql, params, |client, stmt, refs| client.query(stmt, refs))?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| column(row, i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SqlError::Postgres(format!("{}: {e}", self.label)))
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), SqlError> {
        let sql = sql.to_owned();
        self.run(move |conn| conn.client.batch_execute(&sql))
    }

    fn begin(&mut self, write: bool) -> Result<(), SqlError> {
        self.run(move |conn| {
            if write {
                conn.client.batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK})"
                ))?;
            } else {
                conn.client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
            }
            conn.in_transaction = true;
            Ok(())
        })
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        self.run_raw(|conn| {
            let result = conn.ready().and_then(|()| {
                conn.client
                    .batch_execute("COMMIT")
                    .map_err(|e| pg_error(&conn.label, e))
            });
            conn.in_transaction = false;
            conn.lost_transaction = false;
            result
        })
    }

    fn rollback(&mut self) -> Result<(), SqlError> {
        self.run_raw(|conn| {
            let lost = std::mem::take(&mut conn.lost_transaction);
            conn.in_transaction = false;
            if lost || conn.client.is_closed() {
                // The server rolled it back when the connection dropped.
                return Ok(());
            }
            conn.client
                .batch_execute("ROLLBACK")
                .map_err(|e| pg_error(&conn.label, e))
        })
    }

    fn connect_again(&self) -> Option<Result<Box<dyn Backend>, SqlError>> {
        Some(
            Postgres::start(self.config.clone(), self.label.clone())
                .map(|b| Box::new(b) as Box<dyn Backend>),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            masked("postgres://sp:secret@127.0.0.1:5432/db"),
            "postgres://sp:***@127.0.0.1:5432/db"
        );
        assert_eq!(
            masked("postgres://sp@127.0.0.1/db"),
            "postgres://sp@127.0.0.1/db"
        );
        assert!(is_url("postgresql://x/y") && !is_url("/tmp/x.db"));
    }

    #[test]
    fn an_unreachable_server_is_one_clear_error() {
        let e = connect("postgres://sp:pw@127.0.0.1:1/db?connect_timeout=2").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("postgres://sp:***@127.0.0.1:1/db"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }
}
