//! Continuous SQL: materialized views kept up to date incrementally.
//!
//! A view's query is planned by DataFusion as usual; [`plan`] then compiles the optimized
//! `LogicalPlan` into a [`Dataflow`]: a tree of [`Operator`]s whose leaves are sources (a stream's
//! durable appends, a table's changes, another view's changes) and whose root feeds the view's
//! stored result ([`view`]). Everything between moves [`ChangeBatch`]es: an Arrow `RecordBatch`
//! plus a per-row flag saying whether the row is added or retracted, so operators compose (a join
//! under an aggregate, a view over a view) and results stay exact when tables change.
//!
//! ```text
//!  stream appends ─┐                                       ┌─► view rows (SELECT, snapshot)
//!  table changes ──┼─► source ─► filter/project ─► ... ─► root ─► change history ─► SUBSCRIBE
//!  view changes ───┘     │ watermark, late rows           (aggregate, join, top-N, window close)
//! ```
//!
//! Event time: each stream source computes its watermark from the stream's `WATERMARK FOR`
//! expression (the running maximum over rows in log order) and, under window table functions
//! and interval joins, leaves out rows behind it ("late rows", recorded per view). Watermarks
//! flow up the tree; a node's watermark is the minimum over its inputs that have one. Windowed
//! aggregates and joins free state behind the watermark, and `EMIT ON WINDOW CLOSE` releases
//! each window's rows once when the watermark passes its end.
//!
//! Checkpoints ([`checkpoint`], driven by [`runtime`]) are consistent cuts: the runtime takes
//! one between two input batches (a view's task processes one batch at a time, so the dataflow
//! is then quiescent and no barrier has to be aligned inside it), records each stream feed's
//! position (the last log record delivered) and the rows applied from each table or view feed,
//! and asks every node for [`Operator::snapshot`]: bytes that [`Operator::restore`] turns back
//! into the same state (groups and accumulator states, join rows with their counts, pending
//! windows, top-N rows, OVER tails, source watermarks), plus the view's rows and logical time.
//! Recovery restores every node, replays each stream after its position and sends each table
//! or view feed's difference to what was applied; a view without a usable checkpoint is
//! rebuilt from the stored history.

pub mod aggregate;
pub mod checkpoint;
pub mod join;
pub mod operators;
pub mod over;
pub mod plan;
pub mod runtime;
pub mod session;
pub mod state;
pub mod subscribe;
pub mod view;
pub mod windows;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat, concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};

/// Rows added to or retracted from a relation: the unit every operator consumes and produces.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub rows: RecordBatch,
    /// Per row, true where the row is retracted; None when every row is added.
    pub deletes: Option<BooleanArray>,
}

impl ChangeBatch {
    /// Rows added.
    pub fn inserts(rows: RecordBatch) -> ChangeBatch {
        ChangeBatch {
            rows,
            deletes: None,
        }
    }

    /// Rows retracted.
    pub fn retractions(rows: RecordBatch) -> ChangeBatch {
        let deletes = BooleanArray::from(vec![true; rows.num_rows()]);
        ChangeBatch {
            rows,
            deletes: Some(deletes),
        }
    }

    /// What turns `before` into `after` (both the same schema): the rows `after` lacks
    /// retracted, the rows it has beyond `before` added, counted as multisets.
    pub fn difference(before: &RecordBatch, after: &RecordBatch) -> Result<ChangeBatch> {
        let converter = operators::rows_converter(&before.schema())?;
        let old = converter.convert_columns(before.columns())?;
        let new = converter.convert_columns(after.columns())?;
        let mut counts: std::collections::HashMap<&[u8], i64> = std::collections::HashMap::new();
        for row in old.iter() {
            *counts.entry(row.data()).or_insert(0) -= 1;
        }
        for row in new.iter() {
            *counts.entry(row.data()).or_insert(0) += 1;
        }
        // Each surplus is taken from the first rows that carry it.
        let mut surplus = |rows: &datafusion::arrow::row::Rows, sign: i64| -> UInt32Array {
            let mut picked = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if let Some(c) = counts.get_mut(row.data())
                    && *c * sign > 0
                {
                    *c -= sign;
                    picked.push(i as u32);
                }
            }
            UInt32Array::from(picked)
        };
        let removed = take_record_batch(before, &surplus(&old, -1))?;
        let added = take_record_batch(after, &surplus(&new, 1))?;
        let added = RecordBatch::try_new(before.schema(), added.columns().to_vec())?;
        let flags: Vec<bool> = std::iter::repeat_n(true, removed.num_rows())
            .chain(std::iter::repeat_n(false, added.num_rows()))
            .collect();
        let rows = concat_batches(&before.schema(), [&removed, &added])?;
        Ok(ChangeBatch::from_flags(rows, flags))
    }

    /// Build from rows and one retraction flag per row.
    pub fn from_flags(rows: RecordBatch, flags: Vec<bool>) -> ChangeBatch {
        let deletes = flags.iter().any(|d| *d).then(|| BooleanArray::from(flags));
        ChangeBatch { rows, deletes }
    }

    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    pub fn is_delete(&self, row: usize) -> bool {
        self.deletes.as_ref().is_some_and(|d| d.value(row))
    }

    pub fn has_deletes(&self) -> bool {
        self.deletes.as_ref().is_some_and(|d| d.true_count() > 0)
    }

    /// The same change flags over other columns (a projection's output).
    pub fn with_rows(&self, rows: RecordBatch) -> ChangeBatch {
        ChangeBatch {
            rows,
            deletes: self.deletes.clone(),
        }
    }

    /// The rows where `mask` is true.
    pub fn filter(&self, mask: &BooleanArray) -> Result<ChangeBatch> {
        Ok(ChangeBatch {
            rows: filter_record_batch(&self.rows, mask)?,
            deletes: match &self.deletes {
                Some(d) => Some(
                    datafusion::arrow::compute::filter(d, mask)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .ok_or_else(|| Error::Internal("filtered flags".into()))?,
                ),
                None => None,
            },
        })
    }

    /// The rows at `indices`, in that order.
    pub fn take(&self, indices: &UInt32Array) -> Result<ChangeBatch> {
        Ok(ChangeBatch {
            rows: take_record_batch(&self.rows, indices)?,
            deletes: match &self.deletes {
                Some(d) => Some(
                    datafusion::arrow::compute::take(d, indices, None)?
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .cloned()
                        .ok_or_else(|| Error::Internal("taken flags".into()))?,
                ),
                None => None,
            },
        })
    }

    /// One batch of several, in order.
    pub fn concat(schema: &SchemaRef, batches: &[ChangeBatch]) -> Result<ChangeBatch> {
        let rows = concat_batches(schema, batches.iter().map(|b| &b.rows))?;
        if !batches.iter().any(ChangeBatch::has_deletes) {
            return Ok(ChangeBatch::inserts(rows));
        }
        let flags: Vec<ArrayRef> = batches
            .iter()
            .map(|b| -> ArrayRef {
                Arc::new(
                    b.deletes
                        .clone()
                        .unwrap_or_else(|| BooleanArray::from(vec![false; b.num_rows()])),
                )
            })
            .collect();
        let refs: Vec<&dyn Array> = flags.iter().map(|a| a.as_ref()).collect();
        let deletes = concat(&refs)?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned();
        Ok(ChangeBatch { rows, deletes })
    }
}

/// One step of a dataflow. `process` is required; the rest have defaults for stateless steps.
pub trait Operator: Send + std::fmt::Debug {
    /// How EXPLAIN shows this step.
    fn describe(&self) -> String;

    /// Consume a change batch from input `input`; return the changes to pass on.
    fn process(&mut self, input: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>>;

    /// Changes to emit once, before any input (an aggregate without GROUP BY has a row even
    /// over no input).
    fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// An input's watermark advanced (`inputs` holds every input's, `combined` the minimum over
    /// inputs that have one). Return changes this releases (closed windows).
    fn on_watermark(
        &mut self,
        _inputs: &[Option<i64>],
        _combined: i64,
    ) -> Result<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// For sources: leave out rows behind the watermark from now on (the plan found an
    /// operator above that relies on event-time order).
    fn order_by_event_time(&mut self) {}

    /// For sources: the watermark after the last batch (microseconds since the epoch).
    fn watermark(&self) -> Option<i64> {
        None
    }

    /// Bytes of state held (group accumulators, join rows, buffered windows).
    fn state_bytes(&self) -> usize {
        0
    }

    /// Serialize the state at a checkpoint. None: the operator holds no state.
    fn snapshot(&mut self) -> Result<Option<Vec<u8>>> {
        if self.state_bytes() == 0 {
            return Ok(None);
        }
        Err(Error::Unsupported(format!(
            "checkpointing the state of {}",
            self.describe()
        )))
    }

    /// Load the state a `snapshot` produced.
    fn restore(&mut self, _state: &[u8]) -> Result<()> {
        Err(Error::Unsupported(format!(
            "restoring the state of {}",
            self.describe()
        )))
    }
}

/// One node of a dataflow tree.
#[derive(Debug)]
struct Node {
    op: Box<dyn Operator>,
    /// The node this one feeds, and which of its inputs it is.
    parent: Option<(usize, usize)>,
    children: Vec<usize>,
    /// Latest watermark per input.
    input_watermarks: Vec<Option<i64>>,
    /// Whether each input will ever carry a watermark (tables and streams without one do not).
    input_timed: Vec<bool>,
    watermark: Option<i64>,
}

/// A compiled view query: operators in a tree, sources at the leaves.
#[derive(Debug)]
pub struct Dataflow {
    nodes: Vec<Node>,
    root: usize,
    /// Leaf node of each source, in source order.
    sources: Vec<usize>,
}

/// Builds a [`Dataflow`] bottom-up.
#[derive(Debug, Default)]
pub struct DataflowBuilder {
    nodes: Vec<Node>,
    sources: Vec<usize>,
    timed: Vec<bool>,
}

impl DataflowBuilder {
    /// Add a source leaf; returns its node id.
    pub fn source(&mut self, op: Box<dyn Operator>, timed: bool) -> usize {
        let id = self.node(op, Vec::new());
        self.timed[id] = timed;
        self.sources.push(id);
        id
    }

    /// Add an operator over `children` (in input order); returns its node id.
    pub fn node(&mut self, op: Box<dyn Operator>, children: Vec<usize>) -> usize {
        let id = self.nodes.len();
        let input_timed: Vec<bool> = children.iter().map(|c| self.timed[*c]).collect();
        for (input, child) in children.iter().enumerate() {
            self.nodes[*child].parent = Some((id, input));
        }
        self.timed.push(input_timed.iter().any(|t| *t));
        self.nodes.push(Node {
            op,
            parent: None,
            input_watermarks: vec![None; children.len()],
            input_timed,
            children,
            watermark: None,
        });
        id
    }

    /// Make every source under `id` leave out late rows.
    pub fn order_by_event_time(&mut self, id: usize) {
        self.nodes[id].op.order_by_event_time();
        for child in self.nodes[id].children.clone() {
            self.order_by_event_time(child);
        }
    }

    pub fn build(self, root: usize) -> Dataflow {
        Dataflow {
            nodes: self.nodes,
            root,
            sources: self.sources,
        }
    }
}

impl Dataflow {
    /// Every node's state and watermarks, for a checkpoint. Each node's description goes
    /// with it, so a snapshot is only restored into the same plan.
    pub fn snapshot(&mut self) -> Result<Vec<u8>> {
        let mut w = state::StateWriter::new("dataflow");
        w.u64(self.nodes.len() as u64);
        for node in &mut self.nodes {
            w.bytes(node.op.describe().as_bytes());
            w.opt_i64(node.watermark);
            w.u64(node.input_watermarks.len() as u64);
            for watermark in &node.input_watermarks {
                w.opt_i64(*watermark);
            }
            match node.op.snapshot()? {
                Some(state) => {
                    w.bool(true);
                    w.bytes(&state);
                }
                None => w.bool(false),
            }
        }
        Ok(w.finish())
    }

    /// Load a [`Dataflow::snapshot`] of the same plan (instead of running `start`).
    pub fn restore(&mut self, state: &[u8]) -> Result<()> {
        let other_plan = || Error::Storage("checkpoint of a different streaming plan".to_string());
        let mut r = state::StateReader::new(state, "dataflow")?;
        if r.usize()? != self.nodes.len() {
            return Err(other_plan());
        }
        for node in &mut self.nodes {
            if r.bytes()? != node.op.describe().as_bytes() {
                return Err(other_plan());
            }
            node.watermark = r.opt_i64()?;
            if r.usize()? != node.input_watermarks.len() {
                return Err(other_plan());
            }
            for watermark in &mut node.input_watermarks {
                *watermark = r.opt_i64()?;
            }
            if r.bool()? {
                node.op.restore(r.bytes()?)?;
            }
        }
        r.finish()
    }

    /// Run every operator's `start`, returning the root's initial changes.
    pub fn start(&mut self) -> Result<Vec<ChangeBatch>> {
        let mut out = Vec::new();
        for id in 0..self.nodes.len() {
            let initial = self.nodes[id].op.start()?;
            self.push(id, initial, &mut out)?;
        }
        Ok(out)
    }

    /// Feed one batch into source `source`; returns the root's changes.
    pub fn on_source(&mut self, source: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let leaf = self.sources[source];
        let mut out = Vec::new();
        let produced = self.nodes[leaf].op.process(0, batch)?;
        self.push(leaf, produced, &mut out)?;
        if let Some(watermark) = self.nodes[leaf].op.watermark()
            && self.nodes[leaf].watermark < Some(watermark)
        {
            self.nodes[leaf].watermark = Some(watermark);
            self.advance(leaf, watermark, &mut out)?;
        }
        Ok(out)
    }

    fn push(
        &mut self,
        from: usize,
        batches: Vec<ChangeBatch>,
        out: &mut Vec<ChangeBatch>,
    ) -> Result<()> {
        let Some((parent, input)) = self.nodes[from].parent else {
            out.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
            return Ok(());
        };
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let produced = self.nodes[parent].op.process(input, batch)?;
            self.push(parent, produced, out)?;
        }
        Ok(())
    }

    /// `from`'s watermark is now `watermark`: tell its parent, and onwards while it advances.
    fn advance(&mut self, from: usize, watermark: i64, out: &mut Vec<ChangeBatch>) -> Result<()> {
        let Some((parent, input)) = self.nodes[from].parent else {
            return Ok(());
        };
        let node = &mut self.nodes[parent];
        if node.input_watermarks[input] >= Some(watermark) {
            return Ok(());
        }
        node.input_watermarks[input] = Some(watermark);
        let combined = node
            .input_watermarks
            .iter()
            .zip(&node.input_timed)
            .filter(|(_, timed)| **timed)
            .map(|(w, _)| w.unwrap_or(i64::MIN))
            .min()
            .unwrap_or(i64::MIN);
        let inputs = node.input_watermarks.clone();
        let released = node.op.on_watermark(&inputs, combined)?;
        self.push(parent, released, out)?;
        if combined > i64::MIN && self.nodes[parent].watermark < Some(combined) {
            self.nodes[parent].watermark = Some(combined);
            self.advance(parent, combined, out)?;
        }
        Ok(())
    }

    /// The root's watermark (the view's event-time progress).
    pub fn watermark(&self) -> Option<i64> {
        self.nodes[self.root].watermark
    }

    /// Bytes of operator state across the dataflow.
    pub fn state_bytes(&self) -> usize {
        self.nodes.iter().map(|n| n.op.state_bytes()).sum()
    }

    /// The operator tree, root first, indented by depth (EXPLAIN).
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        self.describe_node(self.root, 0, &mut lines);
        lines
    }

    fn describe_node(&self, id: usize, depth: usize, lines: &mut Vec<String>) {
        lines.push(format!(
            "{}{}",
            "  ".repeat(depth),
            self.nodes[id].op.describe()
        ));
        for child in &self.nodes[id].children {
            self.describe_node(*child, depth + 1, lines);
        }
    }
}
