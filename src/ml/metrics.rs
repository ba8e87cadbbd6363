//! Model quality metrics over (actual, predicted) pairs: what a version records for its
//! holdout rows and `EVALUATE` shows.
//!
//! Classification: accuracy; precision, recall and F1 of the positive class (the greater of two
//! labels) or, with more classes, their unweighted mean over classes; with probabilities also
//! log loss and, for two classes, ROC AUC. Regression: MAE, RMSE, R². Clustering: inertia (mean
//! squared distance to the nearest centroid).

/// Accuracy, precision, recall and F1 of class predictions over `classes` classes.
pub fn classification(actual: &[usize], predicted: &[usize], classes: usize) -> Vec<(String, f64)> {
    let n = actual.len().max(1) as f64;
    let correct = actual.iter().zip(predicted).filter(|(a, p)| a == p).count() as f64;
    let per_class = |class: usize| {
        let tp = actual
            .iter()
            .zip(predicted)
            .filter(|(a, p)| **a == class && **p == class)
            .count() as f64;
        let predicted_positive = predicted.iter().filter(|p| **p == class).count() as f64;
        let actual_positive = actual.iter().filter(|a| **a == class).count() as f64;
        let precision = if predicted_positive > 0.0 {
            tp / predicted_positive
        } else {
            0.0
        };
        let recall = if actual_positive > 0.0 {
            tp / actual_positive
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        (precision, recall, f1)
    };
    let (precision, recall, f1) = if classes == 2 {
        per_class(1)
    } else {
        let all: Vec<_> = (0..classes).map(per_class).collect();
        let mean = |f: fn(&(f64, f64, f64)) -> f64| {
            all.iter().map(f).sum::<f64>() / all.len().max(1) as f64
        };
        (mean(|c| c.0), mean(|c| c.1), mean(|c| c.2))
    };
    vec![
        ("accuracy".into(), correct / n),
        ("precision".into(), precision),
        ("recall".into(), recall),
        ("f1".into(), f1),
    ]
}

/// Mean negative log-likelihood of the actual classes; probabilities are clipped to 1e-15.
pub fn log_loss(actual: &[usize], probability_of_actual: &[f64]) -> f64 {
    let n = actual.len().max(1) as f64;
    -probability_of_actual
        .iter()
        .map(|p| p.clamp(1e-15, 1.0).ln())
        .sum::<f64>()
        / n
}

/// ROC AUC of `scores` for the positive class (label true): the probability that a random
/// positive scores above a random negative, ties counting half. None without both classes.
pub fn auc(positive: &[bool], scores: &[f64]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = pairs.iter().filter(|p| p.1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum of the positives' ranks (1-based, ties given their mean rank).
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += pairs[i..=j].iter().filter(|p| p.1).count() as f64 * mean_rank;
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// MAE, RMSE and R² of value predictions.
pub fn regression(actual: &[f64], predicted: &[f64]) -> Vec<(String, f64)> {
    let n = actual.len().max(1) as f64;
    let mae = actual
        .iter()
        .zip(predicted)
        .map(|(a, p)| (a - p).abs())
        .sum::<f64>()
        / n;
    let sse: f64 = actual
        .iter()
        .zip(predicted)
        .map(|(a, p)| (a - p).powi(2))
        .sum();
    let mean = actual.iter().sum::<f64>() / n;
    let sst: f64 = actual.iter().map(|a| (a - mean).powi(2)).sum();
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { 0.0 };
    vec![
        ("mae".into(), mae),
        ("rmse".into(), (sse / n).sqrt()),
        ("r2".into(), r2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_ties_as_half() {
        assert_eq!(auc(&[false, true], &[0.1, 0.9]), Some(1.0));
        assert_eq!(auc(&[true, false], &[0.1, 0.9]), Some(0.0));
        assert_eq!(auc(&[true, false], &[0.5, 0.5]), Some(0.5));
        assert_eq!(auc(&[true, true], &[0.5, 0.6]), None);
    }

    #[test]
    fn binary_metrics_are_those_of_the_positive_class() {
        let m = classification(&[1, 1, 0, 0], &[1, 0, 1, 0], 2);
        assert_eq!(m[0], ("accuracy".to_string(), 0.5));
        assert_eq!(m[1], ("precision".to_string(), 0.5));
        assert_eq!(m[2], ("recall".to_string(), 0.5));
        let r = regression(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert_eq!(r[2], ("r2".to_string(), 1.0));
    }
}
