//! Real servers the tests start on loopback ports and stop when dropped: Redis (Debian's
//! `redis-server`, which `.ci/run` installs where it is missing).

use std::net::TcpListener;
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
