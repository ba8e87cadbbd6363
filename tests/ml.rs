//! Models over the wire, checked against linfa itself: every algorithm trained through
//! `CREATE MODEL` predicts, on points it never saw, what the same linfa algorithm fitted
//! directly here on the same rows predicts (identical classes and clusters, values and
//! probabilities within 1e-9; the decision tree, whose ties linfa breaks in hash order, on at
//! least 98% of the points). Then versions and the active model survive a SIGKILL and restart,
//! and a live view scores new events with whatever version is active.

mod common;

use common::process::EddyProcess;
use linfa::prelude::*;
use ndarray::{Array1, Array2};

/// Transactions with a known rule (the same as `sql/ml/models.slt`).
const DATA: &str = "
CREATE TABLE tx AS
SELECT value AS id,
       CAST((value * 7919) % 1000 AS DOUBLE PRECISION) AS amount,
       CAST((value * 104729) % 10 AS DOUBLE PRECISION) AS velocity,
       CAST((value * 31) % 100 AS DOUBLE PRECISION) / 100.0 AS merchant_risk,
       (value * 7919) % 1000 + ((value * 104729) % 10) * 50 + ((value * 31) % 100) * 2 > 1000 AS is_fraud
FROM generate_series(1, 600);
CREATE TABLE points AS
SELECT value AS id,
       CAST((value * 397) % 1000 AS DOUBLE PRECISION) AS amount,
       CAST((value * 13) % 10 AS DOUBLE PRECISION) AS velocity,
       CAST((value * 59) % 100 AS DOUBLE PRECISION) / 100.0 AS merchant_risk
FROM generate_series(1, 50);";

async fn matrix(client: &tokio_postgres::Client, sql: &str) -> Array2<f64> {
    let rows = client.query(sql, &[]).await.expect(sql);
    let width = rows.first().map_or(0, |r| r.len());
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| (0..width).map(move |i| r.get::<_, f64>(i)))
        .collect();
    Array2::from_shape_vec((rows.len(), width), values).expect("shape")
}

async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Vec<T> {
    let rows = client.query(sql, &[]).await.expect(sql);
    rows.iter().map(|r| r.get(0)).collect()
}

fn assert_close(what: &str, sql: &[f64], direct: &[f64]) {
    assert_eq!(sql.len(), direct.len(), "{what}");
    for (i, (a, b)) in sql.iter().zip(direct).enumerate() {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}, point {i}: SQL {a}, linfa {b}"
        );
    }
}

const FEATURES: &str = "amount, velocity, merchant_risk";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_predict_what_linfa_predicts_and_survive_a_restart() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client.batch_execute(DATA).await.expect("data");
    let x = matrix(&client, &format!("SELECT {FEATURES} FROM tx ORDER BY id")).await;
    let fraud: Array1<usize> = column::<bool>(&client, "SELECT is_fraud FROM tx ORDER BY id")
        .await
        .into_iter()
        .map(usize::from)
        .collect();
    let points = matrix(
        &client,
        &format!("SELECT {FEATURES} FROM points ORDER BY id"),
    )
    .await;
    let on_points = |function: &str, model: &str| {
        format!("SELECT {function}({model}, {FEATURES}) FROM points ORDER BY id")
    };
    let create = |model: &str, target: &str, algorithm: &str, options: &str, columns: &str| {
        format!(
            "CREATE MODEL {model} {target} USING {algorithm} WITH (test_fraction = 0{options}) \
             AS SELECT {columns} FROM tx ORDER BY id"
        )
    };

    // Logistic regression.
    let all = format!("{FEATURES}, is_fraud");
    client
        .batch_execute(&create(
            "logistic",
            "PREDICT is_fraud",
            "logistic_regression",
            "",
            &all,
        ))
        .await
        .expect("logistic");
    let direct = linfa_logistic::LogisticRegression::default()
        .fit(&Dataset::new(x.clone(), fraud.clone()))
        .expect("linfa logistic");
    let expected: Vec<bool> = direct.predict(&points).iter().map(|c| *c == 1).collect();
    assert_eq!(
        column::<bool>(&client, &on_points("PREDICT", "logistic")).await,
        expected
    );
    // linfa gives the probability of its "positive" class, the more frequent label.
    let positive = direct.labels().pos.class;
    let p: Vec<f64> = direct
        .predict_probabilities(&points)
        .iter()
        .map(|p| if positive == 1 { *p } else { 1.0 - p })
        .collect();
    assert_close(
        "logistic PREDICT_PROBA",
        &column::<f64>(&client, &on_points("PREDICT_PROBA", "logistic")).await,
        &p,
    );

    // Gaussian naive Bayes.
    client
        .batch_execute(&create(
            "bayes",
            "PREDICT is_fraud",
            "naive_bayes",
            "",
            &all,
        ))
        .await
        .expect("bayes");
    let direct = linfa_bayes::GaussianNb::params()
        .fit(&Dataset::new(x.clone(), fraud.clone()))
        .expect("linfa bayes");
    let expected: Vec<bool> = direct.predict(&points).iter().map(|c| *c == 1).collect();
    assert_eq!(
        column::<bool>(&client, &on_points("PREDICT", "bayes")).await,
        expected
    );
    let (p, classes) = linfa_bayes::NaiveBayes::predict_proba(&direct, points.view());
    let one = classes.iter().position(|c| **c == 1).expect("class 1");
    assert_close(
        "bayes PREDICT_PROBA",
        &column::<f64>(&client, &on_points("PREDICT_PROBA", "bayes")).await,
        &p.column(one).to_vec(),
    );

    // Decision tree (EddyDB's default depth is 10).
    client
        .batch_execute(&create(
            "tree",
            "PREDICT is_fraud",
            "decision_tree",
            "",
            &all,
        ))
        .await
        .expect("tree");
    let direct = linfa_trees::DecisionTree::params()
        .max_depth(Some(10))
        .fit(&Dataset::new(x.clone(), fraud.clone()))
        .expect("linfa tree");
    let expected: Vec<bool> = direct.predict(&points).iter().map(|c| *c == 1).collect();
    let got = column::<bool>(&client, &on_points("PREDICT", "tree")).await;
    let agree = got.iter().zip(&expected).filter(|(a, b)| a == b).count();
    assert!(
        agree * 100 >= expected.len() * 98,
        "tree: {agree} of {} agree",
        expected.len()
    );

    // Linear regression: amount from the other two features.
    let amount: Array1<f64> = x.column(0).to_owned();
    let rest = x.slice(ndarray::s![.., 1..]).to_owned();
    client
        .batch_execute(&create(
            "linear",
            "PREDICT amount",
            "linear_regression",
            "",
            "velocity, merchant_risk, amount",
        ))
        .await
        .expect("linear");
    let direct = linfa_linear::LinearRegression::new()
        .fit(&Dataset::new(rest, amount))
        .expect("linfa linear");
    let expected = direct.predict(&points.slice(ndarray::s![.., 1..]).to_owned());
    assert_close(
        "linear PREDICT",
        &column::<f64>(
            &client,
            "SELECT PREDICT(linear, velocity, merchant_risk) FROM points ORDER BY id",
        )
        .await,
        &expected.to_vec(),
    );

    // k-means: linfa's default generator is seeded, so both runs find the same centroids.
    client
        .batch_execute(&create("clusters", "", "kmeans", ", k = 3", FEATURES))
        .await
        .expect("kmeans");
    let direct = linfa_clustering::KMeans::params(3)
        .fit(&DatasetBase::from(x.clone()))
        .expect("linfa kmeans");
    let expected: Vec<i64> = direct.predict(&points).iter().map(|c| *c as i64).collect();
    assert_eq!(
        column::<i64>(&client, &on_points("PREDICT", "clusters")).await,
        expected
    );
    let distances: Vec<f64> = direct.transform(&points).iter().map(|d| d.sqrt()).collect();
    assert_close(
        "kmeans PREDICT_DISTANCE",
        &column::<f64>(&client, &on_points("PREDICT_DISTANCE", "clusters")).await,
        &distances,
    );

    // A live view scores each event with the version active when it arrives.
    client
        .batch_execute(
            "CREATE STREAM tx_live (id BIGINT, amount DOUBLE PRECISION, velocity DOUBLE PRECISION, \
                                    merchant_risk DOUBLE PRECISION);
             CREATE MATERIALIZED VIEW scored AS
             SELECT id, PREDICT_PROBA(logistic, amount, velocity, merchant_risk) AS p FROM tx_live;
             INSERT INTO tx_live SELECT id, amount, velocity, merchant_risk FROM points WHERE id <= 25;",
        )
        .await
        .expect("live view");
    let scored_as = |version: &str, range: &str| {
        format!(
            "SELECT count(*) FROM scored s JOIN points p ON s.id = p.id WHERE p.id {range} \
             AND s.p = PREDICT_PROBA(logistic${version}, p.amount, p.velocity, p.merchant_risk)"
        )
    };
    common::wait_for(&client, &scored_as("1", "<= 25"), 25).await;
    client
        .batch_execute(&format!(
            "RETRAIN MODEL logistic AS SELECT {FEATURES}, is_fraud FROM tx WHERE id <= 150 ORDER BY id"
        ))
        .await
        .expect("retrain");
    client
        .batch_execute("INSERT INTO tx_live SELECT id, amount, velocity, merchant_risk FROM points WHERE id > 25")
        .await
        .expect("insert");
    common::wait_for(&client, &scored_as("2", "> 25"), 25).await;
    // The two versions differ, so the check above could fail.
    let differ = common::scalar(
        &client,
        &format!(
            "SELECT count(*) FROM points WHERE PREDICT_PROBA(logistic$1, {FEATURES}) <> \
             PREDICT_PROBA(logistic$2, {FEATURES})"
        ),
    )
    .await;
    assert!(differ > 0, "versions 1 and 2 predict the same");
    client
        .batch_execute("ALTER MODEL logistic SET ACTIVE VERSION 1")
        .await
        .expect("activate");

    // SHOW and DESCRIBE over the wire.
    let shown = client
        .simple_query("SHOW MODELS")
        .await
        .expect("SHOW MODELS");
    let models = shown
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(models, 5);
    let versions = client
        .query("SHOW MODEL VERSIONS logistic", &[])
        .await
        .expect("SHOW MODEL VERSIONS");
    assert_eq!(versions.len(), 2);
    let described = client
        .query("DESCRIBE MODEL logistic", &[])
        .await
        .expect("DESCRIBE MODEL");
    let active: Vec<String> = described
        .iter()
        .filter(|r| r.get::<_, String>(0) == "active_version")
        .map(|r| r.get(1))
        .collect();
    assert_eq!(active, ["1"]);

    // Killed and restarted: the same models, versions and predictions.
    let before: Vec<f64> = column(&client, &on_points("PREDICT_PROBA", "logistic")).await;
    let clusters_before: Vec<i64> = column(&client, &on_points("PREDICT", "clusters")).await;
    process.kill();
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    assert_eq!(
        column::<f64>(&client, &on_points("PREDICT_PROBA", "logistic")).await,
        before
    );
    assert_eq!(
        column::<i64>(&client, &on_points("PREDICT", "clusters")).await,
        clusters_before
    );
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'logistic' AND \
             (version = 1) = active"
        )
        .await,
        2
    );
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.materialized_views WHERE name = 'scored' AND status = 'running'",
        1,
    )
    .await;
}

/// Sensor readings whose temperature shifts up by two standard deviations from row 3000
/// (the same as `sql/ml/monitors.slt`).
const SENSOR: &str = "
CREATE STREAM sensor (
    id BIGINT, ts TIMESTAMPTZ, temperature DOUBLE PRECISION, vibration DOUBLE PRECISION,
    failing BOOLEAN, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH (connector = 'datagen', rows = 6000, rows_per_second = 500, paced = false, seed = 11,
      start_time = '2026-01-01 00:00:00+00',
      fields.id.kind = 'sequence', fields.id.start = 0,
      fields.temperature.kind = 'normal', fields.temperature.mean = 60, fields.temperature.stddev = 5,
      fields.temperature.expression = 'CASE WHEN _row >= 3000 THEN temperature + 10 ELSE temperature END',
      fields.vibration.min = 0, fields.vibration.max = 2,
      fields.failing.expression = 'temperature > 65 AND vibration > 1');";

/// Scoring, shadow scoring and drift show in `/metrics` (checked by promtool); a monitor, its
/// view and its drift events survive a SIGKILL, and the restarted monitor records no window
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_shadow_scoring_and_model_metrics() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client.batch_execute(SENSOR).await.expect("sensor");
    common::wait_sources_finished(&client).await;
    client
        .batch_execute(
            "CREATE MODEL health PREDICT failing USING logistic_regression WITH (standardize = true)
               AS SELECT temperature, vibration, failing FROM sensor WHERE id < 3000;
             RETRAIN MODEL health AS SELECT temperature, vibration, failing FROM sensor WHERE id < 2000;
             ALTER MODEL health SET SHADOW VERSION 1;",
        )
        .await
        .expect("model");
    let scored = common::scalar(
        &client,
        "SELECT count(PREDICT(health, temperature, vibration)) FROM sensor",
    )
    .await;
    assert_eq!(scored, 6000);
    let metrics = common::http::metrics(process.http).await;
    let sample = |metric: &str| common::http::sample(&metrics, metric);
    assert_eq!(
        sample("eddy_model_predictions_total{model=\"public.health\",version=\"2\"}"),
        Some(6000.0)
    );
    assert_eq!(
        sample("eddy_model_shadow_predictions_total{model=\"public.health\",version=\"1\"}"),
        Some(6000.0)
    );
    let agreement =
        sample("eddy_model_shadow_agreement_ratio{model=\"public.health\",version=\"1\"}")
            .expect("shadow agreement");
    // Two fits of the same rule on overlapping rows mostly agree, but not on every row.
    assert!(
        (0.8..=1.0).contains(&agreement),
        "shadow agreement {agreement}"
    );
    assert_eq!(
        sample("eddy_model_active_version{model=\"public.health\"}"),
        Some(2.0)
    );
    assert!(
        sample(
            "eddy_model_holdout_metric{model=\"public.health\",version=\"1\",metric=\"accuracy\"}"
        )
        .is_some_and(|a| a > 0.8)
    );

    client
        .batch_execute(
            "CREATE MODEL MONITOR health_watch ON MODEL health FROM sensor
             WITH (window = '1 second', min_rows = 100)",
        )
        .await
        .expect("monitor");
    let drift_events =
        "SELECT count(*) FROM eddy_catalog.drift_events WHERE monitor = 'health_watch'";
    common::wait_for(&client, drift_events, 4).await;
    let metrics = common::http::metrics(process.http).await;
    let drift = common::http::sample(
        &metrics,
        "eddy_model_drift{model=\"public.health\",monitor=\"health_watch\",feature=\"temperature\"}",
    )
    .expect("drift gauge");
    assert!(drift > 0.25, "the newest window drifted: PSI {drift}");
    assert_eq!(
        common::http::sample(
            &metrics,
            "eddy_model_drift_events{model=\"public.health\",monitor=\"health_watch\"}"
        ),
        Some(4.0)
    );

    process.kill();
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.materialized_views WHERE name = 'health_watch' AND status = 'running'",
        1,
    )
    .await;
    // The restarted monitor judges its view again (its gauge comes back with the newest
    // window's figure) without recording a window twice.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = common::http::metrics(process.http).await;
        let judged = common::http::sample(
            &metrics,
            "eddy_model_drift{model=\"public.health\",monitor=\"health_watch\",feature=\"temperature\"}",
        );
        // Windows are judged in event-time order: the newest window's figure means all were.
        if judged == Some(drift) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted monitor did not judge its view"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // (The newest window's events are recorded just after its figure.)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(common::scalar(&client, drift_events).await, 4);
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM health_watch").await,
        10
    );
}

/// The ```sql blocks of the README section headed `heading`, sped up tenfold: ten times the
/// rows per second, windows of a tenth.
fn readme_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section \"### {heading}\""));
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| {
            block
                .split("```")
                .next()
                .unwrap_or_default()
                .replace("rows_per_second = 200", "rows_per_second = 2000")
                .replace("rows_per_second = 100", "rows_per_second = 1000")
                .replace("INTERVAL '10' SECOND", "INTERVAL '1' SECOND")
                .replace("window = '10 seconds'", "window = '1 second'")
        })
        .collect()
}

/// Wait until `sql` counts at least `expected`.
async fn wait_at_least(client: &tokio_postgres::Client, sql: &str, expected: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = common::scalar(client, sql).await;
        if got >= expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: {got}, expected at least {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The README's two examples run as written (ten times faster): the fraud model scores live
/// transactions well, and the maintenance monitor fires in the first window or two after the
/// generator's temperature shift, never before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_run() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;

    let fraud = readme_blocks("Example: fraud detection");
    assert_eq!(fraud.len(), 3, "stream, model and views, then queries");
    client.batch_execute(&fraud[0]).await.expect("tx stream");
    wait_at_least(&client, "SELECT count(*) FROM tx", 2000).await;
    client
        .batch_execute(&fraud[1])
        .await
        .expect("fraud model and views");
    wait_at_least(
        &client,
        "SELECT count(*) FROM fraud_quality WHERE transactions >= 1000",
        3,
    )
    .await;
    let fraud_rate = common::scalar(
        &client,
        "SELECT (100 * avg(CASE WHEN is_fraud THEN 1 ELSE 0 END))::BIGINT FROM scored",
    )
    .await;
    assert!(
        (2..=30).contains(&fraud_rate),
        "fraud is {fraud_rate}% of transactions; the example wants a minority class"
    );
    let good_windows = common::scalar(
        &client,
        "SELECT count(*) FROM fraud_quality WHERE transactions >= 1000 AND accuracy > 0.95 AND auc > 0.95",
    )
    .await;
    let windows = common::scalar(
        &client,
        "SELECT count(*) FROM fraud_quality WHERE transactions >= 1000",
    )
    .await;
    assert_eq!(
        good_windows, windows,
        "the rule is learnable: every full window scores well"
    );
    client
        .batch_execute(&fraud[2])
        .await
        .expect("fraud queries");

    let maintenance = readme_blocks("Example: predictive maintenance");
    assert_eq!(
        maintenance.len(),
        3,
        "stream, model views and monitor, then queries"
    );
    client
        .batch_execute(&maintenance[0])
        .await
        .expect("readings stream");
    wait_at_least(&client, "SELECT count(*) FROM machine_readings", 3000).await;
    client
        .batch_execute(&maintenance[1])
        .await
        .expect("failure model, view and monitor");
    wait_at_least(
        &client,
        "SELECT count(*) FROM eddy_catalog.drift_events WHERE monitor = 'failure_watch'",
        2,
    )
    .await;
    client
        .batch_execute(&maintenance[2])
        .await
        .expect("maintenance queries");
    // The shift starts at reading 6001.
    let before_shift = common::scalar(
        &client,
        "SELECT count(*) FROM eddy_catalog.drift_events
         WHERE monitor = 'failure_watch'
           AND window_end <= (SELECT min(ts) FROM machine_readings WHERE reading_id > 6000)",
    )
    .await;
    assert_eq!(before_shift, 0, "no drift event before the shift");
    let late_by = common::scalar(
        &client,
        "SELECT (extract(epoch FROM min(window_start)) * 1000 -
                 extract(epoch FROM (SELECT min(ts) FROM machine_readings WHERE reading_id > 6000)) * 1000)::BIGINT
         FROM eddy_catalog.drift_events WHERE monitor = 'failure_watch' AND feature = 'temperature'",
    )
    .await;
    assert!(
        late_by <= 1000,
        "the monitor fired in the window starting {late_by} ms after the shift; it should fire within two windows of it"
    );
    let other_features = common::scalar(
        &client,
        "SELECT count(*) FROM eddy_catalog.drift_events WHERE monitor = 'failure_watch' AND feature <> 'temperature'",
    )
    .await;
    assert_eq!(other_features, 0, "only temperature shifted");
}

/// Concept drift: the rule behind the label flips mid-stream. A windowed model refit every
/// second on the last two seconds of events, promoted only if better, ends up active with a
/// version trained after the flip that scores the new concept well, where version 1 (trained
/// before it) now scores badly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_retraining_recovers_from_concept_drift() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    // 1000 events a second from now; from event 8000 on (8 s) the label is the opposite rule.
    client
        .batch_execute(
            "CREATE STREAM events (id BIGINT, ts TIMESTAMPTZ, x DOUBLE PRECISION,
                                   noise DOUBLE PRECISION, label BOOLEAN)
             WITH (connector = 'datagen', rows = 16000, rows_per_second = 1000, seed = 5,
                   fields.id.kind = 'sequence', fields.id.start = 0,
                   fields.label.expression = 'CASE WHEN _row < 8000 THEN x > 0.5 ELSE x < 0.5 END')",
        )
        .await
        .expect("events");
    wait_at_least(&client, "SELECT count(*) FROM events", 1500).await;
    client
        .batch_execute(
            "CREATE MODEL concept PREDICT label USING logistic_regression
               WITH (mode = 'windowed', window = '2 seconds', retrain_every = '1 second',
                     promote = 'if_better', metric = 'accuracy', time_column = 'ts')
               AS SELECT x, noise, label, ts FROM events",
        )
        .await
        .expect("windowed model");
    // The same refits promoted by hand only.
    client
        .batch_execute(
            "CREATE MODEL concept_manual PREDICT label USING logistic_regression
               WITH (mode = 'windowed', window = '2 seconds', retrain_every = '1 second',
                     promote = 'manual', time_column = 'ts')
               AS SELECT x, noise, label, ts FROM events",
        )
        .await
        .expect("manual model");
    let first = common::scalar(
        &client,
        "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'concept' AND promoted
           AND trained_to < (SELECT min(ts) + INTERVAL '8' SECOND FROM events)",
    )
    .await;
    assert_eq!(
        first, 1,
        "version 1 trained before the flip (the test needs it created within 6 s)"
    );
    // Wait for the generator to finish and a promoted version trained only after the flip.
    let recovered =
        "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'concept' AND promoted
                       AND trained_from >= (SELECT min(ts) + INTERVAL '8' SECOND FROM events)";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::scalar(&client, recovered).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no version trained after the flip was promoted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let accuracy = |version: &str| {
        format!(
            "SELECT (1000 * value)::BIGINT FROM EVALUATE({version},
               (SELECT x, noise, label FROM events WHERE id >= 9000))
             WHERE metric = 'accuracy'"
        )
    };
    let active = common::scalar(&client, &accuracy("concept")).await;
    let original = common::scalar(&client, &accuracy("concept$1")).await;
    assert!(
        active >= 950,
        "the active version scores the new concept at {active}/1000"
    );
    assert!(
        original <= 200,
        "version 1 learned the old concept and scores the new one at {original}/1000"
    );
    // Not every refit is promoted: some versions lost their comparison or came before it.
    let versions = common::scalar(
        &client,
        "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'concept'",
    )
    .await;
    assert!(versions >= 3, "{versions} versions");
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.model_versions
             WHERE model = 'concept_manual' AND version > 1 AND NOT promoted AND NOT active"
        )
        .await,
        common::scalar(
            &client,
            "SELECT count(*) - 1 FROM eddy_catalog.model_versions WHERE model = 'concept_manual'"
        )
        .await,
        "promote = 'manual' refits and records versions but never activates them"
    );
    assert!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'concept_manual'"
        )
        .await
            >= 3
    );

    // Killed and restarted, the schedule runs again: refits keep coming.
    let versions = "SELECT count(*) FROM eddy_catalog.model_versions WHERE model = 'concept'";
    let before = common::scalar(&client, versions).await;
    process.kill();
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    let recorded = common::scalar(&client, versions).await;
    assert!(
        recorded >= before,
        "{recorded} versions after the restart, {before} before"
    );
    wait_at_least(&client, versions, recorded + 2).await;
}

/// Long statements report progress as NOTICEs while they run: training names its phases, and
/// a view's backfill reports its rows every second (a report that exists only while it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_and_backfill_report_progress() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let (client, mut connection) =
        tokio_postgres::connect(&process.conn_str(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (notices_to, mut notices) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = notices_to.send(notice.message().to_string());
            }
        }
    });
    client
        .batch_execute(
            "CREATE STREAM big (id BIGINT, a DOUBLE PRECISION, label BOOLEAN, ts TIMESTAMPTZ,
                                WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'datagen', rows = 400000, rows_per_second = 1000000, paced = false,
                   fields.id.kind = 'sequence', fields.label.expression = 'a > 0.5',
                   fields.ts.kind = 'event_time')",
        )
        .await
        .expect("stream");
    common::wait_sources_finished(&client).await;
    let received = |notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let mut all = Vec::new();
        while let Ok(notice) = notices.try_recv() {
            all.push(notice);
        }
        all
    };
    client
        .batch_execute(
            "CREATE MODEL progress PREDICT label USING decision_tree
             AS SELECT a, label FROM big WHERE id <= 20000",
        )
        .await
        .expect("model");
    let training = received(&mut notices);
    for phase in [
        "running the training query",
        "training query: 20000 rows",
        "fitting decision_tree on 20000 rows",
        "fitted and evaluated in",
        "model \"progress\" version 1: trained on 16000 rows",
    ] {
        assert!(
            training.iter().any(|n| n.starts_with(phase)),
            "no NOTICE starting {phase:?}: {training:?}"
        );
    }
    // Meanwhile another session watches the backfill's progress in eddy_catalog.sessions.
    let watcher = process.connect().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let rows = watcher
                    .query(
                        "SELECT progress FROM eddy_catalog.sessions \
                         WHERE state = 'active' AND progress IS NOT NULL",
                        &[],
                    )
                    .await
                    .expect("sessions");
                seen.extend(rows.iter().map(|r| r.get::<_, String>(0)));
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            seen
        })
    };
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW per_bucket AS
             SELECT id % 5000 AS bucket, count(*) AS n, avg(a) AS mean, min(a) AS low, max(a) AS high
             FROM big GROUP BY id % 5000",
        )
        .await
        .expect("view");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = watching.await.expect("watcher");
    assert!(
        seen.iter()
            .any(|p| p.starts_with("materialized view \"per_bucket\": backfilled ")),
        "eddy_catalog.sessions never showed the backfill's progress: {seen:?}"
    );
    let backfill = received(&mut notices);
    assert_eq!(
        backfill.first().map(String::as_str),
        Some("materialized view \"per_bucket\": reading the stored history of public.big")
    );
    assert!(
        backfill
            .iter()
            .any(|n| n.starts_with("materialized view \"per_bucket\": backfilled ")),
        "the backfill reported no progress (it took under a second?): {backfill:?}"
    );

    // A monitor cancelled during its view's backfill leaves neither view nor monitor behind.
    // The cancel races the backfill: on a loaded machine the statement may finish first, and
    // then the monitor is dropped and the race run again.
    let mut client = client;
    let mut attempts = 0;
    let error = loop {
        attempts += 1;
        let cancel = client.cancel_token();
        let create = tokio::spawn(async move {
            let result = client
                .batch_execute(
                    "CREATE MODEL MONITOR watch ON MODEL progress FROM big \
                     WITH (window = '1 second')",
                )
                .await;
            (client, result)
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let notice = tokio::time::timeout_at(deadline.into(), notices.recv())
                .await
                .expect("no NOTICE from the monitor's backfill")
                .expect("notices");
            if notice.starts_with("materialized view \"watch\": reading") {
                break;
            }
        }
        cancel
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel");
        let (returned, result) = create.await.expect("statement task");
        client = returned;
        match result {
            Err(error) => break error,
            Ok(()) => {
                assert!(
                    attempts < 5,
                    "the backfill finished before the cancel {attempts} times"
                );
                client
                    .batch_execute("DROP MODEL MONITOR watch")
                    .await
                    .expect("drop the monitor the cancel missed");
                while notices.try_recv().is_ok() {}
            }
        }
    };
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{error}"
    );
    common::wait_for(
        &client,
        "SELECT count(*) FROM eddy_catalog.materialized_views WHERE name = 'watch'",
        0,
    )
    .await;
    assert_eq!(
        common::scalar(&client, "SELECT count(*) FROM eddy_catalog.model_monitors").await,
        0
    );
}

/// FTRL trained through SQL is linfa's FTRL stepped over the same rows in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftrl_trains_what_linfa_ftrl_trains() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client.batch_execute(DATA).await.expect("data");
    let scaled = "amount / 1000.0 AS amount, velocity / 10.0 AS velocity, merchant_risk";
    let x = matrix(&client, &format!("SELECT {scaled} FROM tx ORDER BY id")).await;
    let fraud: Vec<bool> = column(&client, "SELECT is_fraud FROM tx ORDER BY id").await;
    let points = matrix(&client, &format!("SELECT {scaled} FROM points ORDER BY id")).await;
    client
        .batch_execute(&format!(
            "CREATE MODEL ftrl PREDICT is_fraud USING ftrl WITH (test_fraction = 0, epochs = 2)
               AS SELECT {scaled}, is_fraud FROM tx ORDER BY id"
        ))
        .await
        .expect("ftrl");
    // The same steps: one row at a time, with a constant 1 as the bias feature.
    let with_bias = |m: &Array2<f64>| {
        ndarray::concatenate![
            ndarray::Axis(1),
            m.view(),
            Array2::ones((m.nrows(), 1)).view()
        ]
    };
    let params = linfa_ftrl::Ftrl::params()
        .alpha(1.0)
        .beta(1.0)
        .l1_ratio(0.1)
        .l2_ratio(0.1);
    let rows = with_bias(&x);
    let mut direct = None;
    for _ in 0..2 {
        for (row, label) in rows.rows().into_iter().zip(&fraud) {
            let one = Dataset::new(
                row.insert_axis(ndarray::Axis(0)).to_owned(),
                ndarray::array![*label],
            );
            direct = Some(params.fit_with(direct, &one).expect("linfa ftrl"));
        }
    }
    let direct = direct.expect("fitted");
    let expected: Vec<f64> = direct
        .predict(&with_bias(&points))
        .iter()
        .map(|p| f64::from(**p))
        .collect();
    let sql: Vec<f64> = column(
        &client,
        "SELECT PREDICT_PROBA(ftrl, amount / 1000.0, velocity / 10.0, merchant_risk) FROM points ORDER BY id",
    )
    .await;
    assert_close("ftrl PREDICT_PROBA", &sql, &expected);
    let classes: Vec<bool> = column(
        &client,
        "SELECT PREDICT(ftrl, amount / 1000.0, velocity / 10.0, merchant_risk) FROM points ORDER BY id",
    )
    .await;
    assert_eq!(
        classes,
        expected.iter().map(|p| *p >= 0.5).collect::<Vec<_>>()
    );
}

/// Rows the online model below learns: a known rule on x, noise beside it.
const ONLINE: &str = "
CREATE TABLE probe AS
SELECT value AS id, CAST(value AS DOUBLE PRECISION) / 100.0 AS x,
       CAST(value * 37 % 100 AS DOUBLE PRECISION) / 100.0 AS noise, value > 50 AS label
FROM generate_series(0, 99);
CREATE STREAM events (id BIGINT, x DOUBLE PRECISION, noise DOUBLE PRECISION, label BOOLEAN)
WITH (connector = 'datagen', rows = 20000, rows_per_second = 4000, seed = 11,
      fields.id.kind = 'sequence', fields.id.start = 0,
      fields.x.min = 0, fields.x.max = 1, fields.noise.min = 0, fields.noise.max = 1,
      fields.label.expression = 'x > 0.5');
CREATE MODEL learner PREDICT label USING ftrl WITH (mode = 'online', snapshot_every = '1 hour')
AS SELECT x, noise, label FROM events;";
const ONLINE_ROWS: i64 = 20_000;

/// Once the generator is done and the model has learned every row: its probabilities on the
/// probe rows (from a version recorded then).
async fn learned_everything(client: &tokio_postgres::Client) -> Vec<f64> {
    common::wait_sources_finished(client).await;
    let learned = "SELECT coalesce(max(training_rows), 0)::BIGINT FROM eddy_catalog.model_versions
                   WHERE model = 'learner'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        client
            .batch_execute("RETRAIN MODEL learner")
            .await
            .expect("snapshot");
        let rows = common::scalar(client, learned).await;
        if rows == ONLINE_ROWS {
            break;
        }
        assert!(rows < ONLINE_ROWS, "learned {rows} rows of {ONLINE_ROWS}");
        assert!(
            std::time::Instant::now() < deadline,
            "learned {rows} rows of {ONLINE_ROWS}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    column(
        client,
        "SELECT PREDICT_PROBA(learner, x, noise) FROM probe ORDER BY id",
    )
    .await
}

/// An online model killed mid-stream recovers exactly: restored from its view's checkpoint and
/// fed the rows after it, it learns every row once and ends bit for bit where an uninterrupted
/// run ends. And it learns the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_models_learn_every_row_once_across_a_crash() {
    let reference = {
        let data_dir = tempfile::tempdir().expect("data dir");
        let process = EddyProcess::start(data_dir.path(), &[]);
        let client = process.connect().await;
        client.batch_execute(ONLINE).await.expect("online model");
        let learned = learned_everything(&client).await;
        let accuracy = common::scalar(
            &client,
            "SELECT (1000 * value)::BIGINT FROM EVALUATE(learner,
               (SELECT x, noise, label FROM probe)) WHERE metric = 'accuracy'",
        )
        .await;
        assert!(
            accuracy >= 900,
            "online accuracy {accuracy}/1000 on the probe rows"
        );
        learned
    };

    let data_dir = tempfile::tempdir().expect("data dir");
    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    client.batch_execute(ONLINE).await.expect("online model");
    wait_at_least(&client, "SELECT count(*) FROM events", 6000).await;
    client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
    wait_at_least(&client, "SELECT count(*) FROM events", 10000).await;
    process.kill();

    let process = EddyProcess::start(data_dir.path(), &[]);
    let client = process.connect().await;
    assert_eq!(learned_everything(&client).await, reference);
    assert_eq!(
        common::scalar(
            &client,
            "SELECT count(*) FROM eddy_catalog.materialized_views
             WHERE name = 'learner_learner' AND restored_from IS NOT NULL"
        )
        .await,
        1,
        "the learner resumed from its checkpoint"
    );
}
