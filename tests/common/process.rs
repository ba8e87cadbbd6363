//! The real `eddydb` binary as a child process, for tests that must kill it (SIGKILL) and
//! restart it on the same data directory. Ports are chosen by the OS and read from the JSON
//! "ready" log line.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A running server process.
pub struct EddyProcess {
    child: Mutex<Option<Child>>,
    /// Warning and error lines the server logged.
    problems: std::sync::Arc<Mutex<Vec<String>>>,
    pub pg: SocketAddr,
    pub http: SocketAddr,
}

/// The value of `"key":"value"` in a JSON log line.
fn json_field(line: &str, key: &str) -> Option<String> {
    let marker = format!("\"{key}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_string())
}

impl EddyProcess {
    /// Start the server on `data_dir` with extra environment variables; waits until ready.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> EddyProcess {
        Self::start_with_args(data_dir, &[], env)
    }

    /// Start with extra command-line arguments too.
    pub fn start_with_args(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> EddyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eddydb"))
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--log-level", "info"])
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            // Test knobs share the EDDY_ prefix; the server would refuse them as settings.
            .env_remove("EDDY_CRASH_KILLS")
            .env_remove("EDDY_CHECKPOINT_KILLS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn eddydb");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let problems = std::sync::Arc::new(Mutex::new(Vec::new()));
        let logged = std::sync::Arc::clone(&problems);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"level\":\"ERROR\"") || line.contains("\"level\":\"WARN\"") {
                    logged.lock().unwrap().push(line.clone());
                }
                if line.contains("ready to accept connections")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                } else if std::env::var("TEST_LOG").is_ok() {
                    println!("{line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(_) if Instant::now() > deadline => panic!("eddydb did not become ready"),
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("eddydb exited during start: {status}");
                    }
                }
            }
        };
        let addr = |key| {
            json_field(&ready, key)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {ready}"))
        };
        EddyProcess {
            pg: addr("pg"),
            http: addr("http"),
            child: Mutex::new(Some(child)),
            problems,
        }
    }

    /// Warning and error log lines so far that contain `text`.
    pub fn logged(&self, text: &str) -> Vec<String> {
        self.problems
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .cloned()
            .collect()
    }

    /// SIGKILL: no shutdown, no flush, like a power cut for the process.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn conn_str(&self) -> String {
        format!(
            "host={} port={} user=eddy dbname=eddy",
            self.pg.ip(),
            self.pg.port()
        )
    }

    pub async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_str(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        self.try_connect().await.expect("connect to eddydb")
    }
}

impl Drop for EddyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
