//! The algorithms `CREATE MODEL ... USING` names, their hyperparameters (`WITH (...)`), and the
//! fitted models, all from linfa 0.8.
//!
//! Training takes the encoded feature matrix ([`super::features`]) and the target: a float
//! per row for regression, a class index per row for classifiers (the index into the sorted
//! training labels, [`super::model::Target`]), nothing for k-means. A fitted model predicts a
//! float or a class/cluster index per row; classifiers other than the decision tree also give
//! class probabilities, k-means the distance to the nearest centroid.

use linfa::prelude::*;
use linfa_bayes::{GaussianNb, NaiveBayes};
use linfa_clustering::KMeans;
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
            other => {
                return Err(Error::InvalidValue(format!(
                    "unknown algorithm \"{other}\"; known: linear_regression, \
                     logistic_regression, decision_tree, naive_bayes, kmeans"
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
        }
    }

    /// What kind of target it learns.
    pub fn task(self) -> Task {
        match self {
            Algorithm::LinearRegression => Task::Regression,
            Algorithm::LogisticRegression | Algorithm::DecisionTree | Algorithm::NaiveBayes => {
                Task::Classification
            }
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
        }
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
        _ => Err(Error::Internal(format!(
            "{} trained with the wrong kind of target",
            algorithm.name()
        ))),
    }
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
