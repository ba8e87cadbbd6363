//! A real Kafka-compatible broker for tests (tansu 0.6 with its EndTxn request routed, built by
//! `.ci/install-tansu`, which `.ci/run` calls), on a free loopback port with in-memory storage,
//! killed when dropped; and an independent client (kafka-python, `tests/clients/kafka_client.py`)
//! to create topics, produce and read back, as another application on the same broker would.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker.
pub struct Broker {
    pub address: String,
    child: Option<Child>,
}

/// The tansu binary: `TANSU` if set, else the one `.ci/install-tansu` put in `~/.cargo/bin`,
/// else one on the PATH.
fn tansu() -> String {
    if let Ok(path) = std::env::var("TANSU") {
        return path;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let installed = format!("{home}/.cargo/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        return installed;
    }
    let on_path = Command::new("tansu")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        on_path,
        "no Kafka broker: build tansu with .ci/install-tansu, as .ci/run does"
    );
    "tansu".to_string()
}

impl Broker {
    pub fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_at(format!("127.0.0.1:{port}"))
    }

    /// Stop the broker and start an empty one at the same address (its storage is memory:
    /// every topic and message is gone, as after a cluster was rebuilt).
    pub fn restart_empty(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        *self = Self::start_at(self.address.clone());
    }

    fn start_at(address: String) -> Broker {
        let url = format!("tcp://{address}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            address,
            child: Some(child),
        }
    }

    /// A broker started elsewhere (for its client helpers); not stopped when dropped.
    pub fn attach(address: &str) -> Broker {
        Broker {
            address: address.to_string(),
            child: None,
        }
    }

    fn client(&self, args: &[&str], input: Option<&str>) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/kafka_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&self.address)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (kafka-python is installed by .ci/run)");
        if let Some(input) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write");
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().expect("kafka client");
        assert!(
            output.status.success(),
            "kafka client {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        self.client(&["create", topic, &partitions.to_string()], None);
    }

    pub fn delete_topic(&self, topic: &str) {
        self.client(&["delete", topic], None);
    }

    /// Produce (partition, key, value) messages, in order per partition.
    pub fn produce(&self, topic: &str, messages: &[(i32, Option<&str>, Option<&str>)]) {
        let lines: String = messages
            .iter()
            .map(|(partition, key, value)| {
                format!(
                    "{}\n",
                    serde_json::json!({"partition": partition, "key": key, "value": value})
                )
            })
            .collect();
        self.client(&["produce", topic], Some(&lines));
    }

    /// Produce Avro messages to partition 0, encoded by fastavro with `schema`: each a record
    /// (JSON) or `{"raw_hex": ...}` sent as is. `schema_id` frames them in Confluent's wire
    /// format with that id; None sends bare Avro bodies.
    pub fn produce_avro(
        &self,
        topic: &str,
        schema: &str,
        schema_id: Option<u32>,
        messages: &[serde_json::Value],
    ) {
        let lines: String = messages
            .iter()
            .map(|m| {
                let mut line = if m.get("raw_hex").is_some() {
                    m.clone()
                } else {
                    serde_json::json!({ "record": m })
                };
                line["partition"] = 0.into();
                format!("{line}\n")
            })
            .collect();
        let framing = schema_id.map_or("none".to_string(), |id| id.to_string());
        self.client(&["produce_avro", topic, schema, &framing], Some(&lines));
    }

    /// A producer session on partition 0 of `topic` that the test steps through: plain sends
    /// and a transactional producer's transactions (see [`Transactor::run`]).
    pub fn transactor(&self, topic: &str) -> Transactor {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/kafka_client.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&self.address)
            .args(["transact", topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("kafka client (python3 with kafka-python)");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Transactor { child, stdout }
    }

    /// Every message of `topic`, read until none has come for `idle`.
    pub fn consume(&self, topic: &str, idle: Duration) -> Vec<serde_json::Value> {
        self.read("consume", topic, idle)
    }

    /// The messages of `topic` a read-committed consumer sees: none of an aborted or open
    /// transaction.
    pub fn consume_committed(&self, topic: &str, idle: Duration) -> Vec<serde_json::Value> {
        self.read("consume_committed", topic, idle)
    }

    fn read(&self, command: &str, topic: &str, idle: Duration) -> Vec<serde_json::Value> {
        self.client(&[command, topic, &idle.as_millis().to_string()], None)
            .lines()
            .map(|line| serde_json::from_str(line).expect("consumer output"))
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `kafka_client.py transact` session.
pub struct Transactor {
    child: Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Transactor {
    /// Run one command ("plain VALUE", "begin", "send VALUE", "commit", "abort") and wait
    /// until the broker has it.
    pub fn run(&mut self, command: &str) {
        use std::io::BufRead;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").expect("send command");
        stdin.flush().expect("flush command");
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).expect("answer");
        assert_eq!(answer.trim(), "ok", "kafka client failed on {command:?}");
    }
}

impl Drop for Transactor {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
