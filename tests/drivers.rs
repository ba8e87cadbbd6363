//! Real PostgreSQL client drivers against a real server, each run as a child process:
//!
//! * Python: psycopg2, psycopg 3 and SQLAlchemy 2 (`tests/clients/python_drivers.py`);
//! * Node.js: node-postgres (`tests/clients/node_drivers.js`, `pg` from `tests/clients/node_modules`);
//! * Java: pgjdbc (`tests/clients/JdbcDrivers.java`, compiled with `javac` into a temp dir and run
//!   with Debian's `/usr/share/java/postgresql.jar`).
//!
//! Every client prints each check it makes and exits non-zero listing every failure; the test
//! asserts exit status 0 and prints the client's output otherwise. A missing client (interpreter,
//! module, package or jar) FAILS the test: `.ci/run` installs all of them.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

/// How long one client may run before it is killed and the test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the jar of Debian's libpostgresql-jdbc-java package lives.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn missing(what: &str) -> ! {
    panic!(
        "{what}\nThe driver tests need Python (psycopg2, psycopg 3, SQLAlchemy), Node.js with \
         tests/clients/node_modules (npm ci) and Java 17 with pgjdbc; run `.ci/run`, which \
         installs them."
    )
}

/// Whether `program args` starts and exits 0 (a `--version`-like probe).
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Output of a finished (or killed) child.
struct Outcome {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Run `cmd` to completion (killing it after [`CLIENT_TIMEOUT`]), capturing its output.
fn run(cmd: &mut Command) -> Outcome {
    let description = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| missing(&format!("cannot start {description}: {e}")));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let (success, status) = loop {
        match child.try_wait().expect("wait for client") {
            Some(status) => break (status.success(), status.to_string()),
            None if started.elapsed() > CLIENT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break (
                    false,
                    format!("killed after {CLIENT_TIMEOUT:?} (timed out)"),
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Outcome {
        success,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Assert the client exited 0; on failure print everything it said.
fn assert_success(client: &str, outcome: &Outcome) {
    // Shown by `cargo test -- --nocapture` even when the client passed.
    println!("----- {client} stdout -----\n{}", outcome.stdout);
    if !outcome.stderr.is_empty() {
        println!("----- {client} stderr -----\n{}", outcome.stderr);
    }
    assert!(
        outcome.success,
        "{client} failed ({}).\n----- stdout -----\n{}\n----- stderr -----\n{}",
        outcome.status, outcome.stdout, outcome.stderr
    );
}

fn host_port(server: &TestServer) -> (String, String) {
    (server.pg.ip().to_string(), server.pg.port().to_string())
}

#[test]
fn python_psycopg2_psycopg3_sqlalchemy() {
    if !runs("python3", &["--version"]) {
        missing("python3 is not installed.");
    }
    if !runs(
        "python3",
        &["-c", "import psycopg2, psycopg, sqlalchemy, psycopg.pq"],
    ) {
        missing(
            "The Python modules psycopg2, psycopg (3) and sqlalchemy are not all importable \
             by python3.",
        );
    }
    let server = TestServer::start();
    let (host, port) = host_port(&server);
    let outcome = run(Command::new("python3")
        .arg(clients_dir().join("python_drivers.py"))
        .args([&host, &port])
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert_success("python_drivers.py", &outcome);
}

#[test]
fn node_postgres() {
    if !runs("node", &["--version"]) {
        missing("node (Node.js) is not installed.");
    }
    if !clients_dir().join("node_modules/pg/package.json").is_file() {
        missing("tests/clients/node_modules/pg is missing (npm ci in tests/clients).");
    }
    let server = TestServer::start();
    let (host, port) = host_port(&server);
    let outcome = run(Command::new("node")
        .arg(clients_dir().join("node_drivers.js"))
        .args([&host, &port])
        // node-postgres parses `timestamp` (without time zone) and `date` in the local zone.
        .env("TZ", "UTC")
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert_success("node_drivers.js", &outcome);
}

#[test]
fn pgjdbc() {
    if !runs("javac", &["-version"]) || !runs("java", &["-version"]) {
        missing("java and javac (a JDK, 17 or later) are not installed.");
    }
    if !Path::new(PGJDBC_JAR).is_file() {
        missing(&format!(
            "{PGJDBC_JAR} (Debian package libpostgresql-jdbc-java) is missing."
        ));
    }
    let classes = tempfile::tempdir().expect("temp dir for classes");
    let compile = run(Command::new("javac")
        .args([
            "--release",
            "17",
            "-encoding",
            "UTF-8",
            "-cp",
            PGJDBC_JAR,
            "-d",
        ])
        .arg(classes.path())
        .arg(clients_dir().join("JdbcDrivers.java")));
    assert_success("javac JdbcDrivers.java", &compile);

    let server = TestServer::start();
    let (host, port) = host_port(&server);
    let classpath = format!("{}:{PGJDBC_JAR}", classes.path().display());
    let outcome = run(Command::new("java")
        .args(["-Duser.timezone=UTC", "-cp", &classpath, "JdbcDrivers"])
        .args([&host, &port])
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert_success("JdbcDrivers", &outcome);
}
