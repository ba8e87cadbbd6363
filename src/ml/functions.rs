//! The SQL functions of models: `PREDICT`, `PREDICT_PROBA`, `PREDICT_DISTANCE` (scalar, in any
//! query or materialized view) and `EVALUATE` (a table function: the stored holdout metrics,
//! or with a query, the metrics over its rows).
//!
//! The first argument names the model: `PREDICT(fraud, ...)` (the parser turns the bare name
//! into the string `'fraud'`), `PREDICT('fraud', ...)`, or a pinned version `fraud$3`. At
//! planning the model's active (or pinned) version gives the result type and checks the
//! features; at every batch the version is looked up again, so promotion and rollback reach
//! running views between two batches.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use super::model::Trained;
use super::registry::Models;
use crate::error::{Error, Result};

/// Which function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Predict,
    Proba,
    Distance,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Predict => "predict",
            Kind::Proba => "predict_proba",
            Kind::Distance => "predict_distance",
        }
    }
}

/// `PREDICT`, `PREDICT_PROBA` or `PREDICT_DISTANCE`.
#[derive(Debug)]
struct PredictFunction {
    kind: Kind,
    models: Arc<Models>,
    signature: Signature,
}

impl PartialEq for PredictFunction {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for PredictFunction {}

impl Hash for PredictFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

/// A constant string argument.
pub(super) fn constant_text(value: Option<&ScalarValue>) -> Option<String> {
    match value {
        Some(ScalarValue::Utf8(Some(text)))
        | Some(ScalarValue::LargeUtf8(Some(text)))
        | Some(ScalarValue::Utf8View(Some(text))) => Some(text.clone()),
        _ => None,
    }
}

/// The model reference in the first argument.
fn model_reference(kind: Kind, value: Option<&ScalarValue>) -> Result<String> {
    match constant_text(value) {
        Some(name) => Ok(name),
        None => Err(Error::InvalidValue(format!(
            "the first argument of {} names a model: {}(model, feature, ...)",
            kind.name().to_uppercase(),
            kind.name().to_uppercase()
        ))),
    }
}

impl ScalarUDFImpl for PredictFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Err(Error::Internal("PREDICT's type comes from its model".into()).into())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> datafusion::error::Result<FieldRef> {
        let reference =
            model_reference(self.kind, args.scalar_arguments.first().copied().flatten())?;
        let (model, pinned) = self.models.resolve(&reference)?;
        let (_, trained) = model.trained(pinned)?;
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .skip(1)
            .map(|f| f.data_type().clone())
            .collect();
        trained.featurizer.check_types(&reference, &types)?;
        let data_type = match self.kind {
            Kind::Predict => trained.output_type(),
            Kind::Proba | Kind::Distance => DataType::Float64,
        };
        Ok(Arc::new(Field::new(self.name(), data_type, true)))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let reference = match args.args.first() {
            Some(ColumnarValue::Scalar(value)) => model_reference(self.kind, Some(value))?,
            _ => model_reference(self.kind, None)?,
        };
        let (model, pinned) = self.models.resolve(&reference)?;
        let (version, trained) = model.trained(pinned)?;
        let rows = args.number_rows;
        let features = args.args[1..]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let score = |trained: &Trained| match self.kind {
            Kind::Predict => trained.predict(&features),
            Kind::Proba => trained.predict_proba(&features),
            Kind::Distance => trained.distance(&features),
        };
        let started = std::time::Instant::now();
        let out = score(&trained)?;
        model.record_scoring(version, rows, started.elapsed().as_secs_f64());
        // The shadow version scores the same rows beside the active one, for metrics only; a
        // shadow that fails to score is logged, never the query's error.
        if pinned.is_none()
            && let Some(shadow) = model.shadow().filter(|s| *s != version)
        {
            match model
                .trained(Some(shadow))
                .and_then(|(_, shadow_trained)| score(&shadow_trained))
            {
                Ok(shadow_out) => {
                    model.record_shadow(shadow, rows, agreeing(&out, &shadow_out));
                }
                Err(e) => {
                    tracing::warn!(model = %reference, version = shadow, error = %e, "shadow version failed to score");
                }
            }
        }
        if out.data_type() != args.return_field.data_type() {
            return Err(Error::NotInPrerequisiteState(format!(
                "version {version} of model \"{reference}\" predicts {}, but this query was \
                 planned for {}; plan it again (recreate the view)",
                out.data_type(),
                args.return_field.data_type()
            ))
            .into());
        }
        Ok(ColumnarValue::Array(out))
    }
}

/// Rows where two versions' outputs agree: the same class or cluster, or numbers within 1%.
fn agreeing(a: &ArrayRef, b: &ArrayRef) -> usize {
    use datafusion::arrow::array::{Array, AsArray};
    if a.len() != b.len() {
        return 0;
    }
    if let (Some(a), Some(b)) = (
        a.as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>(),
        b.as_primitive_opt::<datafusion::arrow::datatypes::Float64Type>(),
    ) {
        return (0..a.len())
            .filter(|&i| {
                a.is_valid(i)
                    && b.is_valid(i)
                    && (a.value(i) - b.value(i)).abs() <= 1e-9 + 0.01 * a.value(i).abs()
            })
            .count();
    }
    datafusion::arrow::compute::kernels::cmp::eq(a, b).map_or(0, |same| same.true_count())
}

/// `EVALUATE(model)`: the stored holdout metrics of the active (or pinned) version.
#[derive(Debug)]
struct Evaluate {
    models: Arc<Models>,
}

impl TableFunctionImpl for Evaluate {
    fn call_with_args(
        &self,
        args: TableFunctionArgs,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let shape = || {
            Error::InvalidValue(
                "EVALUATE takes a model and optionally a query: SELECT * FROM EVALUATE(model) or EVALUATE(model, (SELECT features..., label FROM ...))".into(),
            )
        };
        let (reference, query) = match args.exprs() {
            [Expr::Literal(value, _)] => (model_reference(Kind::Predict, Some(value))?, None),
            [Expr::Literal(value, _), Expr::Literal(query, _)] => (
                model_reference(Kind::Predict, Some(value))?,
                Some(constant_text(Some(query)).ok_or_else(shape)?),
            ),
            _ => return Err(shape().into()),
        };
        let (model, pinned) = self.models.resolve(&reference)?;
        let (version, trained) = model.trained(pinned)?;
        let def = model.def();
        if let Some(query) = query {
            return Ok(Arc::new(EvaluateOn {
                model: def.name.clone(),
                version,
                trained,
                query,
            }));
        }
        let record = def
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| Error::Internal("version record vanished".into()))?;
        let batch = metrics_batch(&def.name, version, &record.metrics)?;
        Ok(Arc::new(MemTable::try_new(
            evaluate_schema(),
            vec![vec![batch]],
        )?))
    }
}

/// The columns of `EVALUATE`.
fn evaluate_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("version", DataType::UInt32, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn metrics_batch(model: &str, version: u32, metrics: &[(String, f64)]) -> Result<RecordBatch> {
    let n = metrics.len();
    Ok(RecordBatch::try_new(
        evaluate_schema(),
        vec![
            Arc::new(StringArray::from(vec![model; n])),
            Arc::new(UInt32Array::from(vec![version; n])),
            Arc::new(StringArray::from_iter_values(
                metrics.iter().map(|(m, _)| m.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                metrics.iter().map(|(_, v)| *v),
            )),
        ],
    )?)
}

/// `EVALUATE(model, (query))`: the version's metrics over the query's rows, which name the
/// model's features and its target as columns. The parser hands the query over as text; it
/// runs when the result is scanned.
#[derive(Debug)]
struct EvaluateOn {
    model: String,
    version: u32,
    trained: Arc<Trained>,
    query: String,
}

#[async_trait::async_trait]
impl TableProvider for EvaluateOn {
    fn schema(&self) -> SchemaRef {
        evaluate_schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let Some(state) = state
            .as_any()
            .downcast_ref::<datafusion::execution::SessionState>()
        else {
            return Err(Error::Internal("EVALUATE needs a session state".into()).into());
        };
        // A query only: no DDL, no writes (COPY TO, INSERT), no SET.
        let read_only = datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = SessionContext::new_with_state(state.clone())
            .sql_with_options(&self.query, read_only)
            .await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        let rows = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        let metrics = super::model::evaluate_by_name(&self.trained, &self.model, &rows)?;
        let batch = metrics_batch(&self.model, self.version, &metrics)?;
        Ok(
            datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                evaluate_schema(),
                projection.cloned(),
            )?,
        )
    }
}

/// Models `plan` scores with whatever version is active (a `PREDICT` not pinned to `m$n`).
pub fn unpinned_models(plan: &LogicalPlan) -> Vec<String> {
    model_references(plan, false)
        .into_iter()
        .filter(|reference| !reference.contains('$'))
        .collect()
}

/// Every model `plan` names, as written (`m`, `s.m`, `m$3`): in `PREDICT`, `PREDICT_PROBA`,
/// `PREDICT_DISTANCE` and, `with_drift`, the `DRIFT_PSI` and `DRIFT_KS` aggregates.
pub fn model_references(plan: &LogicalPlan, with_drift: bool) -> Vec<String> {
    let mut found = Vec::new();
    let _ = plan.apply(|node| {
        node.apply_expressions(|e| {
            e.apply(|inner| {
                let first = match inner {
                    Expr::ScalarFunction(f)
                        if matches!(f.name(), "predict" | "predict_proba" | "predict_distance") =>
                    {
                        f.args.first()
                    }
                    Expr::AggregateFunction(f)
                        if with_drift && matches!(f.func.name(), "drift_psi" | "drift_ks") =>
                    {
                        f.params.args.first()
                    }
                    _ => None,
                };
                if let Some(Expr::Literal(value, _)) = first
                    && let Ok(reference) = model_reference(Kind::Predict, Some(value))
                {
                    found.push(reference);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

/// Register the model functions on `ctx`.
pub fn register(ctx: &SessionContext, models: &Arc<Models>) {
    for kind in [Kind::Predict, Kind::Proba, Kind::Distance] {
        ctx.register_udf(ScalarUDF::new_from_impl(PredictFunction {
            kind,
            models: Arc::clone(models),
            // Volatile: never folded at planning, so each batch uses the version active then.
            signature: Signature::variadic_any(Volatility::Volatile),
        }));
    }
    ctx.register_udtf(
        "evaluate",
        Arc::new(Evaluate {
            models: Arc::clone(models),
        }),
    );
}
