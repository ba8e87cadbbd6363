//! From a view's optimized `LogicalPlan` to a [`Dataflow`].
//!
//! The plan is walked top-down and compiled bottom-up. Each compiled node reports its output
//! schema, whether it can retract rows, and the event-time role of each column (a window's start
//! or end, a stream's event time), which is how aggregates find their window and joins find the
//! time bounds that let them free state. What cannot be maintained incrementally is refused
//! here with the reason (SQLSTATE 0A000), never accepted and computed wrongly.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::SortField;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, JoinType, NullEquality};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate as LogicalAggregate, BinaryExpr, Distinct, Expr, LogicalPlan, Operator as BinOp,
    TableScan,
};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::scalar::ScalarValue;

use super::aggregate::{Aggregate, AggregateSpec};
use super::join::{Expiry, Join, JoinMode, TemporalJoin};
use super::operators::{
    EventTime, Filter, HopExpand, LateRows, Project, Source, TopN, Union, WindowClose, WindowEnd,
};
use super::over::{OverFunction, OverWindow};
use super::session::SessionWindow;
use super::view::{View, ViewTable};
use super::windows::{TemporalTable, WindowKind, WindowedTable};
use super::{Dataflow, DataflowBuilder, Operator};
use crate::error::{Error, Result};
use crate::storage::{Relation, StreamStore, TableStore};

/// What a source reads.
#[derive(Debug, Clone)]
pub enum Feed {
    Stream(Arc<StreamStore>),
    Table(Arc<TableStore>),
    View(Arc<View>),
}

impl Feed {
    /// `schema.name` of what the feed reads.
    pub fn qualified_name(&self) -> String {
        match self {
            Feed::Stream(s) => {
                let def = s.def();
                format!("{}.{}", def.schema_name, def.name)
            }
            Feed::Table(t) => {
                let def = t.def();
                format!("{}.{}", def.schema_name, def.name)
            }
            Feed::View(v) => format!("{}.{}", v.def.schema_name, v.def.name),
        }
    }
}

/// A compiled view.
#[derive(Debug)]
pub struct Compiled {
    pub dataflow: Dataflow,
    /// One per dataflow source, in source order.
    pub feeds: Vec<Feed>,
    pub schema: SchemaRef,
    /// Models the view applies, `schema.name` (set by the planner, which sees the SQL).
    pub models: Vec<String>,
}

/// Event-time meaning of a column.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    EventTime,
    WindowStart(i64),
    WindowEnd,
}

#[derive(Debug)]
struct Out {
    node: usize,
    schema: DFSchemaRef,
    roles: Vec<Option<Role>>,
    retracting: bool,
}

struct Compiler<'a> {
    state: &'a SessionState,
    builder: DataflowBuilder,
    feeds: Vec<Feed>,
    late: Arc<LateRows>,
    /// `EMIT ON WINDOW CLOSE` not yet taken by a windowed aggregate.
    emit_on_close: bool,
}

fn refuse(what: impl Into<String>) -> Error {
    Error::Unsupported(format!(
        "{} in a materialized view (it cannot be maintained incrementally)",
        what.into()
    ))
}

/// Functions whose value changes with the wall clock or per call: a view using them would
/// freeze their value at creation.
const TIME_DEPENDENT: &[&str] = &[
    "now",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "random",
    "uuid",
    "statement_timestamp",
    "transaction_timestamp",
    "clock_timestamp",
];

/// Refuse plans that use time-dependent functions (checked before optimization folds them).
pub fn check_deterministic(plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<String> = None;
    plan.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|inner| {
                if let Expr::ScalarFunction(f) = inner
                    && TIME_DEPENDENT.contains(&f.name())
                {
                    found = Some(f.name().to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    match found {
        Some(name) => Err(Error::Unsupported(format!(
            "{name}() in a materialized view (its value would be fixed when the view is created; \
             filter on event time with a window instead)"
        ))),
        None => Ok(()),
    }
}

/// Compile an optimized plan.
pub async fn compile(
    state: &SessionState,
    plan: &LogicalPlan,
    emit_on_close: bool,
    late: Arc<LateRows>,
) -> Result<Compiled> {
    let mut compiler = Compiler {
        state,
        builder: DataflowBuilder::default(),
        feeds: Vec::new(),
        late,
        emit_on_close,
    };
    let mut out = compiler.compile(plan, false).await?;
    if compiler.emit_on_close {
        let window = out.roles.iter().enumerate().find_map(|(i, r)| match r {
            Some(Role::WindowEnd) => Some(WindowEnd {
                column: i,
                offset: 0,
            }),
            Some(Role::WindowStart(size)) => Some(WindowEnd {
                column: i,
                offset: *size,
            }),
            _ => None,
        });
        let Some(window) = window else {
            return Err(Error::Unsupported(
                "EMIT ON WINDOW CLOSE on a query without window_start or window_end in its \
                 result (it needs a window to close)"
                    .to_string(),
            ));
        };
        let schema = arrow_schema(&out.schema);
        let node = compiler
            .builder
            .node(Box::new(WindowClose::new(window, schema)), vec![out.node]);
        out.node = node;
    }
    let schema = arrow_schema(&out.schema);
    Ok(Compiled {
        dataflow: compiler.builder.build(out.node),
        feeds: compiler.feeds,
        schema,
        models: Vec::new(),
    })
}

fn arrow_schema(schema: &DFSchemaRef) -> SchemaRef {
    Arc::new(schema.as_arrow().clone())
}

/// The input column an expression passes through unchanged, if it does.
fn passed_column(expr: &Expr, input: &DFSchema) -> Option<usize> {
    match expr {
        Expr::Column(c) => input.index_of_column(c).ok(),
        Expr::Alias(a) => passed_column(&a.expr, input),
        _ => None,
    }
}

type Compiling<'b> = Pin<Box<dyn Future<Output = Result<Out>> + Send + 'b>>;

impl Compiler<'_> {
    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(create_physical_expr(
            expr,
            schema,
            self.state.execution_props(),
            &PhysicalPlanningContext::default(),
        )?)
    }

    fn add(&mut self, op: impl Operator + 'static, children: Vec<usize>) -> usize {
        self.builder.node(Box::new(op), children)
    }

    /// `ordered`: rows must arrive in event-time order (windows, interval joins): sources
    /// below leave out late rows.
    fn compile<'b>(&'b mut self, plan: &'b LogicalPlan, ordered: bool) -> Compiling<'b> {
        Box::pin(async move {
            match plan {
                LogicalPlan::Projection(p) => {
                    let input = self.compile(&p.input, ordered).await?;
                    let exprs = p
                        .expr
                        .iter()
                        .map(|e| self.physical(e, &input.schema))
                        .collect::<Result<Vec<_>>>()?;
                    let roles = p
                        .expr
                        .iter()
                        .map(|e| passed_column(e, &input.schema).and_then(|i| input.roles[i]))
                        .collect();
                    let node = self.add(
                        Project {
                            exprs,
                            schema: arrow_schema(&p.schema),
                        },
                        vec![input.node],
                    );
                    Ok(Out {
                        node,
                        schema: Arc::clone(&p.schema),
                        roles,
                        retracting: input.retracting,
                    })
                }
                LogicalPlan::Filter(f) => {
                    let mut input = match f.input.as_ref() {
                        LogicalPlan::Window(w) if top_n_limit(w, &f.predicate).is_some() => {
                            self.top_n(w, &f.predicate, ordered).await?
                        }
                        other => self.compile(other, ordered).await?,
                    };
                    let predicate = self.physical(&f.predicate, &input.schema)?;
                    input.node = self.add(Filter { predicate }, vec![input.node]);
                    Ok(input)
                }
                LogicalPlan::SubqueryAlias(a) => {
                    let mut input = self.compile(&a.input, ordered).await?;
                    input.schema = Arc::clone(&a.schema);
                    Ok(input)
                }
                LogicalPlan::Sort(s) => {
                    if s.fetch.is_some() {
                        return Err(refuse(
                            "ORDER BY ... LIMIT (use ROW_NUMBER() OVER (...) <= N for a top-N)",
                        ));
                    }
                    // A view is a set: order it when reading it.
                    self.compile(&s.input, ordered).await
                }
                LogicalPlan::Limit(_) => Err(refuse(
                    "LIMIT (use ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) <= N for a top-N)",
                )),
                LogicalPlan::Union(u) => {
                    let mut inputs = Vec::new();
                    for input in &u.inputs {
                        inputs.push(self.compile(input, ordered).await?);
                    }
                    let roles = (0..u.schema.fields().len())
                        .map(|i| {
                            let first = inputs.first().and_then(|o| o.roles[i]);
                            inputs
                                .iter()
                                .all(|o| o.roles[i] == first)
                                .then_some(first)
                                .flatten()
                        })
                        .collect();
                    let retracting = inputs.iter().any(|o| o.retracting);
                    let children = inputs.iter().map(|o| o.node).collect();
                    let node = self.add(
                        Union {
                            schema: arrow_schema(&u.schema),
                        },
                        children,
                    );
                    Ok(Out {
                        node,
                        schema: Arc::clone(&u.schema),
                        roles,
                        retracting,
                    })
                }
                LogicalPlan::Distinct(Distinct::All(input)) => {
                    let group: Vec<Expr> = input
                        .schema()
                        .columns()
                        .into_iter()
                        .map(Expr::Column)
                        .collect();
                    let aggregate = LogicalAggregate::try_new(Arc::clone(input), group, vec![])?;
                    self.aggregate(&aggregate, ordered).await
                }
                LogicalPlan::Distinct(Distinct::On(_)) => Err(refuse("DISTINCT ON")),
                LogicalPlan::Aggregate(a) => self.aggregate(a, ordered).await,
                LogicalPlan::Join(j) => self.join(j, ordered).await,
                LogicalPlan::TableScan(scan) => self.scan(scan, ordered).await,
                LogicalPlan::Window(w) => self.over_window(w).await,
                LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                    Err(refuse("a query that reads no stream, table or view"))
                }
                other => Err(refuse(format!("{} plans", other.display()))),
            }
        })
    }

    async fn scan(&mut self, scan: &TableScan, ordered: bool) -> Result<Out> {
        let mut provider = source_as_provider(&scan.source)?;
        // The table of a temporal join is read as the table itself; the join does the rest.
        if let Some(temporal) = provider.downcast_ref::<TemporalTable>() {
            provider = Arc::clone(&temporal.table);
        }
        let mut out = if let Some(windowed) = provider.downcast_ref::<WindowedTable>() {
            self.windowed(windowed).await?
        } else {
            let full = DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                provider.schema().as_ref(),
            )?;
            let (feed, event_time, retracting) = if let Some(view) =
                provider.downcast_ref::<ViewTable>()
            {
                (Feed::View(Arc::clone(&view.view)), None, true)
            } else {
                match Relation::of_provider(provider.as_ref()) {
                    Some(Relation::Stream(stream)) => {
                        let event_time = self.event_time(&stream, &full, ordered)?;
                        (Feed::Stream(stream), event_time, false)
                    }
                    Some(Relation::Table(table)) => (Feed::Table(table), None, true),
                    None => {
                        return Err(refuse(format!(
                            "reading \"{}\" (views read streams, tables and other materialized views)",
                            scan.table_name
                        )));
                    }
                }
            };
            let mut roles = vec![None; full.fields().len()];
            if let Some(t) = &event_time {
                roles[t.column] = Some(Role::EventTime);
            }
            let timed = event_time.is_some();
            let filters = scan
                .filters
                .iter()
                .map(|f| self.physical(f, &full))
                .collect::<Result<Vec<_>>>()?;
            let source = Source::new(
                feed.qualified_name(),
                event_time,
                scan.projection.clone(),
                filters,
                Arc::clone(&self.late),
            );
            self.feeds.push(feed);
            let node = self.builder.source(Box::new(source), timed);
            let roles = match &scan.projection {
                Some(p) => p.iter().map(|i| roles[*i]).collect(),
                None => roles,
            };
            return Ok(Out {
                node,
                schema: Arc::clone(&scan.projected_schema),
                roles,
                retracting,
            });
        };
        // A window function's table: its columns, then the scan's projection and filters.
        let full = DFSchema::try_from_qualified_schema(
            scan.table_name.clone(),
            provider.schema().as_ref(),
        )?;
        for filter in &scan.filters {
            let predicate = self.physical(filter, &full)?;
            out.node = self.add(Filter { predicate }, vec![out.node]);
        }
        if let Some(projection) = &scan.projection {
            let exprs = projection
                .iter()
                .map(|i| {
                    Ok(
                        Arc::new(datafusion::physical_expr::expressions::Column::new(
                            full.field(*i).name(),
                            *i,
                        )) as Arc<dyn PhysicalExpr>,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            out.node = self.add(
                Project {
                    exprs,
                    schema: arrow_schema(&scan.projected_schema),
                },
                vec![out.node],
            );
            out.roles = projection.iter().map(|i| out.roles[*i]).collect();
        }
        out.schema = Arc::clone(&scan.projected_schema);
        Ok(out)
    }

    fn event_time(
        &self,
        stream: &StreamStore,
        full: &DFSchema,
        ordered: bool,
    ) -> Result<Option<EventTime>> {
        let def = stream.def();
        let (Some(column), Some(watermark)) = (stream.event_time(), &def.watermark) else {
            if ordered {
                return Err(refuse(format!(
                    "windows or interval joins over stream \"{}\", which has no watermark \
                     (declare WATERMARK FOR column AS column - INTERVAL '...' in CREATE STREAM)",
                    def.name
                )));
            }
            return Ok(None);
        };
        let unqualified = DFSchema::try_from(stream.schema().as_ref().clone())?;
        let expr = self.state.create_logical_expr(watermark, &unqualified)?;
        let watermark = self.physical(&expr, &unqualified)?;
        let _ = full;
        Ok(Some(EventTime {
            column,
            watermark,
            drop_late: ordered,
        }))
    }

    async fn windowed(&mut self, windowed: &WindowedTable) -> Result<Out> {
        let source_columns = windowed.source_provider.schema().fields().len();
        if let WindowKind::Tumble { size } = windowed.kind {
            let plan = windowed.plan(self.state).await?;
            let mut out = self.compile(&plan, true).await?;
            out.roles[source_columns] = Some(Role::WindowStart(size));
            out.roles[source_columns + 1] = Some(Role::WindowEnd);
            return Ok(out);
        }
        // HOP and SESSION read the relation once and add the window columns themselves.
        let scan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            windowed.source.clone(),
            datafusion::datasource::provider_as_source(Arc::clone(&windowed.source_provider)),
            None,
        )?
        .build()?;
        let input = self.compile(&scan, true).await?;
        let arrow = arrow_schema(&input.schema);
        let time = arrow.index_of(&windowed.time_column)?;
        let schema = datafusion::datasource::TableProvider::schema(windowed);
        let node = match &windowed.kind {
            WindowKind::Session { gap, partition } => {
                if input.retracting {
                    return Err(refuse(
                        "SESSION windows over a table or view (sessions need an append-only stream)",
                    ));
                }
                let partition = partition
                    .iter()
                    .map(|p| arrow.index_of(p))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let op = SessionWindow::new(time, *gap, partition, arrow, Arc::clone(&schema))?;
                self.add(op, vec![input.node])
            }
            _ => {
                let unqualified = DFSchema::try_from(arrow.as_ref().clone())?;
                let mut branches = Vec::new();
                for (start, end) in windowed.hop_branches() {
                    let start = self.state.create_logical_expr(&start, &unqualified)?;
                    let end = self.state.create_logical_expr(&end, &unqualified)?;
                    branches.push((
                        self.physical(&start, &unqualified)?,
                        self.physical(&end, &unqualified)?,
                    ));
                }
                let op = HopExpand {
                    branches,
                    time,
                    schema: Arc::clone(&schema),
                };
                self.add(op, vec![input.node])
            }
        };
        let qualified = DFSchema::try_from_qualified_schema(windowed.source.clone(), &schema)?;
        let mut roles = input.roles.clone();
        let start_role = match windowed.kind {
            WindowKind::Hop { size, .. } => Some(Role::WindowStart(size)),
            _ => None,
        };
        roles.extend([start_role, Some(Role::WindowEnd)]);
        Ok(Out {
            node,
            schema: Arc::new(qualified),
            roles,
            retracting: input.retracting,
        })
    }

    async fn aggregate(&mut self, a: &LogicalAggregate, ordered: bool) -> Result<Out> {
        let emit_on_close = self.emit_on_close;
        let input = self.compile(&a.input, ordered).await?;
        if a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err(refuse("GROUPING SETS, CUBE and ROLLUP"));
        }
        let group_exprs = a
            .group_expr
            .iter()
            .map(|e| self.physical(e, &input.schema))
            .collect::<Result<Vec<_>>>()?;
        let group_roles: Vec<Option<Role>> = a
            .group_expr
            .iter()
            .map(|e| passed_column(e, &input.schema).and_then(|i| input.roles[i]))
            .collect();
        let input_arrow = arrow_schema(&input.schema);
        let mut aggregates = Vec::new();
        for e in &a.aggr_expr {
            let lowered = LoweredAggregateBuilder::new(
                e,
                &input.schema,
                &input_arrow,
                self.state.execution_props(),
                &PhysicalPlanningContext::default(),
            )
            .build()?;
            aggregates.push(AggregateSpec {
                function: lowered.aggregate,
                filter: lowered.filter,
            });
        }
        let window = group_roles.iter().enumerate().find_map(|(i, r)| match r {
            Some(Role::WindowEnd) => Some(WindowEnd {
                column: i,
                offset: 0,
            }),
            Some(Role::WindowStart(size)) => Some(WindowEnd {
                column: i,
                offset: *size,
            }),
            _ => None,
        });
        let mut op = Aggregate::new(
            group_exprs,
            aggregates,
            &input_arrow,
            arrow_schema(&a.schema),
            input.retracting,
            window,
        )?;
        let mut retracting = true;
        if emit_on_close && window.is_some() {
            op.emit_on_close();
            self.emit_on_close = false;
            retracting = false;
        }
        let node = self.add(op, vec![input.node]);
        let mut roles = group_roles;
        roles.resize(a.schema.fields().len(), None);
        Ok(Out {
            node,
            schema: Arc::clone(&a.schema),
            roles,
            retracting,
        })
    }

    /// `ROW_NUMBER`, `LAG` and `LEAD` over one event-time ordered partitioning.
    async fn over_window(&mut self, w: &datafusion::logical_expr::Window) -> Result<Out> {
        let refusal = || {
            refuse(
                "window functions other than ROW_NUMBER, LAG and LEAD ordered by the event time \
                 of a stream with a watermark, or a top-N (ROW_NUMBER() OVER (PARTITION BY ... \
                 ORDER BY ...) filtered by <= N)",
            )
        };
        let mut functions = Vec::new();
        let mut over: Option<&datafusion::logical_expr::expr::WindowFunctionParams> = None;
        for expr in &w.window_expr {
            let Expr::WindowFunction(function) = expr else {
                return Err(refusal());
            };
            let params = &function.params;
            if params.filter.is_some()
                || params.distinct
                || matches!(
                    params.null_treatment,
                    Some(datafusion::logical_expr::expr::NullTreatment::IgnoreNulls)
                )
            {
                return Err(refusal());
            }
            match over {
                Some(first)
                    if first.partition_by != params.partition_by
                        || first.order_by != params.order_by =>
                {
                    return Err(refuse(
                        "OVER windows with different PARTITION BY or ORDER BY in one query",
                    ));
                }
                _ => over = Some(params),
            }
            functions.push((function.fun.name().to_string(), params.args.clone()));
        }
        let Some(params) = over else {
            return Err(refusal());
        };
        let emit_on_close = self.emit_on_close;
        let input = self.compile(&w.input, true).await?;
        if input.retracting {
            return Err(refuse(
                "LAG, LEAD or ROW_NUMBER over a table or a view that updates rows (they run in \
                 event-time order over append-only input)",
            ));
        }
        let on_event_time = params.order_by.first().is_some_and(|sort| {
            sort.asc
                && passed_column(&sort.expr, &input.schema)
                    .is_some_and(|i| input.roles[i] == Some(Role::EventTime))
        });
        if !on_event_time {
            return Err(refusal());
        }
        let input_arrow = arrow_schema(&input.schema);
        let partition = params
            .partition_by
            .iter()
            .map(|e| self.physical(e, &input.schema))
            .collect::<Result<Vec<_>>>()?;
        let order = params
            .order_by
            .iter()
            .map(|sort| {
                Ok((
                    self.physical(&sort.expr, &input.schema)?,
                    datafusion::arrow::compute::SortOptions {
                        descending: !sort.asc,
                        nulls_first: sort.nulls_first,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut over_functions = Vec::new();
        for (name, args) in functions {
            let offset_arg = |args: &[Expr]| -> Result<i64> {
                match args.get(1) {
                    None => Ok(1),
                    Some(e) => match literal(e) {
                        Some(v) if !v.is_null() => v
                            .cast_to(&DataType::Int64)
                            .ok()
                            .and_then(|v| match v {
                                ScalarValue::Int64(Some(n)) => Some(n),
                                _ => None,
                            })
                            .filter(|n| n.unsigned_abs() <= 1_000_000)
                            .ok_or_else(|| refuse("a LAG/LEAD offset beyond 1000000")),
                        _ => Err(refuse("a LAG/LEAD offset that is not a constant")),
                    },
                }
            };
            let function = match name.as_str() {
                "row_number" => OverFunction::RowNumber,
                "lag" | "lead" => {
                    let arg = self.physical(args.first().ok_or_else(refusal)?, &input.schema)?;
                    let offset = offset_arg(&args)?;
                    let default = match args.get(2) {
                        None => ScalarValue::Null,
                        Some(e) => literal(e)
                            .ok_or_else(|| refuse("a LAG/LEAD default that is not a constant"))?,
                    };
                    // LAG(x, -n) is LEAD(x, n) and the other way round.
                    let back = (name == "lag") == (offset >= 0);
                    let offset = offset.unsigned_abs() as usize;
                    if back {
                        OverFunction::Lag {
                            arg,
                            offset,
                            default,
                        }
                    } else {
                        OverFunction::Lead {
                            arg,
                            offset,
                            default,
                        }
                    }
                }
                _ => return Err(refusal()),
            };
            over_functions.push(function);
        }
        let mut op = OverWindow::new(
            partition,
            order,
            over_functions,
            input_arrow,
            arrow_schema(&w.schema),
        )?;
        if emit_on_close {
            op.emit_on_close();
            self.emit_on_close = false;
        }
        let retracting = op.retracts();
        let node = self.add(op, vec![input.node]);
        let mut roles = input.roles.clone();
        roles.resize(w.schema.fields().len(), None);
        Ok(Out {
            node,
            schema: Arc::clone(&w.schema),
            roles,
            retracting,
        })
    }

    async fn top_n(
        &mut self,
        w: &datafusion::logical_expr::Window,
        predicate: &Expr,
        ordered: bool,
    ) -> Result<Out> {
        let refusal = || {
            refuse(
                "window functions other than a top-N (ROW_NUMBER() OVER (PARTITION BY ... \
                 ORDER BY ...) filtered by <= N)",
            )
        };
        let [Expr::WindowFunction(function)] = w.window_expr.as_slice() else {
            return Err(refusal());
        };
        let limit = top_n_limit(w, predicate).ok_or_else(refusal)?;
        let input = self.compile(&w.input, ordered).await?;
        let params = &function.params;
        let partition = params
            .partition_by
            .iter()
            .map(|e| self.physical(e, &input.schema))
            .collect::<Result<Vec<_>>>()?;
        let input_arrow = arrow_schema(&input.schema);
        let mut order_exprs = Vec::new();
        let mut order_fields = Vec::new();
        for sort in &params.order_by {
            let expr = self.physical(&sort.expr, &input.schema)?;
            let data_type = expr.data_type(&input_arrow)?;
            order_fields.push(SortField::new_with_options(
                data_type,
                datafusion::arrow::compute::SortOptions {
                    descending: !sort.asc,
                    nulls_first: sort.nulls_first,
                },
            ));
            order_exprs.push(expr);
        }
        let op = TopN::new(
            partition,
            order_exprs,
            order_fields,
            limit,
            Arc::clone(&input_arrow),
            arrow_schema(&w.schema),
            !input.retracting,
        )?;
        let node = self.add(op, vec![input.node]);
        let mut roles = input.roles.clone();
        roles.push(None);
        Ok(Out {
            node,
            schema: Arc::clone(&w.schema),
            roles,
            retracting: true,
        })
    }

    async fn join(&mut self, j: &datafusion::logical_expr::Join, ordered: bool) -> Result<Out> {
        let (outer, mode) = match j.join_type {
            JoinType::Inner => ([false, false], JoinMode::Pairs),
            JoinType::Left => ([true, false], JoinMode::Pairs),
            JoinType::Right => ([false, true], JoinMode::Pairs),
            JoinType::Full => ([true, true], JoinMode::Pairs),
            JoinType::LeftSemi => ([false, false], JoinMode::Semi(0)),
            JoinType::RightSemi => ([false, false], JoinMode::Semi(1)),
            JoinType::LeftAnti => ([false, false], JoinMode::Anti(0)),
            JoinType::RightAnti => ([false, false], JoinMode::Anti(1)),
            other => return Err(refuse(format!("{other} joins"))),
        };
        if j.null_equality == NullEquality::NullEqualsNull {
            return Err(refuse("joins where NULL equals NULL"));
        }
        if j.null_aware {
            return Err(refuse(
                "NOT IN (subquery) (its NULL rules need the whole subquery; write NOT EXISTS)",
            ));
        }
        // A temporal join: the right side is `table FOR SYSTEM_TIME AS OF left.time`.
        if let Some(time_column) = temporal_side(&j.right)? {
            return self.temporal_join(j, &time_column, outer[0], ordered).await;
        }
        let bounds = interval_bounds(j.filter.as_ref(), j.left.schema(), j.right.schema());
        let left = self.compile(&j.left, ordered).await?;
        let right = self.compile(&j.right, ordered).await?;
        // Semi and anti joins emit one side, but their ON condition sees both.
        let pairs = match mode {
            JoinMode::Pairs => Arc::clone(&j.schema),
            _ => Arc::new(left.schema.join(&right.schema)?),
        };
        let (left_keys, right_keys, filter) = self.join_conditions(j, &pairs, &left, &right)?;
        let mut expiry: [Option<Expiry>; 2] = [None, None];
        // Window join: equal windows on both sides free rows when the window closes.
        for (l, r) in &j.on {
            let lrole = passed_column(l, &left.schema).map(|i| (i, left.roles[i]));
            let rrole = passed_column(r, &right.schema).map(|i| (i, right.roles[i]));
            if let (Some((li, Some(lr))), Some((ri, Some(rr)))) = (lrole, rrole) {
                let offset = |role: Role| match role {
                    Role::WindowEnd => Some(-1),
                    Role::WindowStart(size) => Some(size - 1),
                    Role::EventTime => None,
                };
                if let (Some(lo), Some(ro)) = (offset(lr), offset(rr)) {
                    expiry[0] = Some(Expiry {
                        column: li,
                        bound: lo,
                    });
                    expiry[1] = Some(Expiry {
                        column: ri,
                        bound: ro,
                    });
                }
            }
        }
        // Interval join: `left.t - right.t <= c` frees right rows once the left watermark is
        // past right.t + c; `right.t - left.t <= c` the other way.
        for bound in &bounds {
            // Only a bound against the other side's event time (which its watermark bounds)
            // frees rows; that side then leaves out rows behind its watermark.
            let (bounding, bounding_node) = if bound.frees_right {
                (&left, left.node)
            } else {
                (&right, right.node)
            };
            let on_event_time = bounding
                .schema
                .index_of_column(&bound.bounding_column)
                .is_ok_and(|i| bounding.roles[i] == Some(Role::EventTime));
            if !on_event_time {
                continue;
            }
            self.builder.order_by_event_time(bounding_node);
            let (side, column) = if bound.frees_right {
                (1, right.schema.index_of_column(&bound.freed_column)?)
            } else {
                (0, left.schema.index_of_column(&bound.freed_column)?)
            };
            let candidate = Expiry {
                column,
                bound: bound.micros,
            };
            expiry[side] = Some(match expiry[side] {
                Some(e) if e.bound <= candidate.bound && e.column == column => e,
                _ => candidate,
            });
        }
        let op = Join::new(
            left_keys,
            right_keys,
            arrow_schema(&left.schema),
            arrow_schema(&right.schema),
            filter,
            mode,
            outer,
            expiry,
            arrow_schema(&pairs),
            arrow_schema(&j.schema),
        )?;
        let retracting = left.retracting
            || right.retracting
            || outer.iter().any(|o| *o)
            || matches!(mode, JoinMode::Anti(_));
        Ok(match mode {
            JoinMode::Pairs => self.joined(op, j, &left, &right, retracting),
            JoinMode::Semi(side) | JoinMode::Anti(side) => {
                let kept = if side == 0 { &left } else { &right };
                let roles = kept.roles.clone();
                let node = self.add(op, vec![left.node, right.node]);
                Out {
                    node,
                    schema: Arc::clone(&j.schema),
                    roles,
                    retracting,
                }
            }
        })
    }

    async fn temporal_join(
        &mut self,
        j: &datafusion::logical_expr::Join,
        time_column: &str,
        outer: bool,
        ordered: bool,
    ) -> Result<Out> {
        if j.join_type != JoinType::Inner && j.join_type != JoinType::Left {
            return Err(refuse("FOR SYSTEM_TIME AS OF in a RIGHT or FULL join"));
        }
        let left = self.compile(&j.left, ordered).await?;
        if left.retracting {
            return Err(refuse(
                "FOR SYSTEM_TIME AS OF with a table or view on the probe side",
            ));
        }
        let right = self.compile(&j.right, ordered).await?;
        let time = left
            .schema
            .columns()
            .iter()
            .position(|c| c.name == time_column)
            .ok_or_else(|| {
                // The rewrite of FOR SYSTEM_TIME AS OF leaves no reference the optimizer sees,
                // so a time column the query does not otherwise use is pruned.
                Error::Unsupported(format!(
                    "FOR SYSTEM_TIME AS OF {time_column} without {time_column} in the view's \
                     columns (select it, e.g. SELECT o.{time_column}, ...)"
                ))
            })?;
        let (stream_keys, table_keys, filter) =
            self.join_conditions(j, &j.schema, &left, &right)?;
        let op = TemporalJoin::new(
            stream_keys,
            table_keys,
            arrow_schema(&left.schema),
            arrow_schema(&right.schema),
            time,
            filter,
            outer,
            arrow_schema(&j.schema),
        )?;
        Ok(self.joined(op, j, &left, &right, false))
    }

    /// Equi-join keys of each side and the residual ON condition, as physical expressions.
    #[allow(clippy::type_complexity)]
    /// Key expressions of both sides, and the residual ON condition over `pairs` (the left
    /// columns then the right).
    fn join_conditions(
        &self,
        j: &datafusion::logical_expr::Join,
        pairs: &DFSchema,
        left: &Out,
        right: &Out,
    ) -> Result<(
        Vec<Arc<dyn PhysicalExpr>>,
        Vec<Arc<dyn PhysicalExpr>>,
        Option<Arc<dyn PhysicalExpr>>,
    )> {
        let left_keys =
            j.on.iter()
                .map(|(l, _)| self.physical(l, &left.schema))
                .collect::<Result<Vec<_>>>()?;
        let right_keys =
            j.on.iter()
                .map(|(_, r)| self.physical(r, &right.schema))
                .collect::<Result<Vec<_>>>()?;
        let filter = match &j.filter {
            Some(f) => Some(self.physical(f, pairs)?),
            None => None,
        };
        Ok((left_keys, right_keys, filter))
    }

    /// A join node over both sides: columns and their roles are the left's then the right's.
    fn joined(
        &mut self,
        op: impl Operator + 'static,
        j: &datafusion::logical_expr::Join,
        left: &Out,
        right: &Out,
        retracting: bool,
    ) -> Out {
        let node = self.add(op, vec![left.node, right.node]);
        let mut roles = left.roles.clone();
        roles.extend(right.roles.iter().copied());
        Out {
            node,
            schema: Arc::clone(&j.schema),
            roles,
            retracting,
        }
    }
}

/// The N of a top-N: a lone `ROW_NUMBER()` window filtered by `rn <= N` and the like.
fn top_n_limit(w: &datafusion::logical_expr::Window, predicate: &Expr) -> Option<usize> {
    let [Expr::WindowFunction(function)] = w.window_expr.as_slice() else {
        return None;
    };
    if function.fun.name() != "row_number" {
        return None;
    }
    let rank_column = w.schema.field(w.schema.fields().len() - 1).name().clone();
    rank_bound(predicate, &rank_column)
}

/// A constant argument (a literal, possibly cast) as a value.
fn literal(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        Expr::TryCast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

/// `rn <= N`, `rn < N`, `rn = 1` (either way round) as the number of rows kept.
fn rank_bound(predicate: &Expr, rank: &str) -> Option<usize> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else {
        return None;
    };
    let (column, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), other) => (c, *op, other),
        (other, Expr::Column(c)) => (c, op.swap()?, other),
        _ => return None,
    };
    if column.name != rank {
        return None;
    }
    let n = match value {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int64(Some(n)) => *n,
            ScalarValue::Int32(Some(n)) => i64::from(*n),
            ScalarValue::UInt64(Some(n)) => i64::try_from(*n).ok()?,
            _ => return None,
        },
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Literal(ScalarValue::Int64(Some(n)), _) => *n,
            _ => return None,
        },
        _ => return None,
    };
    let limit = match op {
        BinOp::LtEq => n,
        BinOp::Lt => n - 1,
        BinOp::Eq if n == 1 => 1,
        _ => return None,
    };
    usize::try_from(limit)
        .ok()
        .filter(|l| *l > 0 && *l <= 10_000)
}

/// One bound of an interval join, normalized to `a.t - b.t <= micros`: rows of `b`'s side
/// (`frees_right` when b is the right input) are freed by `a`'s watermark.
#[derive(Debug)]
struct IntervalBound {
    frees_right: bool,
    freed_column: datafusion::common::Column,
    /// The column of the other side whose watermark does the freeing.
    bounding_column: datafusion::common::Column,
    micros: i64,
}

/// The time bounds an ON condition puts between a left and a right column.
fn interval_bounds(
    filter: Option<&Expr>,
    left: &DFSchemaRef,
    right: &DFSchemaRef,
) -> Vec<IntervalBound> {
    let Some(filter) = filter else {
        return Vec::new();
    };
    let mut bounds = Vec::new();
    for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
        let comparisons: Vec<(Expr, BinOp, Expr)> = match conjunct {
            Expr::Between(b) if !b.negated => vec![
                ((*b.expr).clone(), BinOp::GtEq, (*b.low).clone()),
                ((*b.expr).clone(), BinOp::LtEq, (*b.high).clone()),
            ],
            Expr::BinaryExpr(BinaryExpr {
                left: l,
                op,
                right: r,
            }) if matches!(op, BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq) => {
                vec![((**l).clone(), *op, (**r).clone())]
            }
            _ => continue,
        };
        for (l, op, r) in comparisons {
            // Normalize to x <= y + c.
            let (x, y_expr, flip) = match op {
                BinOp::Lt | BinOp::LtEq => (l, r, false),
                _ => (r, l, true),
            };
            let _ = flip;
            let Some((x_col, x_off)) = column_plus(&x) else {
                continue;
            };
            let Some((y_col, y_off)) = column_plus(&y_expr) else {
                continue;
            };
            let Some(c) = y_off.checked_sub(x_off) else {
                continue;
            }; // x <= y + c
            let side = |c: &datafusion::common::Column| {
                if left.has_column(c) {
                    Some(0)
                } else if right.has_column(c) {
                    Some(1)
                } else {
                    None
                }
            };
            match (side(&x_col), side(&y_col)) {
                // x (left) <= y (right) + c: a future left row with x >= W_left matches only
                // right rows with y >= x - c, so right rows with y + c < W_left are done.
                (Some(0), Some(1)) => bounds.push(IntervalBound {
                    frees_right: true,
                    freed_column: y_col,
                    bounding_column: x_col,
                    micros: c,
                }),
                (Some(1), Some(0)) => bounds.push(IntervalBound {
                    frees_right: false,
                    freed_column: y_col,
                    bounding_column: x_col,
                    micros: c,
                }),
                _ => {}
            }
        }
    }
    bounds
}

/// `col`, `col + INTERVAL`, `col - INTERVAL` as (column, offset in microseconds).
fn column_plus(expr: &Expr) -> Option<(datafusion::common::Column, i64)> {
    match expr {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, base) = column_plus(left)?;
            let offset = interval_micros(right)?;
            match op {
                BinOp::Plus => Some((column, base.checked_add(offset)?)),
                BinOp::Minus => Some((column, base.checked_sub(offset)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn interval_micros(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            i64::from(v.days)
                .checked_mul(86_400_000_000)?
                .checked_add(v.nanoseconds / 1000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => i64::from(v.days)
            .checked_mul(86_400_000_000)?
            .checked_add(i64::from(v.milliseconds) * 1000),
        Expr::Literal(ScalarValue::DurationMicrosecond(Some(v)), _) => Some(*v),
        _ => None,
    }
}

/// If `plan` scans a `FOR SYSTEM_TIME AS OF` table, the probe side's time column.
fn temporal_side(plan: &LogicalPlan) -> Result<Option<String>> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => temporal_side(&a.input),
        LogicalPlan::Projection(p) => temporal_side(&p.input),
        LogicalPlan::Filter(f) => temporal_side(&f.input),
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source)?;
            Ok(provider
                .downcast_ref::<TemporalTable>()
                .map(|t| t.time_column.clone()))
        }
        _ => Ok(None),
    }
}
