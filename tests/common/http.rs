//! A minimal HTTP/1.1 client over a TCP socket, enough to POST to the ingest endpoint.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POST `body` and return (status, response body).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    request(addr, "POST", path, content_type, body).await
}

/// PUT with an empty body.
pub async fn put(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "PUT", path, "application/octet-stream", b"").await
}

/// GET.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", path, "text/plain", b"").await
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body).await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET /metrics`, checked by Prometheus's own `promtool check metrics` (installed by
/// `.ci/run`; the test fails without it); returns the text.
pub async fn metrics(addr: SocketAddr) -> String {
    let (status, text) = get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{text}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; .ci/run does)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool rejects /metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    text
}

/// The value of `metric{labels}` in metrics text, if present.
pub fn sample(text: &str, metric_with_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(metric_with_labels)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
