//! The built-in Nexmark generator as a stream source (`WITH (connector = 'nexmark', ...)`).
//!
//! Nexmark models an online auction: people register, open auctions and bid. The events come
//! from the `nexmark` crate (the generator of the Nexmark benchmark suite, deterministic: event
//! number `n` is always the same event), one stream per event type, so three streams created
//! with the same options describe one consistent auction site.
//!
//! The event sequence is cut into chunks of [`CHUNK_EVENTS`] consecutive event numbers; each
//! chunk's rows of the stream's type are appended as one log record. Every chunk holds the same
//! number of rows of a type (the type proportions repeat every 50 events), so after a restart
//! the generator resumes at chunk `records appended so far`: the log is the offset, and no
//! event is written twice or skipped.
//!
//! Event time advances at `rate` events per second from `start_time`. Paced (the default), a
//! chunk is appended when the wall clock reaches its last event's time; unpaced, as fast as
//! storage takes it. `events` stops the generator after that many events of all types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::{Auction, Bid, Event, EventType, Person};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// Consecutive event numbers per appended record: a multiple of the 50-event cycle of types.
pub const CHUNK_EVENTS: u64 = 1000;
/// Events per type in one 50-event cycle (person, auction, bid).
const CYCLE: u64 = 50;

/// Options of a Nexmark stream besides `connector`.
pub const OPTIONS: &[&str] = &[
    "event_type",
    "events",
    "rate",
    "paced",
    "start_time",
    "shuffle",
];

/// What one Nexmark stream generates.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    pub event_type: EventType,
    /// Events of all types to generate; None runs forever.
    pub events: Option<u64>,
    /// Events (of all types) per second of event time.
    pub rate: u64,
    /// Release each chunk when the wall clock reaches its event time.
    pub paced: bool,
    /// Event time of event 0, in milliseconds since the epoch.
    pub start_ms: u64,
    /// Rows of each chunk arrive in a random (seeded) order instead of event-time order.
    pub shuffle: bool,
}

impl NexmarkSource {
    /// Read and check the options (`options` holds every `WITH` option, names lower-cased).
    pub fn from_options(options: &std::collections::BTreeMap<String, String>) -> Result<Self> {
        let bad = |name: &str, value: &str, want: &str| {
            Error::InvalidValue(format!(
                "invalid value for nexmark option \"{name}\": \"{value}\" ({want})"
            ))
        };
        let event_type = match options.get("event_type").map(|s| s.to_ascii_lowercase()) {
            Some(t) if t == "person" => EventType::Person,
            Some(t) if t == "auction" => EventType::Auction,
            Some(t) if t == "bid" => EventType::Bid,
            Some(other) => return Err(bad("event_type", &other, "person, auction or bid")),
            None => {
                return Err(Error::InvalidValue(
                    "a nexmark stream needs event_type = 'person' | 'auction' | 'bid'".to_string(),
                ));
            }
        };
        let count = |name: &str| -> Result<Option<u64>> {
            options
                .get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad(name, v, "a positive whole number"))
                })
                .transpose()
        };
        let flag = |name: &str, default: bool| -> Result<bool> {
            match options.get(name) {
                None => Ok(default),
                Some(v) => crate::server::encode::parse_bool(v.trim())
                    .ok_or_else(|| bad(name, v, "true or false")),
            }
        };
        let rate = count("rate")?.unwrap_or(10_000);
        if rate > 100_000_000 {
            return Err(bad("rate", &rate.to_string(), "at most 100000000 events/s"));
        }
        let start_ms = match options.get("start_time") {
            Some(text) => {
                let nanos =
                    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(
                        text,
                    )
                    .map_err(|_| {
                        bad(
                            "start_time",
                            text,
                            "a timestamp such as '2026-01-01 00:00:00+00'",
                        )
                    })?;
                u64::try_from(nanos / 1_000_000)
                    .map_err(|_| bad("start_time", text, "a time after 1970"))?
            }
            None => return Err(Error::Internal("nexmark start_time not set".to_string())),
        };
        Ok(NexmarkSource {
            event_type,
            events: count("events")?,
            rate,
            paced: flag("paced", true)?,
            start_ms,
            shuffle: flag("shuffle", false)?,
        })
    }

    /// The stream's columns as SQL, the same as the Nexmark DDL other systems use.
    pub fn columns_sql(event_type: EventType) -> &'static str {
        match event_type {
            EventType::Person => {
                "id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, \
                 city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR"
            }
            EventType::Auction => {
                "id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, \
                 reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, \
                 category BIGINT, extra VARCHAR"
            }
            EventType::Bid => {
                "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \
                 date_time TIMESTAMP, extra VARCHAR"
            }
        }
    }

    /// Rows of this stream's type in one chunk.
    fn rows_per_chunk(&self) -> u64 {
        self.rows_within(CHUNK_EVENTS)
    }

    /// Number of chunks the generator makes in all (None: unbounded).
    pub fn chunks(&self) -> Option<u64> {
        self.events.map(|n| n.div_ceil(CHUNK_EVENTS))
    }

    /// Event time (ms) of the last event of chunk `chunk`.
    fn chunk_end_ms(&self, chunk: u64) -> u64 {
        let last = (chunk + 1) * CHUNK_EVENTS - 1;
        self.start_ms + (u128::from(last) * 1000 / u128::from(self.rate)) as u64
    }

    /// How long to wait before chunk `chunk` may be appended.
    pub fn delay_before(&self, chunk: u64) -> Duration {
        if !self.paced {
            return Duration::ZERO;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Duration::from_millis(self.chunk_end_ms(chunk).saturating_sub(now_ms))
    }

    /// Events of all types generated once `chunks` chunks are done.
    pub fn position(&self, chunks: u64) -> u64 {
        let end = chunks.saturating_mul(CHUNK_EVENTS);
        self.events.map_or(end, |n| end.min(n))
    }

    /// Rows of this stream's type among the first `events` events of all types.
    pub fn rows_within(&self, events: u64) -> u64 {
        let (first, per_cycle) = match self.event_type {
            EventType::Person => (0, 1),
            EventType::Auction => (1, 3),
            EventType::Bid => (4, 46),
        };
        events / CYCLE * per_cycle + (events % CYCLE).saturating_sub(first).min(per_cycle)
    }

    fn generator(&self, chunk: u64) -> EventGenerator {
        let config = NexmarkConfig {
            base_time: self.start_ms,
            first_rate: self.rate as usize,
            next_rate: self.rate as usize,
            ..NexmarkConfig::default()
        };
        EventGenerator::new(config)
            .with_type_filter(self.event_type)
            .with_offset(chunk * self.rows_per_chunk())
    }

    /// The rows of chunk `chunk`, cast to `schema` (the stream's columns).
    pub fn chunk(&self, chunk: u64, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut generator = self.generator(chunk);
        let limit = self.events.unwrap_or(u64::MAX);
        let mut events = Vec::with_capacity(self.rows_per_chunk() as usize);
        for _ in 0..self.rows_per_chunk() {
            if generator.global_offset() >= limit {
                break;
            }
            match generator.next() {
                Some(event) => events.push(event),
                None => break,
            }
        }
        let columns = columns(self.event_type, &events);
        let columns = columns
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| Ok(cast(column, field.data_type())?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
        if !self.shuffle || batch.num_rows() < 2 {
            return Ok(batch);
        }
        let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(chunk));
        Ok(take_record_batch(
            &batch,
            &datafusion::arrow::array::UInt32Array::from(order),
        )?)
    }
}

fn micros(ms: u64) -> i64 {
    (ms as i64).saturating_mul(1000)
}

/// The events' columns, in the order of [`NexmarkSource::columns_sql`] (all of one type).
fn columns(event_type: EventType, events: &[Event]) -> Vec<ArrayRef> {
    fn int<T>(rows: &[&T], f: impl Fn(&T) -> usize) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| f(r) as i64),
        ))
    }
    fn text<T>(rows: &[&T], f: impl Fn(&T) -> &str) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
    }
    fn time<T>(rows: &[&T], f: impl Fn(&T) -> u64) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter_values(
            rows.iter().map(|r| micros(f(r))),
        ))
    }
    let people: Vec<&Person> = events
        .iter()
        .filter_map(|e| match e {
            Event::Person(p) => Some(p),
            _ => None,
        })
        .collect();
    let auctions: Vec<&Auction> = events
        .iter()
        .filter_map(|e| match e {
            Event::Auction(a) => Some(a),
            _ => None,
        })
        .collect();
    let bids: Vec<&Bid> = events
        .iter()
        .filter_map(|e| match e {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect();
    match event_type {
        EventType::Person => vec![
            int(&people, |p| p.id),
            text(&people, |p| &p.name),
            text(&people, |p| &p.email_address),
            text(&people, |p| &p.credit_card),
            text(&people, |p| &p.city),
            text(&people, |p| &p.state),
            time(&people, |p| p.date_time),
            text(&people, |p| &p.extra),
        ],
        EventType::Auction => vec![
            int(&auctions, |a| a.id),
            text(&auctions, |a| &a.item_name),
            text(&auctions, |a| &a.description),
            int(&auctions, |a| a.initial_bid),
            int(&auctions, |a| a.reserve),
            time(&auctions, |a| a.date_time),
            time(&auctions, |a| a.expires),
            int(&auctions, |a| a.seller),
            int(&auctions, |a| a.category),
            text(&auctions, |a| &a.extra),
        ],
        EventType::Bid => vec![
            int(&bids, |b| b.auction),
            int(&bids, |b| b.bidder),
            int(&bids, |b| b.price),
            text(&bids, |b| &b.channel),
            text(&bids, |b| &b.url),
            time(&bids, |b| b.date_time),
            text(&bids, |b| &b.extra),
        ],
    }
}
