//! Prometheus metrics: `GET /metrics` on the HTTP listener, in the text exposition format
//! (version 0.0.4).
//!
//! Nothing is counted a second time for Prometheus: every scrape renders the figures the
//! system tables show, read from the same places (a view's [`ViewStats`]), so `/metrics` and
//! `eddy_catalog.materialized_views` never disagree. Each family is written once with its
//! HELP and TYPE lines and one sample per view, labelled `view="schema.name"`; a view that has
//! no value for a family (no checkpoint yet, not restored) has no sample in it. Model families
//! are labelled `model="schema.name"` and `version`, and read the model's usage counters
//! (rows scored, time, shadow agreement), its recorded holdout metrics, and per monitor the
//! newest window's drift and the drift events recorded. Streams report rows, log bytes and
//! ingest latency per write path (insert, copy, http, source) and their flushes and
//! compactions (from [`StreamCounters`](crate::storage::stream::StreamCounters)); the server,
//! its connections and statement durations ([`crate::catalog::activity::Activity`]) and the
//! object store's failed requests. Latencies are histograms with the buckets of
//! [`crate::telemetry::LATENCY_BUCKETS`].

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::catalog::activity::STATEMENT_KINDS;
use crate::ml::registry::{ModelUsage, VersionUsage};
use crate::planner::Engine;
use crate::storage::ModelDef;
use crate::storage::stream::{IngestCounters, StreamStore};
use crate::storage::{IngestPath, Relation};
use crate::streaming::view::{Status, ViewStats};
use crate::telemetry::Histogram;

/// The metrics text for one scrape.
pub fn render(engine: &Engine) -> String {
    let all_views = engine.catalog().views().all();
    let views: Vec<(String, Status, ViewStats)> = all_views
        .iter()
        .map(|v| {
            (
                format!("{}.{}", v.def.schema_name, v.def.name),
                v.status(),
                v.stats(),
            )
        })
        .collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut out = Exposition::default();
    let per_view = |f: &dyn Fn(&Status, &ViewStats) -> Option<f64>| -> Vec<(&str, f64)> {
        views
            .iter()
            .filter_map(|(name, status, stats)| Some((name.as_str(), f(status, stats)?)))
            .collect()
    };
    out.family(
        "eddy_view_running",
        "gauge",
        "1 when the materialized view is up to date with its inputs, 0 while it backfills or after it failed.",
        &per_view(&|status, _| Some(f64::from(u8::from(*status == Status::Running)))),
    );
    out.family(
        "eddy_view_rows",
        "gauge",
        "Rows the materialized view holds.",
        &per_view(&|_, s| Some(s.rows as f64)),
    );
    out.family(
        "eddy_view_input_rows_total",
        "counter",
        "Input rows (changes) the view has processed since the server started.",
        &per_view(&|_, s| Some(s.input_rows as f64)),
    );
    out.family(
        "eddy_view_state_bytes",
        "gauge",
        "Bytes of operator state the view holds (groups, join rows, open windows).",
        &per_view(&|_, s| Some(s.state_bytes as f64)),
    );
    out.family(
        "eddy_view_watermark_delay_seconds",
        "gauge",
        "How far the view's watermark is behind the wall clock.",
        &per_view(&|_, s| s.watermark.map(|w| (now_ms - w / 1000) as f64 / 1000.0)),
    );
    out.family(
        "eddy_view_latency_p50_seconds",
        "gauge",
        "Median event-to-view latency over the latest live batches.",
        &per_view(&|_, s| s.latency_ms.map(|l| l.0 / 1000.0)),
    );
    out.family(
        "eddy_view_latency_p99_seconds",
        "gauge",
        "99th percentile event-to-view latency over the latest live batches.",
        &per_view(&|_, s| s.latency_ms.map(|l| l.1 / 1000.0)),
    );
    out.family(
        "eddy_view_checkpoint_age_seconds",
        "gauge",
        "Age of the view's newest complete checkpoint.",
        &per_view(&|_, s| s.checkpoint.last.map(|t| (now_ms - t) as f64 / 1000.0)),
    );
    out.family(
        "eddy_view_checkpoint_timestamp_seconds",
        "gauge",
        "When the view's newest complete checkpoint was taken (Unix time).",
        &per_view(&|_, s| s.checkpoint.last.map(|t| t as f64 / 1000.0)),
    );
    out.family(
        "eddy_view_checkpoint_bytes",
        "gauge",
        "Size of the view's newest checkpoint.",
        &per_view(&|_, s| s.checkpoint.last.map(|_| s.checkpoint.bytes as f64)),
    );
    out.family(
        "eddy_view_checkpoint_duration_seconds",
        "gauge",
        "Time the view's newest checkpoint took to snapshot and write.",
        &per_view(&|_, s| s.checkpoint.last.map(|_| s.checkpoint.duration_ms / 1000.0)),
    );
    out.family(
        "eddy_view_recovery_seconds",
        "gauge",
        "Time the view took at start to load and restore its checkpoint.",
        &per_view(&|_, s| s.checkpoint.recovery_ms.map(|ms| ms / 1000.0)),
    );
    out.labelled_family(
        "eddy_view_late_rows_total",
        "counter",
        "Rows that arrived behind the watermark and were left out of windowed results (kept in the stream).",
        &all_views
            .iter()
            .map(|v| {
                (
                    vec![("view", format!("{}.{}", v.def.schema_name, v.def.name))],
                    v.late.count() as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    model_families(engine, &mut out);
    connector_families(engine, &mut out);
    storage_families(engine, &mut out);
    server_families(engine, &mut out);
    out.0
}

/// Per stream and write path: rows, bytes and ingest latency; per stream: flushes and
/// compactions; and the object store's failed requests.
fn storage_families(engine: &Engine, out: &mut Exposition) {
    let storage = engine.catalog().storage();
    let streams: Vec<(String, Arc<StreamStore>)> = storage
        .relations()
        .into_iter()
        .filter_map(|r| match r {
            Relation::Stream(s) => {
                let def = s.def();
                Some((format!("{}.{}", def.schema_name, def.name), s))
            }
            Relation::Table(_) => None,
        })
        .collect();
    // One sample per stream and path that has been written through.
    let written: Vec<(Vec<(&str, String)>, &IngestCounters)> = streams
        .iter()
        .flat_map(|(name, stream)| {
            IngestPath::ALL
                .iter()
                .zip(&stream.counters.ingested)
                .filter(|(_, c)| c.rows.load(Ordering::Relaxed) > 0)
                .map(|(path, c)| {
                    (
                        vec![("stream", name.clone()), ("path", path.name().to_string())],
                        c,
                    )
                })
        })
        .collect();
    let per_path = |value: &dyn Fn(&IngestCounters) -> f64| {
        written
            .iter()
            .map(|(labels, c)| (labels.clone(), value(c)))
            .collect::<Vec<_>>()
    };
    out.labelled_family(
        "eddy_stream_rows_total",
        "counter",
        "Rows written to the stream since the server started, by path (insert, copy, http, source).",
        &per_path(&|c| c.rows.load(Ordering::Relaxed) as f64),
    );
    out.labelled_family(
        "eddy_stream_bytes_total",
        "counter",
        "Bytes of log records written to the stream since the server started, by path.",
        &per_path(&|c| c.bytes.load(Ordering::Relaxed) as f64),
    );
    let latencies: Vec<(Vec<(&str, String)>, &Histogram)> = written
        .iter()
        .map(|(labels, c)| (labels.clone(), &c.latency))
        .collect();
    out.histogram(
        "eddy_ingest_duration_seconds",
        "Time from a write's arrival at the stream to its durability (the acknowledgement).",
        &latencies,
    );
    let per_stream = |value: &dyn Fn(&StreamStore) -> f64| {
        streams
            .iter()
            .map(|(name, stream)| (vec![("stream", name.clone())], value(stream)))
            .collect::<Vec<_>>()
    };
    out.labelled_family(
        "eddy_tier_flushes_total",
        "counter",
        "Flushes of the stream's hot tier to Parquet files on the object store.",
        &per_stream(&|s| s.counters.flushes.load(Ordering::Relaxed) as f64),
    );
    out.labelled_family(
        "eddy_tier_compactions_total",
        "counter",
        "Compactions that merged the stream's small Parquet files.",
        &per_stream(&|s| s.counters.compactions.load(Ordering::Relaxed) as f64),
    );
    out.labelled_family(
        "eddy_object_store_errors_total",
        "counter",
        "Object-store requests of flushes, compactions, checkpoints and models that failed.",
        &[(Vec::new(), storage.cold_store().errors() as f64)],
    );
}

/// Connections and statement durations.
fn server_families(engine: &Engine, out: &mut Exposition) {
    let activity = engine.catalog().activity();
    out.labelled_family(
        "eddy_connections",
        "gauge",
        "PostgreSQL protocol connections open now.",
        &[(
            Vec::new(),
            activity.connections.load(Ordering::Relaxed) as f64,
        )],
    );
    out.labelled_family(
        "eddy_connections_total",
        "counter",
        "PostgreSQL protocol connections accepted since the server started.",
        &[(
            Vec::new(),
            activity.connections_total.load(Ordering::Relaxed) as f64,
        )],
    );
    let statements: Vec<(Vec<(&str, String)>, &Histogram)> = STATEMENT_KINDS
        .iter()
        .zip(&activity.statements)
        .map(|(kind, h)| (vec![("kind", kind.to_string())], h))
        .collect();
    out.histogram(
        "eddy_query_duration_seconds",
        "Statement durations from the client's request to the result (query: returns rows; command: the others and errors).",
        &statements,
    );
}

/// Per source: rows, dead letters, and per Kafka partition the consumer lag; per sink: messages.
fn connector_families(engine: &Engine, out: &mut Exposition) {
    let sources = engine.catalog().sources().all();
    out.labelled_family(
        "eddy_source_rows_total",
        "counter",
        "Rows the source has appended to its stream (across restarts).",
        &sources
            .iter()
            .map(|s| (vec![("source", s.stream.clone())], s.rows() as f64))
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_source_dead_letters_total",
        "counter",
        "Input records the source could not decode, kept in eddy_catalog.dead_letters.",
        &sources
            .iter()
            .filter_map(|s| {
                Some((
                    vec![("source", s.stream.clone())],
                    s.dead_letters()?.count() as f64,
                ))
            })
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_source_lag",
        "gauge",
        "Records in the partition after the next one the source reads (high watermark minus next offset).",
        &sources
            .iter()
            .flat_map(|s| {
                s.partitions().into_iter().map(move |(partition, progress)| {
                    (
                        vec![("source", s.stream.clone()), ("partition", partition.to_string())],
                        crate::connectors::kafka::lag(&progress) as f64,
                    )
                })
            })
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_sink_messages_total",
        "counter",
        "Messages the sink has had acknowledged since the server started.",
        &engine
            .catalog()
            .sinks()
            .all()
            .iter()
            .map(|s| (vec![("sink", s.name.clone())], s.messages() as f64))
            .collect::<Vec<_>>(),
    );
}

/// Per model and version: scoring, shadow agreement, holdout metrics; per monitor: drift.
fn model_families(engine: &Engine, out: &mut Exposition) {
    let models: Vec<(String, ModelDef, ModelUsage)> = engine
        .models()
        .all()
        .iter()
        .map(|m| (m.qualified(), m.def(), m.usage()))
        .collect();
    type Samples<'a> = Vec<(Vec<(&'a str, String)>, f64)>;
    let per_version = |f: &dyn Fn(&VersionUsage) -> Option<f64>| -> Samples<'_> {
        models
            .iter()
            .flat_map(|(name, _, usage)| {
                usage.versions.iter().filter_map(move |(version, used)| {
                    Some((
                        vec![("model", name.clone()), ("version", version.to_string())],
                        f(used)?,
                    ))
                })
            })
            .collect()
    };
    out.labelled_family(
        "eddy_model_active_version",
        "gauge",
        "The version PREDICT uses when none is pinned.",
        &models
            .iter()
            .filter_map(|(name, def, _)| {
                Some((vec![("model", name.clone())], f64::from(def.active?)))
            })
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_model_predictions_total",
        "counter",
        "Rows scored by PREDICT, PREDICT_PROBA and PREDICT_DISTANCE since the server started.",
        &per_version(&|u| Some(u.rows as f64)),
    );
    out.labelled_family(
        "eddy_model_prediction_batches_total",
        "counter",
        "Scoring calls (one per batch of rows) since the server started.",
        &per_version(&|u| Some(u.batches as f64)),
    );
    out.labelled_family(
        "eddy_model_prediction_seconds_total",
        "counter",
        "Time spent scoring since the server started; divided by the predictions, the latency per row.",
        &per_version(&|u| Some(u.seconds)),
    );
    out.labelled_family(
        "eddy_model_shadow_predictions_total",
        "counter",
        "Rows scored by the shadow version beside the active one since the server started.",
        &per_version(&|u| (u.shadow_rows > 0).then_some(u.shadow_rows as f64)),
    );
    out.labelled_family(
        "eddy_model_shadow_agreement_ratio",
        "gauge",
        "Share of shadow-scored rows where the shadow agreed with the active version (same class, or within 1%).",
        &per_version(&|u| {
            (u.shadow_rows > 0).then(|| u.shadow_agreeing as f64 / u.shadow_rows as f64)
        }),
    );
    out.labelled_family(
        "eddy_model_holdout_metric",
        "gauge",
        "A version's evaluation metric on its holdout rows, from training.",
        &models
            .iter()
            .flat_map(|(name, def, _)| {
                def.versions.iter().flat_map(move |v| {
                    v.metrics.iter().map(move |(metric, value)| {
                        (
                            vec![
                                ("model", name.clone()),
                                ("version", v.version.to_string()),
                                ("metric", metric.clone()),
                            ],
                            *value,
                        )
                    })
                })
            })
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_model_drift",
        "gauge",
        "The drift (PSI or KS) of a feature in the monitor's newest closed window.",
        &models
            .iter()
            .flat_map(|(name, _, usage)| {
                usage.drift.iter().map(move |((monitor, feature), value)| {
                    (
                        vec![
                            ("model", name.clone()),
                            ("monitor", monitor.clone()),
                            ("feature", feature.clone()),
                        ],
                        *value,
                    )
                })
            })
            .collect::<Vec<_>>(),
    );
    out.labelled_family(
        "eddy_model_drift_events",
        "gauge",
        "Drift events the monitor has recorded (the newest 1000 per model are kept).",
        &models
            .iter()
            .flat_map(|(name, def, _)| {
                def.monitors.iter().map(move |monitor| {
                    (
                        vec![("model", name.clone()), ("monitor", monitor.name.clone())],
                        def.drift_events
                            .iter()
                            .filter(|e| e.monitor == monitor.name)
                            .count() as f64,
                    )
                })
            })
            .collect::<Vec<_>>(),
    );
}

/// Text in the Prometheus exposition format.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// One metric family: HELP, TYPE and a sample per view.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
        let labelled: Vec<(Vec<(&str, String)>, f64)> = samples
            .iter()
            .map(|(view, value)| (vec![("view", view.to_string())], *value))
            .collect();
        self.labelled_family(name, kind, help, &labelled);
    }

    /// One metric family whose samples carry any labels.
    fn labelled_family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(Vec<(&str, String)>, f64)],
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.sample(name, labels, None, *value);
        }
    }

    /// One histogram family: per label set its cumulative buckets, sum and count.
    fn histogram(&mut self, name: &str, help: &str, samples: &[(Vec<(&str, String)>, &Histogram)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} histogram");
        for (labels, histogram) in samples {
            let (buckets, sum, count) = histogram.snapshot();
            for (bound, cumulative) in buckets {
                let le = if bound.is_infinite() {
                    "+Inf".to_string()
                } else {
                    bound.to_string()
                };
                self.sample(
                    &format!("{name}_bucket"),
                    labels,
                    Some(("le", le)),
                    cumulative as f64,
                );
            }
            self.sample(&format!("{name}_sum"), labels, None, sum);
            self.sample(&format!("{name}_count"), labels, None, count as f64);
        }
    }

    fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, String)],
        extra: Option<(&str, String)>,
        value: f64,
    ) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(label, v)| (*label, v.as_str()))
            .chain(extra.as_ref().map(|(l, v)| (*l, v.as_str())))
            .map(|(label, v)| format!("{label}=\"{}\"", escape_label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {}", number(value));
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {}", labels.join(","), number(value));
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as Prometheus spells it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_numbers_are_spelled_for_prometheus() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        let mut out = Exposition::default();
        out.family("m", "gauge", "Help.", &[("public.v", 2.0)]);
        assert_eq!(
            out.0,
            "# HELP m Help.\n# TYPE m gauge\nm{view=\"public.v\"} 2\n"
        );
    }
}
