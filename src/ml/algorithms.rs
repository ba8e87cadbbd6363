//! The algorithms `CREATE MODEL ... USING` names, their hyperparameters (`WITH (...)`), and the
//! fitted models, all from linfa 0.8.
//!
//! Training takes the encoded feature matrix ([`super::features`]) and the target: a float
//! per row for regression, a class index per row for classifiers (the index into the sorted
//! training labels, [`super::model::Target`]), nothing for k-means. A fitted model predicts a
//! float or a class/cluster index per row; classifiers other than the decision tree also give
//! class probabilities, k-means the distance to the nearest centroid.
//!
//! FTRL (follow the regularized leader, proximal: a logistic model for online learning), naive
//! Bayes and k-means also learn incrementally ([`learn`]): one step per mini-batch, from the
//! model so far, which is how `mode = 'online'` trains ([`super::online`]). A batch fit of FTRL
//! is the same steps over the training rows in order, `epochs` times.

use linfa::prelude::*;
use linfa_bayes::{GaussianNb, NaiveBayes};
use linfa_clustering::{IncrKMeansError, KMeans};
use linfa_ftrl::Ftrl;
use linfa_linear::{FittedLinearRegression, LinearRegression};
use linfa_logistic::{
    FittedLogisticRegression, LogisticRegression, MultiFittedLogisticRegression,
    MultiLogisticRegression,
};
use linfa_nn::distance::L2Dist;
use linfa_trees::{DecisionTree, SplitQuality};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `USING` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    LinearRegression,
    LogisticRegression,
    DecisionTree,
    NaiveBayes,
    KMeans,
    Ftrl,
}

/// Options every algorithm takes, besides its own hyperparameters.
pub const COMMON_OPTIONS: &[&str] = &["test_fraction", "standardize", "seed"];

impl Algorithm {
    pub fn parse(name: &str) -> Result<Algorithm> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "linear_regression" | "linear" => Algorithm::LinearRegression,
            "logistic_regression" | "logistic" => Algorithm::LogisticRegression,
            "decision_tree" | "tree" => Algorithm::DecisionTree,
            "naive_bayes" | "gaussian_naive_bayes" | "gaussian_nb" => Algorithm::NaiveBayes,
            "kmeans" | "k_means" => Algorithm::KMeans,
            "ftrl" => Algorithm::Ftrl,
            other => {
                return Err(Error::InvalidValue(format!(
                    "unknown algorithm \"{other}\"; known: linear_regression, \
                     logistic_regression, decision_tree, naive_bayes, kmeans, ftrl"
                )));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::LinearRegression => "linear_regression",
            Algorithm::LogisticRegression => "logistic_regression",
            Algorithm::DecisionTree => "decision_tree",
            Algorithm::NaiveBayes => "naive_bayes",
            Algorithm::KMeans => "kmeans",
            Algorithm::Ftrl => "ftrl",
        }
    }

    /// What kind of target it learns.
    pub fn task(self) -> Task {
        match self {
            Algorithm::LinearRegression => Task::Regression,
            Algorithm::LogisticRegression
            | Algorithm::DecisionTree
            | Algorithm::NaiveBayes
            | Algorithm::Ftrl => Task::Classification,
            Algorithm::KMeans => Task::Clustering,
        }
    }

    /// Its hyperparameters, with defaults, as `WITH` spells them.
    pub fn hyperparameters(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Algorithm::LinearRegression => &[("fit_intercept", "true")],
            Algorithm::LogisticRegression => &[
                ("alpha", "1.0"),
                ("max_iterations", "100"),
                ("gradient_tolerance", "0.0001"),
                ("fit_intercept", "true"),
            ],
            Algorithm::DecisionTree => &[
                ("max_depth", "10"),
                ("min_weight_split", "2"),
                ("min_weight_leaf", "1"),
                ("split_quality", "gini"),
            ],
            Algorithm::NaiveBayes => &[("var_smoothing", "1e-9")],
            Algorithm::KMeans => &[
                ("k", ""),
                ("max_iterations", "300"),
                ("tolerance", "0.0001"),
                ("n_runs", "10"),
            ],
            Algorithm::Ftrl => &[
                ("alpha", "1.0"),
                ("beta", "1.0"),
                ("l1_ratio", "0.1"),
                ("l2_ratio", "0.1"),
                ("fit_intercept", "true"),
                ("epochs", "1"),
            ],
        }
    }

    /// Whether `mode = 'online'` can train it ([`learn`]).
    pub fn learns_online(self) -> bool {
        matches!(
            self,
            Algorithm::Ftrl | Algorithm::NaiveBayes | Algorithm::KMeans
        )
    }
}

/// What an algorithm learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Regression,
    Classification,
    Clustering,
}

/// Hyperparameter values as given, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Hyperparameters(pub Vec<(String, String)>);

impl Hyperparameters {
    /// The algorithm's hyperparameters from `options` (other keys are checked by the caller).
    pub fn resolve(algorithm: Algorithm, options: &[(String, String)]) -> Hyperparameters {
        Hyperparameters(
            algorithm
                .hyperparameters()
                .iter()
                .map(|(name, default)| {
                    let value = options
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map_or_else(|| default.to_string(), |(_, v)| v.clone());
                    (name.to_string(), value)
                })
                .collect(),
        )
    }

    fn raw(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T> {
        let raw = self.raw(name);
        raw.trim().parse().map_err(|_| {
            Error::InvalidValue(if raw.is_empty() {
                format!("option \"{name}\" is required")
            } else {
                format!("option \"{name}\" must be a number, got \"{raw}\"")
            })
        })
    }

    fn flag(&self, name: &str) -> Result<bool> {
        super::parse_bool(name, self.raw(name))
    }
}

/// A fitted model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Fitted {
    Linear(FittedLinearRegression<f64>),
    Logistic(FittedLogisticRegression<f64, usize>),
    MultiLogistic(MultiFittedLogisticRegression<f64, usize>),
    Tree(DecisionTree<f64, usize>),
    Bayes(GaussianNb<f64, usize>),
    KMeans(KMeans<f64, L2Dist>),
    /// With `intercept`, a constant 1 is appended to every row as the bias feature.
    Ftrl {
        model: Ftrl<f64>,
        intercept: bool,
    },
}

/// Training targets.
#[derive(Debug)]
pub enum Targets {
    Values(Array1<f64>),
    /// Class indices and the number of classes.
    Classes(Array1<usize>, usize),
    None,
}

fn training_error(algorithm: Algorithm, e: impl std::fmt::Display) -> Error {
    Error::InvalidValue(format!("{} could not be trained: {e}", algorithm.name()))
}

/// Fit `algorithm` on `x` and `targets`.
pub fn fit(
    algorithm: Algorithm,
    hyper: &Hyperparameters,
    x: &Array2<f64>,
    targets: &Targets,
) -> Result<Fitted> {
    if x.nrows() == 0 {
        return Err(Error::InvalidValue(format!(
            "{} needs at least one training row; the query returned none",
            algorithm.name()
        )));
    }
    let fail = |e: &dyn std::fmt::Display| training_error(algorithm, e);
    match (algorithm, targets) {
        (Algorithm::LinearRegression, Targets::Values(y)) => {
            let data = Dataset::new(x.clone(), y.clone());
            LinearRegression::new()
                .with_intercept(hyper.flag("fit_intercept")?)
                .fit(&data)
                .map(Fitted::Linear)
                .map_err(|e| fail(&e))
        }
        (Algorithm::LogisticRegression, Targets::Classes(y, classes)) => {
            let data = Dataset::new(x.clone(), y.clone());
            if *classes < 2 {
                return Err(fail(&"the target has a single class"));
            }
            let alpha: f64 = hyper.number("alpha")?;
            let iterations: u64 = hyper.number("max_iterations")?;
            let tolerance: f64 = hyper.number("gradient_tolerance")?;
            let intercept = hyper.flag("fit_intercept")?;
            if *classes == 2 {
                LogisticRegression::default()
                    .alpha(alpha)
                    .max_iterations(iterations)
                    .gradient_tolerance(tolerance)
                    .with_intercept(intercept)
                    .fit(&data)
                    .map(Fitted::Logistic)
                    .map_err(|e| fail(&e))
            } else {
                MultiLogisticRegression::default()
                    .alpha(alpha)
                    .max_iterations(iterations)
                    .gradient_tolerance(tolerance)
                    .with_intercept(intercept)
                    .fit(&data)
                    .map(Fitted::MultiLogistic)
                    .map_err(|e| fail(&e))
            }
        }
        (Algorithm::DecisionTree, Targets::Classes(y, _)) => {
            let data = Dataset::new(x.clone(), y.clone());
            let depth: usize = hyper.number("max_depth")?;
            let quality = match hyper.raw("split_quality").to_ascii_lowercase().as_str() {
                "gini" => SplitQuality::Gini,
                "entropy" => SplitQuality::Entropy,
                other => {
                    return Err(Error::InvalidValue(format!(
                        "split_quality must be 'gini' or 'entropy', got \"{other}\""
                    )));
                }
            };
            DecisionTree::params()
                .max_depth(Some(depth))
                .min_weight_split(hyper.number("min_weight_split")?)
                .min_weight_leaf(hyper.number("min_weight_leaf")?)
                .split_quality(quality)
                .fit(&data)
                .map(Fitted::Tree)
                .map_err(|e| fail(&e))
        }
        (Algorithm::NaiveBayes, Targets::Classes(y, _)) => {
            let data = Dataset::new(x.clone(), y.clone());
            GaussianNb::params()
                .var_smoothing(hyper.number("var_smoothing")?)
                .fit(&data)
                .map(Fitted::Bayes)
                .map_err(|e| fail(&e))
        }
        (Algorithm::KMeans, Targets::None) => {
            let k: usize = hyper.number("k")?;
            if k == 0 || k > x.nrows() {
                return Err(Error::InvalidValue(format!(
                    "k must be between 1 and the number of training rows ({}), got {k}",
                    x.nrows()
                )));
            }
            let data = DatasetBase::from(x.clone());
            KMeans::params(k)
                .max_n_iterations(hyper.number("max_iterations")?)
                .tolerance(hyper.number("tolerance")?)
                .n_runs(hyper.number("n_runs")?)
                .fit(&data)
                .map(Fitted::KMeans)
                .map_err(|e| fail(&e))
        }
        (Algorithm::Ftrl, Targets::Classes(..)) => {
            let epochs: usize = hyper.number("epochs")?;
            if epochs == 0 {
                return Err(Error::InvalidValue("epochs must be at least 1".into()));
            }
            let mut model = None;
            for _ in 0..epochs {
                model = Some(learn(algorithm, hyper, model, x, targets, 1)?);
            }
            model.ok_or_else(|| Error::Internal("ftrl fitted no epoch".into()))
        }
        _ => Err(Error::Internal(format!(
            "{} trained with the wrong kind of target",
            algorithm.name()
        ))),
    }
}

/// `x` with a constant 1 column appended (FTRL's bias feature).
fn with_bias(x: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::ones((x.nrows(), x.ncols() + 1));
    out.slice_mut(ndarray::s![.., ..x.ncols()]).assign(x);
    out
}

/// Learn from `x` and `targets` starting from `model` (None: a new model), one step per
/// `step_rows` rows in order: FTRL's per-step update, naive Bayes' running class statistics,
/// a mini-batch k-means update. The result depends only on the rows and their order.
pub fn learn(
    algorithm: Algorithm,
    hyper: &Hyperparameters,
    model: Option<Fitted>,
    x: &Array2<f64>,
    targets: &Targets,
    step_rows: usize,
) -> Result<Fitted> {
    let fail = |e: &dyn std::fmt::Display| training_error(algorithm, e);
    let step_rows = step_rows.max(1);
    let mut model = model;
    let mut start = 0;
    while start < x.nrows() {
        let end = (start + step_rows).min(x.nrows());
        let rows = x.slice(ndarray::s![start..end, ..]).to_owned();
        let range = start..end;
        start = end;
        model = Some(match (algorithm, targets, model.take()) {
            (Algorithm::Ftrl, Targets::Classes(y, classes), previous) => {
                if *classes != 2 {
                    return Err(fail(&format!(
                        "ftrl is a binary classifier; the target has {classes} classes"
                    )));
                }
                let (previous, intercept) = match previous {
                    Some(Fitted::Ftrl { model, intercept }) => (Some(model), intercept),
                    None => (None, hyper.flag("fit_intercept")?),
                    Some(_) => return Err(Error::Internal("ftrl continued another model".into())),
                };
                let rows = if intercept { with_bias(&rows) } else { rows };
                let truth: Array1<bool> = y.slice(ndarray::s![range]).mapv(|c| c == 1);
                let params = Ftrl::params()
                    .alpha(hyper.number("alpha")?)
                    .beta(hyper.number("beta")?)
                    .l1_ratio(hyper.number("l1_ratio")?)
                    .l2_ratio(hyper.number("l2_ratio")?);
                let model = params
                    .fit_with(previous, &Dataset::new(rows, truth))
                    .map_err(|e| fail(&e))?;
                Fitted::Ftrl { model, intercept }
            }
            (Algorithm::NaiveBayes, Targets::Classes(y, _), previous) => {
                let previous = match previous {
                    Some(Fitted::Bayes(model)) => Some(model),
                    None => None,
                    Some(_) => {
                        return Err(Error::Internal(
                            "naive Bayes continued another model".into(),
                        ));
                    }
                };
                let labels = y.slice(ndarray::s![range]).to_owned();
                GaussianNb::params()
                    .var_smoothing(hyper.number("var_smoothing")?)
                    .fit_with(previous, &Dataset::new(rows, labels))
                    .map(Fitted::Bayes)
                    .map_err(|e| fail(&e))?
            }
            (Algorithm::KMeans, Targets::None, previous) => {
                let previous = match previous {
                    Some(Fitted::KMeans(model)) => Some(model),
                    None => None,
                    Some(_) => {
                        return Err(Error::Internal("k-means continued another model".into()));
                    }
                };
                let k: usize = hyper.number("k")?;
                if previous.is_none() && (k == 0 || k > rows.nrows()) {
                    return Err(Error::InvalidValue(format!(
                        "k must be between 1 and the rows of the first mini-batch ({}), got {k}",
                        rows.nrows()
                    )));
                }
                let params = KMeans::params(k)
                    .tolerance(hyper.number("tolerance")?)
                    .n_runs(hyper.number("n_runs")?);
                match params.fit_with(previous, &DatasetBase::from(rows)) {
                    Ok(model) | Err(IncrKMeansError::NotConverged(model)) => Fitted::KMeans(model),
                    Err(e) => return Err(fail(&e)),
                }
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "online learning with {} (ftrl, naive_bayes and kmeans learn online)",
                    algorithm.name()
                )));
            }
        });
    }
    model.ok_or_else(|| fail(&"no rows to learn from"))
}

/// What a fitted model predicts for a matrix.
#[derive(Debug)]
pub enum Predictions {
    Values(Array1<f64>),
    /// Class indices, or cluster numbers.
    Classes(Array1<usize>),
}

impl Fitted {
    pub fn predict(&self, x: &Array2<f64>) -> Predictions {
        match self {
            Fitted::Linear(m) => Predictions::Values(m.predict(x)),
            Fitted::Logistic(m) => Predictions::Classes(m.predict(x)),
            Fitted::MultiLogistic(m) => Predictions::Classes(m.predict(x)),
            Fitted::Tree(m) => Predictions::Classes(m.predict(x)),
            Fitted::Bayes(m) => Predictions::Classes(m.predict(x)),
            Fitted::KMeans(m) => Predictions::Classes(m.predict(x)),
            Fitted::Ftrl { .. } => {
                Predictions::Classes(self.ftrl_positive(x).mapv(|p| usize::from(p >= 0.5)))
            }
        }
    }

    /// FTRL's probability of the positive class per row.
    fn ftrl_positive(&self, x: &Array2<f64>) -> Array1<f64> {
        match self {
            Fitted::Ftrl { model, intercept } => {
                let p: Array1<linfa::dataset::Pr> = if *intercept {
                    model.predict(&with_bias(x))
                } else {
                    model.predict(x)
                };
                p.mapv(|p| f64::from(*p))
            }
            _ => Array1::zeros(x.nrows()),
        }
    }

    /// Per row, the probability of each class (columns in class-index order), for
    /// classifiers that give them.
    pub fn probabilities(&self, x: &Array2<f64>, classes: usize) -> Result<Array2<f64>> {
        match self {
            Fitted::Logistic(m) => {
                // linfa's "positive" class is the more frequent one in training.
                let positive = m.labels().pos.class;
                let p = m.predict_probabilities(x);
                let mut out = Array2::zeros((x.nrows(), 2));
                for (i, p) in p.iter().enumerate() {
                    out[[i, positive]] = *p;
                    out[[i, 1 - positive.min(1)]] = 1.0 - p;
                }
                Ok(out)
            }
            Fitted::MultiLogistic(m) => {
                let p = m.predict_probabilities(x);
                let mut out = Array2::zeros((x.nrows(), classes));
                for (j, class) in m.classes().iter().enumerate() {
                    if *class < classes {
                        out.column_mut(*class).assign(&p.column(j));
                    }
                }
                Ok(out)
            }
            Fitted::Bayes(m) => {
                let (p, seen) = m.predict_proba(x.view());
                let mut out = Array2::zeros((x.nrows(), classes));
                for (j, class) in seen.iter().enumerate() {
                    if **class < classes {
                        out.column_mut(**class).assign(&p.column(j));
                    }
                }
                Ok(out)
            }
            Fitted::Ftrl { .. } => {
                let p = self.ftrl_positive(x);
                let mut out = Array2::zeros((x.nrows(), 2));
                out.column_mut(1).assign(&p);
                out.column_mut(0).assign(&p.mapv(|p| 1.0 - p));
                Ok(out)
            }
            Fitted::Tree(_) => Err(Error::Unsupported(
                "PREDICT_PROBA of a decision_tree (it gives no class probabilities; use PREDICT)"
                    .into(),
            )),
            Fitted::Linear(_) | Fitted::KMeans(_) => Err(Error::Unsupported(
                "PREDICT_PROBA of a model that is not a classifier".into(),
            )),
        }
    }

    /// Per row, the distance to the nearest centroid (k-means).
    pub fn distances(&self, x: &Array2<f64>) -> Result<Array1<f64>> {
        match self {
            // transform gives squared distances.
            Fitted::KMeans(m) => Ok(m.transform(x).mapv(f64::sqrt)),
            _ => Err(Error::Unsupported(
                "PREDICT_DISTANCE of a model other than kmeans".into(),
            )),
        }
    }
}
