//! Joins over change batches.
//!
//! [`Join`] is a symmetric hash join: both inputs' rows are kept, indexed by the equi-join key.
//! A change on one side is joined with the other side's current rows (the delta rule
//! `Δ(L⋈R) = ΔL⋈R + L⋈ΔR`, applied one side at a time), the residual ON condition filters the
//! pairs, and the changed side's state is updated. Outer sides keep, per row, how many partners
//! it has, so the NULL-padded row is retracted when a first partner arrives and restored when
//! the last goes. This one operator serves stream-table joins (a table change updates the view),
//! joins between views, and stream-stream joins.
//!
//! Semi and anti joins (`EXISTS`, `NOT EXISTS`, `IN`, and inner joins the optimizer proves to
//! be semi joins) are the same bookkeeping with another output: the preserved side counts its
//! partners like an outer side, a semi join emits a row while it has at least one, an anti join
//! (the outer join's padded row without the NULLs) while it has none.
//!
//! State is freed by event time where the query bounds it: for an interval join
//! (`a.ts BETWEEN b.ts - X AND b.ts + Y`) a stored row is dropped once the other side's
//! watermark is past the last time a partner could have; for a window join once the other
//! side's watermark passes the window's end.
//!
//! [`TemporalJoin`] (`JOIN t FOR SYSTEM_TIME AS OF s.ts`) joins each stream row with the table
//! row that was current at the row's event time and never revisits it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter};
use datafusion::physical_expr::PhysicalExpr;

use super::operators::{
    evaluate_mask, key_rows, keys_converter, micros, rows_batch, rows_converter,
};
use super::state::{StateReader, StateWriter};
use super::{ChangeBatch, Operator};
use crate::error::Result;

/// When a stored row of one side can no longer find partners: once the other side's watermark
/// exceeds `time + bound`, with `time` read from `column` of the stored row.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    pub column: usize,
    pub bound: i64,
}

#[derive(Debug)]
struct Stored {
    row: OwnedRow,
    count: i64,
    /// Partners passing the ON condition (outer sides).
    matches: i64,
    expires: Option<i64>,
}

#[derive(Debug)]
struct Side {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_converter: RowConverter,
    rows: RowConverter,
    schema: SchemaRef,
    /// Rows by key; rows with a NULL key (never matched, kept for outer padding) under None.
    state: HashMap<Option<OwnedRow>, Vec<Stored>>,
    /// NULL-pad unmatched rows of this side.
    outer: bool,
    expiry: Option<Expiry>,
    /// Expiry time -> keys holding rows that expire then.
    expiring: BTreeMap<i64, Vec<Option<OwnedRow>>>,
    bytes: usize,
}

impl Side {
    fn new(
        keys: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
        outer: bool,
        expiry: Option<Expiry>,
    ) -> Result<Side> {
        Ok(Side {
            key_converter: keys_converter(&keys, &schema)?,
            rows: rows_converter(&schema)?,
            keys,
            schema,
            state: HashMap::new(),
            outer,
            expiry,
            expiring: BTreeMap::new(),
            bytes: 0,
        })
    }

    /// Write the stored rows by key, with their counts, partner counts and expiry times.
    fn snapshot(&self, w: &mut StateWriter) {
        w.u64(self.state.len() as u64);
        for (key, list) in &self.state {
            w.opt_row(key.as_ref());
            w.u64(list.len() as u64);
            for stored in list {
                w.row(&stored.row);
                w.i64(stored.count);
                w.i64(stored.matches);
                w.opt_i64(stored.expires);
            }
        }
    }

    /// Replace the state with what [`Side::snapshot`] wrote.
    fn restore(&mut self, r: &mut StateReader<'_>) -> Result<()> {
        self.state.clear();
        self.expiring.clear();
        self.bytes = 0;
        for _ in 0..r.usize()? {
            let key = if r.bool()? {
                Some(r.key(&self.key_converter, self.keys.is_empty())?)
            } else {
                None
            };
            let mut list = Vec::new();
            for _ in 0..r.usize()? {
                let row = r.row(&self.rows)?;
                let stored = Stored {
                    count: r.i64()?,
                    matches: r.i64()?,
                    expires: r.opt_i64()?,
                    row,
                };
                self.bytes += stored.row.as_ref().len();
                if let Some(at) = stored.expires {
                    self.expiring.entry(at).or_default().push(key.clone());
                }
                list.push(stored);
            }
            self.state.insert(key, list);
        }
        Ok(())
    }

    /// Key rows of a batch; None for rows with a NULL key (they never match).
    fn key_rows(&self, rows: &RecordBatch) -> Result<Vec<Option<OwnedRow>>> {
        let n = rows.num_rows();
        let columns = self
            .keys
            .iter()
            .map(|e| Ok(e.evaluate(rows)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = key_rows(&self.key_converter, &columns, n)?;
        Ok(keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| (!columns.iter().any(|c| c.is_null(i))).then_some(key))
            .collect())
    }
}

/// What a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinMode {
    /// Matching pairs, plus NULL-padded rows of outer sides.
    Pairs,
    /// Rows of this side (0 left, 1 right) that have a partner.
    Semi(usize),
    /// Rows of this side that have no partner.
    Anti(usize),
}

#[derive(Debug)]
pub struct Join {
    sides: [Side; 2],
    /// The ON residual, over `pairs`.
    filter: Option<Arc<dyn PhysicalExpr>>,
    mode: JoinMode,
    /// Left columns then right columns.
    pairs: SchemaRef,
    /// What the join emits: `pairs`, or one side's columns for semi and anti joins.
    schema: SchemaRef,
}

impl Join {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
        left_schema: SchemaRef,
        right_schema: SchemaRef,
        filter: Option<Arc<dyn PhysicalExpr>>,
        mode: JoinMode,
        outer: [bool; 2],
        expiry: [Option<Expiry>; 2],
        pairs: SchemaRef,
        schema: SchemaRef,
    ) -> Result<Join> {
        // The preserved side of a semi or anti join counts its partners as an outer side does.
        let outer = match mode {
            JoinMode::Pairs => outer,
            JoinMode::Semi(side) | JoinMode::Anti(side) => [side == 0, side == 1],
        };
        Ok(Join {
            sides: [
                Side::new(left_keys, left_schema, outer[0], expiry[0])?,
                Side::new(right_keys, right_schema, outer[1], expiry[1])?,
            ],
            filter,
            mode,
            pairs,
            schema,
        })
    }

    /// Build pairs from (side-0 columns, side-1 columns).
    fn output(&self, left: Vec<ArrayRef>, right: Vec<ArrayRef>) -> Result<RecordBatch> {
        let mut columns = left;
        columns.extend(right);
        rows_batch(
            &self.pairs,
            super::operators::cast_columns(columns, &self.pairs)?,
        )
    }

    /// The row a partnerless row of `side` stands for: NULL-padded (outer joins), or its own
    /// columns (semi and anti joins).
    fn padded(&self, side: usize, rows: &[OwnedRow]) -> Result<RecordBatch> {
        let own = self.sides[side]
            .rows
            .convert_rows(rows.iter().map(|r| r.row()))?;
        if self.mode != JoinMode::Pairs {
            return rows_batch(
                &self.schema,
                super::operators::cast_columns(own, &self.schema)?,
            );
        }
        let other = &self.sides[1 - side].schema;
        let nulls: Vec<ArrayRef> = other
            .fields()
            .iter()
            .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), rows.len()))
            .collect();
        if side == 0 {
            self.output(own, nulls)
        } else {
            self.output(nulls, own)
        }
    }
}

impl Operator for Join {
    fn describe(&self) -> String {
        let kind = match (self.mode, self.sides[0].outer, self.sides[1].outer) {
            (JoinMode::Semi(0), ..) => "LeftSemi",
            (JoinMode::Semi(_), ..) => "RightSemi",
            (JoinMode::Anti(0), ..) => "LeftAnti",
            (JoinMode::Anti(_), ..) => "RightAnti",
            (_, false, false) => "Inner",
            (_, true, false) => "Left",
            (_, false, true) => "Right",
            (_, true, true) => "Full",
        };
        let mut text = format!("Join: {kind}");
        if let Some(f) = &self.filter {
            text.push_str(&format!(" filter={f}"));
        }
        for (i, side) in self.sides.iter().enumerate() {
            if let Some(e) = side.expiry {
                text.push_str(&format!(" expire[{i}]=col{}+{}us", e.column, e.bound));
            }
        }
        text
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let this = input;
        let that = 1 - input;
        let n = batch.num_rows();
        let keys = self.sides[this].key_rows(&batch.rows)?;
        let rows = self.sides[this]
            .rows
            .convert_columns(batch.rows.columns())?;
        // Candidate pairs: (row of the batch, key, index in the other side's list).
        let mut probe_rows: Vec<u32> = Vec::new();
        let mut partner_refs: Vec<(Option<OwnedRow>, usize)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if key.is_none() {
                continue;
            }
            if let Some(list) = self.sides[that].state.get(key) {
                for (j, _) in list.iter().enumerate() {
                    probe_rows.push(i as u32);
                    partner_refs.push((key.clone(), j));
                }
            }
        }
        // Evaluate the ON residual over candidate pairs.
        let mut passing = vec![true; probe_rows.len()];
        let mut pair_batch = None;
        if !probe_rows.is_empty() {
            let indices = UInt32Array::from(probe_rows.clone());
            let mine: Vec<ArrayRef> = batch
                .rows
                .columns()
                .iter()
                .map(|c| Ok(take(c, &indices, None)?))
                .collect::<Result<_>>()?;
            let partner_rows: Vec<_> = partner_refs
                .iter()
                .map(|(k, j)| self.sides[that].state[k][*j].row.row())
                .collect();
            let theirs = self.sides[that].rows.convert_rows(partner_rows)?;
            let pairs = if this == 0 {
                self.output(mine, theirs)?
            } else {
                self.output(theirs, mine)?
            };
            if let Some(filter) = &self.filter {
                let mask = evaluate_mask(filter, &pairs)?;
                passing = (0..mask.len()).map(|i| mask.value(i)).collect();
            }
            pair_batch = Some(pairs);
        }
        // Output: joined pairs, and padded rows appearing or disappearing.
        let mut out_indices: Vec<u32> = Vec::new();
        let mut out_flags: Vec<bool> = Vec::new();
        let mut pad_this: Vec<(OwnedRow, bool)> = Vec::new();
        let mut pad_that: Vec<(OwnedRow, bool)> = Vec::new();
        let mut matches_of_row = vec![0i64; n];
        for (p, ((i, (key, j)), pass)) in probe_rows
            .iter()
            .zip(&partner_refs)
            .zip(&passing)
            .enumerate()
        {
            if !*pass {
                continue;
            }
            let delete = batch.is_delete(*i as usize);
            let sign = if delete { -1 } else { 1 };
            let that_outer = self.sides[that].outer;
            let partner = &mut self.sides[that]
                .state
                .get_mut(key)
                .expect("partner listed above")[*j];
            matches_of_row[*i as usize] += partner.count;
            if that_outer {
                // A stored row with count n stands for n rows, each with its own padding.
                let before = partner.matches;
                partner.matches += sign;
                let copies = partner.count.max(0) as usize;
                if before == 0 && partner.matches > 0 {
                    pad_that.extend(std::iter::repeat_n((partner.row.clone(), true), copies));
                } else if before > 0 && partner.matches == 0 {
                    pad_that.extend(std::iter::repeat_n((partner.row.clone(), false), copies));
                }
            }
            for _ in 0..partner.count {
                out_indices.push(p as u32);
                out_flags.push(delete);
            }
        }
        // Update this side's state.
        let expiry_times = match self.sides[this].expiry {
            Some(e) => Some(micros(batch.rows.column(e.column))?),
            None => None,
        };
        for i in 0..n {
            let delete = batch.is_delete(i);
            let key = keys[i].clone();
            let row = rows.row(i).owned();
            let side = &mut self.sides[this];
            let list = side.state.entry(key.clone()).or_default();
            let matches = if keys[i].is_some() {
                matches_of_row[i]
            } else {
                0
            };
            // Outer and anti joins stand for a partnerless row, semi joins for a matched one.
            if side.outer && (matches > 0) == (self.mode == JoinMode::Semi(this)) {
                pad_this.push((row.clone(), delete));
            }
            if delete {
                if let Some(pos) = list.iter().position(|s| s.row == row) {
                    list[pos].count -= 1;
                    if list[pos].count == 0 {
                        side.bytes -= list[pos].row.as_ref().len();
                        list.remove(pos);
                    }
                }
                if list.is_empty() {
                    side.state.remove(&key);
                }
            } else {
                let expires = match (&expiry_times, side.expiry) {
                    (Some(times), Some(e)) if times.is_valid(i) => {
                        Some(times.value(i).saturating_add(e.bound))
                    }
                    _ => None,
                };
                if let Some(existing) = list.iter_mut().find(|s| s.row == row) {
                    existing.count += 1;
                } else {
                    side.bytes += row.as_ref().len();
                    list.push(Stored {
                        row,
                        count: 1,
                        matches,
                        expires,
                    });
                    if let Some(at) = expires {
                        side.expiring.entry(at).or_default().push(key);
                    }
                }
            }
        }
        let mut out = Vec::new();
        // Padded rows of the other side go before the pairs that replace them. A semi join
        // emits the other side's row at its first partner and retracts it after its last.
        let semi = matches!(self.mode, JoinMode::Semi(_));
        let (removed_pads, added_pads): (Vec<_>, Vec<_>) = pad_that
            .into_iter()
            .partition(|(_, first_match)| *first_match != semi);
        if !removed_pads.is_empty() {
            let rows: Vec<OwnedRow> = removed_pads.into_iter().map(|(r, _)| r).collect();
            out.push(ChangeBatch::retractions(self.padded(that, &rows)?));
        }
        if let Some(pairs) = pair_batch
            && !out_indices.is_empty()
            && self.mode == JoinMode::Pairs
        {
            let taken = datafusion::arrow::compute::take_record_batch(
                &pairs,
                &UInt32Array::from(out_indices),
            )?;
            out.push(ChangeBatch::from_flags(taken, out_flags));
        }
        if !added_pads.is_empty() {
            let rows: Vec<OwnedRow> = added_pads.into_iter().map(|(r, _)| r).collect();
            out.push(ChangeBatch::inserts(self.padded(that, &rows)?));
        }
        if !pad_this.is_empty() {
            let flags: Vec<bool> = pad_this.iter().map(|(_, d)| *d).collect();
            let rows: Vec<OwnedRow> = pad_this.into_iter().map(|(r, _)| r).collect();
            out.push(ChangeBatch::from_flags(self.padded(this, &rows)?, flags));
        }
        Ok(out)
    }

    fn on_watermark(&mut self, inputs: &[Option<i64>], _combined: i64) -> Result<Vec<ChangeBatch>> {
        for side in 0..2 {
            let Some(other_watermark) = inputs.get(1 - side).copied().flatten() else {
                continue;
            };
            let side = &mut self.sides[side];
            while let Some(entry) = side.expiring.first_entry() {
                if *entry.key() >= other_watermark {
                    break;
                }
                let at = *entry.key();
                for key in entry.remove() {
                    if let Some(list) = side.state.get_mut(&key) {
                        let mut freed = 0;
                        list.retain(|s| {
                            let keep = s.expires != Some(at);
                            if !keep {
                                freed += s.row.as_ref().len();
                            }
                            keep
                        });
                        side.bytes -= freed;
                        if list.is_empty() {
                            side.state.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(Vec::new())
    }

    fn state_bytes(&self) -> usize {
        self.sides.iter().map(|s| s.bytes).sum()
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("join");
        for side in &self.sides {
            side.snapshot(&mut w);
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "join")?;
        for side in &mut self.sides {
            side.restore(&mut r)?;
        }
        r.finish()
    }
}

/// `stream JOIN table FOR SYSTEM_TIME AS OF stream.ts`: each stream row (input 0) joined with
/// the table row (input 1) valid at its event time. Table versions are valid from their
/// change's commit time (the contents when the view started are valid from the beginning);
/// versions older than the stream's watermark, other than the latest, are freed.
#[derive(Debug)]
pub struct TemporalJoin {
    stream_keys: Vec<Arc<dyn PhysicalExpr>>,
    table: Side,
    /// Event-time column of the stream side.
    time_column: usize,
    filter: Option<Arc<dyn PhysicalExpr>>,
    outer: bool,
    schema: SchemaRef,
    stream_key_converter: RowConverter,
    /// Key -> versions (valid from, row or None for deleted), oldest first.
    versions: HashMap<OwnedRow, Vec<(i64, Option<OwnedRow>)>>,
    /// Whether the table's initial contents have arrived.
    seen_initial: bool,
    bytes: usize,
}

impl TemporalJoin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream_keys: Vec<Arc<dyn PhysicalExpr>>,
        table_keys: Vec<Arc<dyn PhysicalExpr>>,
        stream_schema: SchemaRef,
        table_schema: SchemaRef,
        time_column: usize,
        filter: Option<Arc<dyn PhysicalExpr>>,
        outer: bool,
        schema: SchemaRef,
    ) -> Result<TemporalJoin> {
        let stream_key_converter = keys_converter(&stream_keys, &stream_schema)?;
        Ok(TemporalJoin {
            stream_keys,
            table: Side::new(table_keys, table_schema, false, None)?,
            time_column,
            filter,
            outer,
            schema,
            stream_key_converter,
            versions: HashMap::new(),
            seen_initial: false,
            bytes: 0,
        })
    }
}

impl Operator for TemporalJoin {
    fn describe(&self) -> String {
        format!(
            "TemporalJoin: {} FOR SYSTEM_TIME AS OF column {}",
            if self.outer { "Left" } else { "Inner" },
            self.time_column
        )
    }

    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        if input == 1 {
            let committed = batch
                .rows
                .schema()
                .metadata()
                .get(crate::storage::table::COMMITTED_AT)
                .and_then(|t| t.parse::<i64>().ok());
            let valid_from = if self.seen_initial {
                committed.unwrap_or_else(|| Utc::now().timestamp_micros())
            } else {
                i64::MIN
            };
            self.seen_initial = true;
            let keys = self.table.key_rows(&batch.rows)?;
            let rows = self.table.rows.convert_columns(batch.rows.columns())?;
            for (i, key) in keys.into_iter().enumerate() {
                let Some(key) = key else { continue };
                let versions = self.versions.entry(key).or_default();
                let row = (!batch.is_delete(i)).then(|| rows.row(i).owned());
                if let Some(r) = &row {
                    self.bytes += r.as_ref().len();
                }
                match versions.last_mut() {
                    // Within one change, the last word for a key wins.
                    Some(last) if last.0 == valid_from => {
                        if let Some(old) = last.1.take() {
                            self.bytes -= old.as_ref().len();
                        }
                        last.1 = row;
                    }
                    _ => versions.push((valid_from, row)),
                }
            }
            return Ok(Vec::new());
        }
        let n = batch.num_rows();
        let key_columns = self
            .stream_keys
            .iter()
            .map(|e| Ok(e.evaluate(&batch.rows)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = key_rows(&self.stream_key_converter, &key_columns, n)?;
        let times = micros(batch.rows.column(self.time_column))?;
        let mut stream_rows = Vec::new();
        let mut table_rows: Vec<Option<OwnedRow>> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let version = if key_columns.iter().any(|c| c.is_null(i)) || !times.is_valid(i) {
                None
            } else {
                let at = times.value(i);
                self.versions.get(key).and_then(|versions| {
                    versions
                        .iter()
                        .rev()
                        .find(|(from, _)| *from <= at)
                        .and_then(|(_, row)| row.clone())
                })
            };
            if version.is_some() || self.outer {
                stream_rows.push(i as u32);
                table_rows.push(version);
            }
        }
        if stream_rows.is_empty() {
            return Ok(Vec::new());
        }
        let taken = batch.take(&UInt32Array::from(stream_rows))?;
        // Table columns: matched rows converted, NULLs where unmatched (outer).
        let present: Vec<OwnedRow> = table_rows.iter().flatten().cloned().collect();
        let converted = self
            .table
            .rows
            .convert_rows(present.iter().map(|r| r.row()))?;
        let mut positions = Vec::with_capacity(table_rows.len());
        let mut next = 0u32;
        for row in &table_rows {
            positions.push(row.as_ref().map(|_| {
                next += 1;
                next - 1
            }));
        }
        let index = UInt32Array::from(positions);
        let table_columns = converted
            .iter()
            .map(|c| Ok(take(c, &index, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let mut columns = taken.rows.columns().to_vec();
        columns.extend(table_columns);
        let rows = rows_batch(
            &self.schema,
            super::operators::cast_columns(columns, &self.schema)?,
        )?;
        let mut result = taken.with_rows(rows);
        if let Some(filter) = &self.filter {
            let mask = evaluate_mask(filter, &result.rows)?;
            result = result.filter(&mask)?;
        }
        Ok(vec![result])
    }

    fn on_watermark(&mut self, inputs: &[Option<i64>], _combined: i64) -> Result<Vec<ChangeBatch>> {
        let Some(watermark) = inputs.first().copied().flatten() else {
            return Ok(Vec::new());
        };
        for versions in self.versions.values_mut() {
            // Keep the latest version valid at the watermark and everything after it.
            let keep_from = versions
                .iter()
                .rposition(|(from, _)| *from <= watermark)
                .unwrap_or(0);
            for (_, row) in versions.drain(..keep_from) {
                if let Some(r) = row {
                    self.bytes -= r.as_ref().len();
                }
            }
        }
        Ok(Vec::new())
    }

    fn state_bytes(&self) -> usize {
        self.bytes
    }

    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        let mut w = StateWriter::new("temporal_join");
        w.bool(self.seen_initial);
        w.u64(self.versions.len() as u64);
        for (key, versions) in &self.versions {
            w.row(key);
            w.u64(versions.len() as u64);
            for (valid_from, row) in versions {
                w.i64(*valid_from);
                w.opt_row(row.as_ref());
            }
        }
        Ok(Some(w.finish()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state, "temporal_join")?;
        self.seen_initial = r.bool()?;
        self.versions.clear();
        self.bytes = 0;
        for _ in 0..r.usize()? {
            let key = r.key(&self.table.key_converter, self.table.keys.is_empty())?;
            let mut versions = Vec::new();
            for _ in 0..r.usize()? {
                let valid_from = r.i64()?;
                let row = r.opt_row(&self.table.rows)?;
                if let Some(row) = &row {
                    self.bytes += row.as_ref().len();
                }
                versions.push((valid_from, row));
            }
            self.versions.insert(key, versions);
        }
        r.finish()
    }
}
