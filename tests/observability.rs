//! What an operator sees, over the wire: `pg_stat_activity` (and `eddy_catalog.sessions`)
//! listing each connection and its running statement, `pg_cancel_backend` stopping that
//! statement while its session goes on, and the server's own figures in `/metrics` (rows and
//! bytes per stream and write path, ingest and statement latency histograms, connections),
//! checked with promtool.

mod common;

use std::time::Duration;

use common::TestServer;
use tokio_postgres::error::SqlState;

/// A statement that runs for minutes unless stopped (DataFusion yields between batches).
const HEAVY: &str = "SELECT sum(value) FROM generate_series(1, 1000000000000)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_their_statements_cancelled() {
    let server = TestServer::start();
    let worker = server.connect().await;
    let admin = server.connect().await;
    worker
        .batch_execute("SET application_name = 'report job'")
        .await
        .expect("set");
    let pid: i32 = worker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let admin_pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert_ne!(pid, admin_pid, "each connection has its own backend pid");

    let running = {
        let worker = &worker;
        async move {
            tokio::time::timeout(Duration::from_secs(60), worker.simple_query(HEAVY))
                .await
                .expect("the cancel stopped the statement")
        }
    };
    let watch = async {
        // The worker's statement shows as active, with its text and start.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let rows = admin
                .query(
                    "SELECT state, query, application_name, query_start IS NOT NULL, \
                     backend_type FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .expect("pg_stat_activity");
            if let Some(row) = rows.first()
                && row.get::<_, String>(0) == "active"
            {
                assert_eq!(row.get::<_, String>(1), HEAVY);
                assert_eq!(row.get::<_, String>(2), "report job");
                assert!(row.get::<_, bool>(3));
                assert_eq!(row.get::<_, String>(4), "client backend");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never active: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let same = admin
            .query_one(
                "SELECT count(*) FROM eddy_catalog.sessions WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await
            .expect("sessions")
            .get::<_, i64>(0);
        assert_eq!(same, 1, "eddy_catalog.sessions shows the same backends");
        let cancelled: bool = admin
            .query_one("SELECT pg_cancel_backend($1::integer)", &[&pid])
            .await
            .expect("cancel")
            .get(0);
        assert!(cancelled);
    };
    let (result, ()) = tokio::join!(running, watch);
    let error = result.expect_err("the statement was cancelled");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error:?}");
    // The session goes on, idle, its last statement still shown.
    let row = worker.query_one("SELECT 1", &[]).await.expect("goes on");
    assert_eq!(row.get::<_, i32>(0), 1);
    let row = admin
        .query_one(
            "SELECT state, query FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("idle");
    assert_eq!(row.get::<_, String>(0), "idle");
    assert_eq!(row.get::<_, String>(1), "SELECT 1");
    // No such backend: false, as PostgreSQL answers.
    let none: bool = admin
        .query_one("SELECT pg_cancel_backend(2147483000)", &[])
        .await
        .expect("unknown pid")
        .get(0);
    assert!(!none);
    // A closed connection leaves the list.
    drop(worker);
    common::wait_for(
        &admin,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_ingest_per_path_and_time_statements() {
    let server = TestServer::start();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE STREAM readings (sensor TEXT, value DOUBLE PRECISION);
             INSERT INTO readings VALUES ('a', 1), ('b', 2), ('c', 3);",
        )
        .await
        .expect("stream and insert");
    let copied = async {
        use futures::SinkExt;
        let sink = client.copy_in("COPY readings FROM STDIN").await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(b"d\t4\ne\t5\n"))
            .await?;
        sink.finish().await
    }
    .await
    .expect("copy");
    assert_eq!(copied, 2, "COPY reports its row count");
    let (status, body) = common::http::post(
        server.http,
        "/v1/streams/readings",
        "application/x-ndjson",
        b"{\"sensor\": \"f\", \"value\": 6}\n",
    )
    .await
    .expect("http ingest");
    assert!(status < 300, "{status}: {body}");

    let text = common::http::metrics(server.http).await;
    let sample = |name: &str| common::http::sample(&text, name);
    let labels = |path: &str| format!("{{stream=\"public.readings\",path=\"{path}\"}}");
    assert_eq!(
        sample(&format!("eddy_stream_rows_total{}", labels("insert"))),
        Some(3.0)
    );
    assert_eq!(
        sample(&format!("eddy_stream_rows_total{}", labels("copy"))),
        Some(2.0)
    );
    assert_eq!(
        sample(&format!("eddy_stream_rows_total{}", labels("http"))),
        Some(1.0)
    );
    assert!(sample(&format!("eddy_stream_bytes_total{}", labels("insert"))).unwrap_or(0.0) > 0.0);
    assert_eq!(
        sample(&format!(
            "eddy_ingest_duration_seconds_count{}",
            labels("copy")
        )),
        Some(1.0)
    );
    let inf = "eddy_ingest_duration_seconds_bucket{stream=\"public.readings\",path=\"insert\",le=\"+Inf\"}";
    assert_eq!(sample(inf), Some(1.0));
    assert_eq!(sample("eddy_connections"), Some(1.0));
    assert!(sample("eddy_connections_total").unwrap_or(0.0) >= 1.0);
    let queries = sample("eddy_query_duration_seconds_count{kind=\"command\"}").unwrap_or(0.0);
    assert!(
        queries >= 3.0,
        "CREATE, INSERT and COPY were timed: {queries}"
    );
    assert_eq!(sample("eddy_object_store_errors_total"), Some(0.0));
    assert_eq!(
        sample("eddy_tier_flushes_total{stream=\"public.readings\"}"),
        Some(0.0)
    );
}
