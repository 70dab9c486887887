//! Real servers the tests start on loopback ports and stop when dropped: Redis (Debian's
//! `redis-server`, which `.ci/run` installs where it is missing).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `port` on loopback accepts connections; fails the test, naming `what`, if
/// `child` exits first or `timeout` passes (with the child's stderr when it was piped).
pub fn wait_for_port(child: &mut Child, port: u16, what: &str, timeout: Duration) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("{what} exited at start: {status}\n{stderr}");
        }
        assert!(
            started.elapsed() < timeout,
            "{what} did not come up on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-server` on a loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>/`
    pub url: String,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install Debian's redis-server (.ci/run does)"
                )
            });
        let url = format!("redis://127.0.0.1:{port}/");
        let server = Self { child, url };
        let started = Instant::now();
        while server.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not come up on {}",
                server.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Runs a command through `redis-cli`; its output, trimmed, if it ran.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-u", &self.url])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The keys under `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx (Debian's package) in front of `upstreams` (`host:port` each), with
/// `docs/deploy/nginx.conf`; stopped on drop.
pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>`
    pub url: String,
}

impl Nginx {
    /// Starts it and waits until its port accepts connections.
    pub fn start(upstreams: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy/nginx.conf"),
        )
        .expect("docs/deploy/nginx.conf");
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u} max_fails=1 fail_timeout=10s;\n        "))
            .collect();
        let conf = template
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@SERVERS@", servers.trim_end());
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nginx ({e}): install Debian's nginx (.ci/run does)")
            });
        let mut nginx = Self {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        wait_for_port(&mut nginx.child, port, "nginx", Duration::from_secs(20));
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Postgres (Debian's `postgresql` package) in a temporary directory on a loopback port:
/// `initdb` and `pg_ctl start`, as the `postgres` user when the tests run as root (Postgres
/// refuses to run as root); stopped (immediate mode) and removed on drop.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    as_postgres: bool,
    port: u16,
}

impl PostgresServer {
    /// The directory holding `initdb` and `pg_ctl`: on PATH, else Debian's
    /// `/usr/lib/postgresql/<version>/bin`.
    fn bin_dir() -> std::path::PathBuf {
        let debian = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .max();
        debian.unwrap_or_else(|| {
            panic!("no Postgres found in /usr/lib/postgresql: install Debian's postgresql (.ci/run does)")
        })
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts one (without fsync: tests need no durability) and waits until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_with("-c fsync=off")
    }

    /// Starts one with Postgres's durable defaults (fsync, synchronous commit), as a
    /// benchmark against SQLite's `synchronous = FULL` must.
    pub fn start_durable() -> Self {
        Self::start_with("")
    }

    fn start_with(settings: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the Postgres directory");
        }
        let server = Self {
            bin: Self::bin_dir(),
            dir,
            as_postgres,
            port: free_port(),
        };
        let data = server.dir.path().join("data");
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "state_pack", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 {settings}",
            server.port,
            server.dir.path().display()
        );
        let out = server
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(server.dir.path().join("log"))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default()
        );
        server
    }

    /// Stops it at once (as a crash would) and starts it again with the same settings.
    pub fn restart(&self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "restart", "-l"])
            .arg(self.dir.path().join("log"))
            .output()
            .expect("run pg_ctl restart");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The URL of database `name` on it.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://state_pack@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn fresh_db(&self) -> String {
        state_pack_postgres::create_database(&self.url("postgres")).expect("create database")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The bearer token [`Serve`] servers accept.
pub const TOKEN: &str = "replica-token-0123456789abcdef";

/// `state-pack serve --engine llamacpp` on a loopback port; killed on drop.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// `127.0.0.1:<port>`
    pub addr: String,
}

impl Serve {
    /// Starts one on database `db` (a file or a URL) and KV tier `kv`, signing with
    /// `<dir>/key.pem`; waits until it listens.
    pub fn start(dir: &Path, db: impl AsRef<std::ffi::OsStr>, kv: &str) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_state-pack"))
            .args([
                "--engine",
                "llamacpp",
                "--threads",
                "1",
                "--kv",
                kv,
                "serve",
            ])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--db")
            .arg(db)
            .env("STATE_PACK_KEY", dir.join("key.pem"))
            .env("STATE_PACK_TOKENS", format!("replicas:{TOKEN}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start state-pack serve");
        let url = format!("http://127.0.0.1:{port}");
        let addr = format!("127.0.0.1:{port}");
        let mut server = Self { child, url, addr };
        wait_for_port(
            &mut server.child,
            port,
            "state-pack serve",
            Duration::from_secs(180),
        );
        server
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` to `url` through the proxy; a transport error or a 5xx is tried again (at
/// most 3 times), as a client of replicas does.
pub async fn post_retrying(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    session: Option<&str>,
) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..3 {
        let mut req = client.post(url).bearer_auth(TOKEN).json(body);
        if let Some(s) = session {
            req = req.header("X-State-Pack-Session", s);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                return resp.json().await.expect("a JSON answer");
            }
            Ok(resp) => {
                last = format!(
                    "{} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                )
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("POST {url} failed 3 times: {last}");
}
