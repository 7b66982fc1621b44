//! Pure statistics used by the collector's query API and by the prediction–feedback join.
//!
//! This module owns the numerical definitions, and nothing else: no I/O, no state, no
//! dependencies beyond `std`. It covers
//!
//! - quantiles of explicit-bucket histograms with Prometheus' `histogram_quantile` semantics
//!   ([`histogram_quantile`]);
//! - drift between two binned distributions: population stability index and the two-sample
//!   Kolmogorov–Smirnov statistic with its asymptotic p-value ([`drift`], [`Drift`]);
//! - quality of scored binary predictions joined with their feedback: ROC AUC ([`auc`]),
//!   accuracy at the 0.5 threshold ([`accuracy`]) and expected calibration error
//!   ([`calibration_error`]);
//! - ranking quality of one served ranking ([`ndcg_at_k`]).
//!
//! Every function returns `None` rather than a NaN or a panic when its answer is undefined for
//! the input; each function's documentation lists those cases.

/// Prometheus `histogram_quantile` semantics.
///
/// Computes the `q`-quantile of an explicit-bucket histogram the way Prometheus'
/// `bucketQuantile` (`promql/quantile.go`) does, so that the query API and `PromQL` dashboards
/// agree on the same data.
///
/// - `bounds` are the explicit upper bounds of the finite buckets, strictly ascending and finite
///   (as in an OTLP histogram data point).
/// - `counts` are the per-bucket counts, **not** cumulative: `counts[i]` counts the
///   observations in `(bounds[i-1], bounds[i]]`, and the last entry is the `+Inf` bucket, so
///   `counts.len() == bounds.len() + 1`.
///
/// With `total` the sum of the counts and `rank = q * total`, the answer lies in the first
/// bucket whose cumulative count is `>= rank`:
///
/// - if that is the `+Inf` bucket, the answer is the highest finite bound (`None` when there is
///   no finite bound at all, i.e. `bounds` is empty);
/// - if it is the first bucket and its upper bound is `<= 0`, the answer is that upper bound
///   (Prometheus does not interpolate below a non-positive first bound);
/// - otherwise the answer is linearly interpolated inside the bucket,
///   `lower + (upper - lower) * (rank - cumulative_before) / count_in_bucket`, where the lower
///   bound of the first bucket is taken as 0.
///
/// For `q` in `(0, 1]` this is exactly Prometheus' answer. For `rank == 0` (`q == 0`, or a
/// `q` so small that the product underflows) Prometheus interpolates inside the first bucket and
/// returns NaN when that bucket is empty; here the search instead skips empty buckets and
/// returns the lower bound of the first non-empty bucket (with the same first-bucket and `+Inf`
/// rules as above), which equals Prometheus' answer whenever Prometheus' answer is a number.
///
/// Returns `None` when `q` is NaN or outside `[0, 1]`, when
/// `counts.len() != bounds.len() + 1`, when the total count is 0, when a count is negative or
/// not finite, when a bound is not finite, or when the bounds are not strictly ascending.
pub fn histogram_quantile(q: f64, bounds: &[f64], counts: &[f64]) -> Option<f64> {
    if q.is_nan() || !(0.0..=1.0).contains(&q) || counts.len() != bounds.len() + 1 {
        return None;
    }
    if bounds.iter().any(|b| !b.is_finite()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    if counts.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return None;
    }
    // Cumulative counts, accumulated in the same order as the total so that the last one equals
    // the total exactly.
    let cumulative: Vec<f64> = counts
        .iter()
        .scan(0.0, |sum, c| {
            *sum += c;
            Some(*sum)
        })
        .collect();
    let total = *cumulative.last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let finite = bounds.len();
    // First finite bucket whose cumulative count reaches the rank; `finite` means the +Inf
    // bucket. With rank 0 every bucket qualifies, so empty buckets are skipped explicitly.
    let bucket = cumulative[..finite]
        .iter()
        .position(|&c| if rank > 0.0 { c >= rank } else { c > 0.0 })
        .unwrap_or(finite);
    if bucket == finite {
        return bounds.last().copied();
    }
    let upper = bounds[bucket];
    if bucket == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, before) = if bucket == 0 {
        (0.0, 0.0)
    } else {
        (bounds[bucket - 1], cumulative[bucket - 1])
    };
    if rank == 0.0 {
        // `bucket` is the first non-empty bucket; the quantile is its lower bound.
        return Some(lower);
    }
    let in_bucket = counts[bucket];
    Some(lower + (upper - lower) * ((rank - before) / in_bucket))
}

/// Smallest proportion used in the PSI terms: a bucket's proportion below this (typically an
/// empty bucket) is raised to it, so that `ln(a / e)` stays finite.
const PSI_FLOOR: f64 = 1e-4;

/// Drift between two binned distributions with the same bounds.
///
/// Produced by [`drift`] from per-bucket counts of a baseline window and a current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Population stability index, `Σ (aᵢ − eᵢ)·ln(aᵢ / eᵢ)` over buckets, with `e` the
    /// baseline proportions and `a` the window proportions, each floored at `1e-4`. 0 for
    /// identical distributions; conventionally < 0.1 is stable and > 0.25 is a major shift.
    pub psi: f64,
    /// Two-sample Kolmogorov–Smirnov statistic `D`: the largest absolute difference of the two
    /// cumulative proportions over the bucket edges, in `[0, 1]`. On binned data this is a lower
    /// bound of the statistic on the unbinned observations.
    pub ks_statistic: f64,
    /// Asymptotic p-value of `D` under "same distribution", in `[0, 1]`; because `D` is a lower
    /// bound on binned data, this p-value is an upper bound (drift is, if anything, understated).
    pub ks_p_value: f64,
}

/// Drift between two binned distributions with the same bounds.
///
/// `baseline` and `window` are per-bucket counts (not cumulative) over the same buckets.
///
/// - **PSI**: `Σ (aᵢ − eᵢ)·ln(aᵢ / eᵢ)` with `eᵢ = baseline[i] / Σ baseline` and
///   `aᵢ = window[i] / Σ window`. Each proportion is floored at `1e-4` before the term is
///   computed (the floored proportions are not renormalised), so a bucket empty on one side
///   contributes a large but finite term instead of an infinite one.
/// - **KS statistic**: `D = maxᵢ |F_baseline(i) − F_window(i)|`, with `F` the cumulative
///   proportions at each bucket's upper edge. The observations inside a bucket are not
///   distinguishable, so with binned data `D` is a **lower bound** of the statistic that the
///   unbinned observations would give (the supremum may fall inside a bucket).
/// - **KS p-value**: the asymptotic two-sample Kolmogorov distribution
///   `Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²)` at
///   `λ = (√nₑ + 0.12 + 0.11/√nₑ)·D`, `nₑ = n₁n₂/(n₁+n₂)`, where `n₁` and `n₂` are the two
///   totals (Numerical Recipes' `probks` with Stephens' small-sample correction), clamped to
///   `[0, 1]`. `Q_KS` is 1 for `λ < 1e-3` and whenever the series does not converge within 100
///   terms (as in Numerical Recipes; it only fails to converge for small `λ`, where the true
///   value is 1 to many digits). `D == 0` therefore gives a p-value of 1.
///
/// Returns `None` when the lengths differ, the inputs are empty, either total is 0, or any count
/// is negative or not finite.
pub fn drift(baseline: &[f64], window: &[f64]) -> Option<Drift> {
    if baseline.len() != window.len() || baseline.is_empty() {
        return None;
    }
    if baseline
        .iter()
        .chain(window)
        .any(|c| !c.is_finite() || *c < 0.0)
    {
        return None;
    }
    let n1: f64 = baseline.iter().sum();
    let n2: f64 = window.iter().sum();
    if n1 <= 0.0 || n2 <= 0.0 || !n1.is_finite() || !n2.is_finite() {
        return None;
    }

    let mut psi = 0.0;
    let mut cum_e = 0.0;
    let mut cum_a = 0.0;
    let mut d: f64 = 0.0;
    for (b, w) in baseline.iter().zip(window) {
        let e = b / n1;
        let a = w / n2;
        let (ef, af) = (e.max(PSI_FLOOR), a.max(PSI_FLOOR));
        psi += (af - ef) * (af / ef).ln();
        cum_e += e;
        cum_a += a;
        d = d.max((cum_e - cum_a).abs());
    }
    // Rounding can push the cumulative difference a hair above 1; D is a difference of two
    // proportions.
    let d = d.min(1.0);
    let n_e = n1 * n2 / (n1 + n2);
    let sqrt_ne = n_e.sqrt();
    let lambda = (sqrt_ne + 0.12 + 0.11 / sqrt_ne) * d;
    let p = probks(lambda).clamp(0.0, 1.0);
    Some(Drift {
        psi,
        ks_statistic: d,
        ks_p_value: p,
    })
}

/// Kolmogorov's survival function `Q_KS(λ) = 2 Σ_{j≥1} (−1)^{j−1} exp(−2 j² λ²)`, as
/// Numerical Recipes' `probks`: the sum stops when a term is below 0.1% of the previous term or
/// below 1e-8 of the sum; 1 when `λ < 1e-3` or when 100 terms do not converge.
fn probks(lambda: f64) -> f64 {
    const EPS1: f64 = 1e-3;
    const EPS2: f64 = 1e-8;
    if lambda.is_nan() || lambda < 1e-3 {
        return 1.0;
    }
    let a2 = -2.0 * lambda * lambda;
    let mut fac = 2.0;
    let mut sum = 0.0;
    let mut term_before: f64 = 0.0;
    for j in 1..=100 {
        let j = f64::from(j);
        let term = fac * (a2 * j * j).exp();
        sum += term;
        if term.abs() <= EPS1 * term_before || term.abs() <= EPS2 * sum {
            return sum;
        }
        fac = -fac;
        term_before = term.abs();
    }
    1.0
}

/// Area under the ROC curve (Mann–Whitney U with ties counted half).
///
/// `scored` holds `(score, label)` pairs, `true` being the positive class. The answer is the
/// probability that a random positive scores higher than a random negative, a tied pair counting
/// one half: `(R₊ − n₊(n₊+1)/2) / (n₊·n₋)` with `R₊` the sum of the positives' 1-based ranks
/// among all scores, tied scores sharing their average rank. 1 for a perfect ranking, 0.5 for
/// constant scores, 0 for a perfectly inverted one. `-0.0` and `0.0` are the same score.
///
/// Runs in `O(n log n)` (one sort) and `O(n)` extra memory.
///
/// Returns `None` when there is no positive, no negative (so also when `scored` is empty), or
/// when a score is NaN.
pub fn auc(scored: &[(f32, bool)]) -> Option<f64> {
    if scored.iter().any(|(s, _)| s.is_nan()) {
        return None;
    }
    let positives = scored.iter().filter(|(_, label)| *label).count();
    let negatives = scored.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut sorted: Vec<(f32, bool)> = scored.to_vec();
    sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));

    let mut positive_rank_sum = 0.0_f64;
    let mut start = 0;
    while start < sorted.len() {
        // The run of scores tied with `sorted[start]` (`total_cmp` keeps -0.0 and 0.0 adjacent,
        // and `==` joins them).
        let mut end = start + 1;
        while end < sorted.len() && sorted[end].0 == sorted[start].0 {
            end += 1;
        }
        // 1-based ranks start+1 ..= end share their average.
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = sorted[start..end].iter().filter(|(_, l)| *l).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let n_pos = positives as f64;
    let n_neg = negatives as f64;
    let u = positive_rank_sum - n_pos * (n_pos + 1.0) / 2.0;
    Some(u / (n_pos * n_neg))
}

/// Fraction of predictions that match their label, a score `>= 0.5` predicting the positive
/// class (a score of exactly 0.5 counts as positive).
///
/// Returns `None` when `scored` is empty or a score is NaN.
pub fn accuracy(scored: &[(f32, bool)]) -> Option<f64> {
    if scored.is_empty() || scored.iter().any(|(s, _)| s.is_nan()) {
        return None;
    }
    let correct = scored
        .iter()
        .filter(|(score, label)| (*score >= 0.5) == *label)
        .count();
    Some(correct as f64 / scored.len() as f64)
}

/// Expected calibration error of scores read as probabilities of the positive class.
///
/// Scores are clamped into `[0, 1]` and put in `bins` equal-width bins over `[0, 1]`: bin `b`
/// holds `[b/bins, (b+1)/bins)`, and the last bin also holds a score of exactly 1.0. The answer
/// is `Σ_b (n_b / N)·|mean score_b − fraction positive_b|` over the non-empty bins, in
/// `[0, 1]`; 0 when, in every bin, the mean score equals the observed positive rate.
///
/// Returns `None` when `scored` is empty, `bins == 0`, or a score is NaN.
pub fn calibration_error(scored: &[(f32, bool)], bins: usize) -> Option<f64> {
    if scored.is_empty() || bins == 0 || scored.iter().any(|(s, _)| s.is_nan()) {
        return None;
    }
    // Per bin: (count, sum of scores, positives).
    let mut acc = vec![(0_usize, 0.0_f64, 0_usize); bins];
    for &(score, label) in scored {
        let s = f64::from(score.clamp(0.0, 1.0));
        // Truncation is the floor here (s >= 0); 1.0 lands in `bins` and is moved to the last bin.
        let b = ((s * bins as f64) as usize).min(bins - 1);
        let slot = &mut acc[b];
        slot.0 += 1;
        slot.1 += s;
        slot.2 += usize::from(label);
    }
    let n = scored.len() as f64;
    let ece = acc
        .iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|&(count, score_sum, positives)| {
            let c = count as f64;
            (c / n) * (score_sum / c - positives as f64 / c).abs()
        })
        .sum();
    Some(ece)
}

/// NDCG@k of one ranking.
///
/// `relevances` are the graded relevances of the items in the order they were served. With gain
/// `2^rel − 1` and discount `1 / log2(i + 2)` at 0-based position `i`,
/// `DCG@k = Σ_{i<k} (2^relᵢ − 1) / log2(i + 2)` over the served order, and `IDCG@k` is the same
/// sum over the relevances sorted in descending order (the best possible order of the same
/// items). The answer is `DCG@k / IDCG@k`, in `[0, 1]`. When `k` exceeds the number of items,
/// all items count.
///
/// Returns `None` when `k == 0`, when `IDCG@k == 0` (no item has a positive relevance, including
/// an empty ranking), or when a relevance is negative or not finite.
pub fn ndcg_at_k(relevances: &[f64], k: usize) -> Option<f64> {
    if k == 0 || relevances.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return None;
    }
    let dcg = |rels: &[f64]| -> f64 {
        rels.iter()
            .take(k)
            .enumerate()
            .map(|(i, rel)| (rel.exp2() - 1.0) / (i as f64 + 2.0).log2())
            .sum()
    };
    let mut ideal = relevances.to_vec();
    ideal.sort_unstable_by(|a, b| b.total_cmp(a));
    let idcg = dcg(&ideal);
    if idcg <= 0.0 || !idcg.is_finite() {
        return None;
    }
    Some(dcg(relevances) / idcg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!(
            (actual - expected).abs() <= tolerance,
            "expected {expected}, got {actual} (tolerance {tolerance})"
        );
    }

    // bounds [1, 2, 4], per-bucket counts [2, 3, 4, 1] (last = +Inf), total 10.
    // Cumulative: le=1 → 2, le=2 → 5, le=4 → 9, +Inf → 10.
    const BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
    const COUNTS: [f64; 4] = [2.0, 3.0, 4.0, 1.0];

    #[test]
    fn histogram_quantile_interpolates_like_prometheus() {
        let quantile = |q| histogram_quantile(q, &BOUNDS, &COUNTS).unwrap();
        // rank 1 → first bucket (0, 1]: 0 + 1 * 1/2.
        close(quantile(0.1), 0.5, 1e-12);
        // rank 2.5 → bucket (1, 2]: 1 + 1 * (2.5 - 2)/3.
        close(quantile(0.25), 1.0 + 0.5 / 3.0, 1e-12);
        // rank 5 → bucket (1, 2] exactly at its top: 1 + 1 * 3/3.
        close(quantile(0.5), 2.0, 1e-12);
        // rank 7 → bucket (2, 4]: 2 + 2 * (7 - 5)/4.
        close(quantile(0.7), 3.0, 1e-12);
        // rank 9 → bucket (2, 4] at its top.
        close(quantile(0.9), 4.0, 1e-12);
        // rank 2 → cumulative 2 >= 2 already in the first bucket: its upper bound.
        close(quantile(0.2), 1.0, 1e-12);
    }

    #[test]
    fn histogram_quantile_inf_bucket_returns_highest_finite_bound() {
        // rank 9.5 and 10 are only reached in the +Inf bucket.
        assert_eq!(histogram_quantile(0.95, &BOUNDS, &COUNTS), Some(4.0));
        assert_eq!(histogram_quantile(1.0, &BOUNDS, &COUNTS), Some(4.0));
        // Everything in +Inf.
        assert_eq!(histogram_quantile(0.5, &[1.0], &[0.0, 5.0]), Some(1.0));
        // No finite bound at all.
        assert_eq!(histogram_quantile(0.5, &[], &[5.0]), None);
    }

    #[test]
    fn histogram_quantile_first_bucket_rules() {
        // First upper bound <= 0: no interpolation below it.
        let bounds = [-1.0, 0.0, 1.0];
        let counts = [2.0, 2.0, 0.0, 0.0];
        assert_eq!(histogram_quantile(0.25, &bounds, &counts), Some(-1.0));
        // rank 3 → bucket (-1, 0]: -1 + 1 * (3 - 2)/2.
        close(
            histogram_quantile(0.75, &bounds, &counts).unwrap(),
            -0.5,
            1e-12,
        );
        // First upper bound exactly 0 is also returned as is.
        assert_eq!(
            histogram_quantile(0.5, &[0.0, 1.0], &[4.0, 0.0, 0.0]),
            Some(0.0)
        );
        // Positive first bound: lower bound 0. rank 1.5 of 3 in (0, 10]: 10 * 1.5/3.
        close(
            histogram_quantile(0.5, &[10.0], &[3.0, 0.0]).unwrap(),
            5.0,
            1e-12,
        );
    }

    #[test]
    fn histogram_quantile_q_zero_is_lower_bound_of_first_non_empty_bucket() {
        assert_eq!(histogram_quantile(0.0, &BOUNDS, &COUNTS), Some(0.0));
        assert_eq!(
            histogram_quantile(0.0, &BOUNDS, &[0.0, 3.0, 4.0, 1.0]),
            Some(1.0)
        );
        assert_eq!(
            histogram_quantile(0.0, &BOUNDS, &[0.0, 0.0, 0.0, 1.0]),
            Some(4.0)
        );
        assert_eq!(
            histogram_quantile(0.0, &[-1.0, 0.0], &[1.0, 0.0, 0.0]),
            Some(-1.0)
        );
    }

    #[test]
    fn histogram_quantile_rejects_undefined_inputs() {
        assert_eq!(histogram_quantile(f64::NAN, &BOUNDS, &COUNTS), None);
        assert_eq!(histogram_quantile(-0.1, &BOUNDS, &COUNTS), None);
        assert_eq!(histogram_quantile(1.1, &BOUNDS, &COUNTS), None);
        assert_eq!(histogram_quantile(0.5, &BOUNDS, &COUNTS[..3]), None);
        assert_eq!(histogram_quantile(0.5, &BOUNDS, &[0.0; 4]), None);
        assert_eq!(
            histogram_quantile(0.5, &BOUNDS, &[1.0, -1.0, 1.0, 1.0]),
            None
        );
        assert_eq!(histogram_quantile(0.5, &[2.0, 1.0], &[1.0, 1.0, 1.0]), None);
        assert_eq!(
            histogram_quantile(0.5, &[1.0, f64::INFINITY], &[1.0, 1.0, 1.0]),
            None
        );
    }

    #[test]
    fn probks_matches_independent_values() {
        // Reference values from the series summed to 200 terms (Python, double precision).
        close(probks(1.0), 0.269_999_671_677_354_56, 1e-9);
        close(probks(0.5), 0.963_945_243_664_875_1, 1e-9);
        close(probks(2.0), 0.000_670_925_255_779_695_3, 1e-12);
        assert_eq!(probks(0.0), 1.0);
        assert_eq!(probks(1e-4), 1.0);
        // Small λ: the series does not converge in 100 terms → 1, as in Numerical Recipes.
        assert_eq!(probks(0.01), 1.0);
        assert!(probks(5.0) < 1e-20);
    }

    #[test]
    fn drift_of_identical_distributions_is_zero() {
        let d = drift(&[10.0, 20.0, 30.0, 40.0], &[10.0, 20.0, 30.0, 40.0]).unwrap();
        assert_eq!(
            d,
            Drift {
                psi: 0.0,
                ks_statistic: 0.0,
                ks_p_value: 1.0
            }
        );
        // Same proportions, different totals.
        let d = drift(&[10.0, 20.0, 30.0], &[1.0, 2.0, 3.0]).unwrap();
        close(d.psi, 0.0, 1e-12);
        close(d.ks_statistic, 0.0, 1e-12);
        assert_eq!(d.ks_p_value, 1.0);
    }

    #[test]
    fn drift_two_bucket_hand_case() {
        // e = [0.5, 0.5], a = [0.8, 0.2]:
        // PSI = 0.3·ln(0.8/0.5) + (−0.3)·ln(0.2/0.5) = 0.3·(ln 1.6 − ln 0.4) = 0.3·ln 4.
        // D = |0.5 − 0.8| = 0.3 at the first edge (the second edge is 1 vs 1).
        // nₑ = 100·100/200 = 50, λ = (√50 + 0.12 + 0.11/√50)·0.3 ≈ 2.161987,
        // Q_KS(λ) ≈ 1.7421e-4 (series summed independently).
        let d = drift(&[50.0, 50.0], &[80.0, 20.0]).unwrap();
        close(d.psi, 0.3 * 4f64.ln(), 1e-12);
        close(d.ks_statistic, 0.3, 1e-12);
        close(d.ks_p_value, 1.742_132_310_530_193_5e-4, 1e-9);
        assert!(d.ks_p_value < 0.01);
        // PSI is symmetric in the two distributions.
        close(
            drift(&[80.0, 20.0], &[50.0, 50.0]).unwrap().psi,
            0.3 * 4f64.ln(),
            1e-12,
        );
    }

    #[test]
    fn drift_floors_empty_buckets() {
        // e = [1, 0 → 1e-4], a = [0.5, 0.5]:
        // PSI = (0.5 − 1)·ln(0.5) + (0.5 − 1e-4)·ln(0.5/1e-4) ≈ 4.604318.
        let d = drift(&[100.0, 0.0], &[50.0, 50.0]).unwrap();
        close(d.psi, 4.604_318_466_668_95, 1e-9);
        assert!(d.psi.is_finite());
        close(d.ks_statistic, 0.5, 1e-12);
    }

    #[test]
    fn drift_small_samples_are_not_significant() {
        // D = 0.5 on n₁ = n₂ = 2 (nₑ = 1): λ = (1 + 0.12 + 0.11)·0.5 = 0.615.
        let d = drift(&[1.0, 1.0], &[2.0, 0.0]).unwrap();
        close(d.ks_statistic, 0.5, 1e-12);
        assert!(d.ks_p_value > 0.5, "p = {}", d.ks_p_value);
        close(d.ks_p_value, probks(0.615), 1e-15);
    }

    #[test]
    fn drift_rejects_undefined_inputs() {
        assert_eq!(drift(&[1.0, 2.0], &[1.0]), None);
        assert_eq!(drift(&[], &[]), None);
        assert_eq!(drift(&[0.0, 0.0], &[1.0, 1.0]), None);
        assert_eq!(drift(&[1.0, 1.0], &[0.0, 0.0]), None);
        assert_eq!(drift(&[1.0, -1.0, 2.0], &[1.0, 1.0, 1.0]), None);
        assert_eq!(drift(&[1.0, f64::NAN], &[1.0, 1.0]), None);
    }

    /// O(n²) reference: pairs (positive, negative) where the positive scores higher, ties half.
    fn auc_brute_force(scored: &[(f32, bool)]) -> f64 {
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for &(sp, lp) in scored {
            for &(sn, ln) in scored {
                if lp && !ln {
                    pairs += 1.0;
                    if sp > sn {
                        wins += 1.0;
                    } else if sp == sn {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn auc_hand_cases() {
        // The scikit-learn example: y = [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] → 0.75.
        let scored = [(0.1, false), (0.4, false), (0.35, true), (0.8, true)];
        close(auc(&scored).unwrap(), 0.75, 1e-12);
        close(auc(&[(0.5, true), (0.5, false)]).unwrap(), 0.5, 1e-12);
        close(auc(&[(0.9, true), (0.1, false)]).unwrap(), 1.0, 1e-12);
        close(auc(&[(0.1, true), (0.9, false)]).unwrap(), 0.0, 1e-12);
        // -0.0 and 0.0 are one tie.
        close(auc(&[(-0.0, true), (0.0, false)]).unwrap(), 0.5, 1e-12);
        // Ties: pos {0.5, 0.7}, neg {0.5, 0.3}: pairs (0.5,0.5)=½, (0.5,0.3)=1,
        // (0.7,0.5)=1, (0.7,0.3)=1 → 3.5/4.
        let scored = [(0.5, true), (0.7, true), (0.5, false), (0.3, false)];
        close(auc(&scored).unwrap(), 0.875, 1e-12);
    }

    #[test]
    fn auc_matches_brute_force_with_ties() {
        // Fixed pseudo-random data (LCG), scores quantised to tenths so ties are common; the
        // label is correlated with the score so the AUC is far from 0.5.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        let scored: Vec<(f32, bool)> = (0..300)
            .map(|_| {
                let score = (next() % 11) as f32 / 10.0;
                let label = (next() % 100) as f32 / 100.0 < 0.2 + 0.6 * score;
                (score, label)
            })
            .collect();
        let expected = auc_brute_force(&scored);
        assert!(expected > 0.6 && expected < 0.95, "expected = {expected}");
        close(auc(&scored).unwrap(), expected, 1e-12);
        // Order of the input does not matter.
        let mut reversed = scored.clone();
        reversed.reverse();
        close(auc(&reversed).unwrap(), expected, 1e-12);
    }

    #[test]
    fn auc_rejects_undefined_inputs() {
        assert_eq!(auc(&[]), None);
        assert_eq!(auc(&[(0.3, true), (0.9, true)]), None);
        assert_eq!(auc(&[(0.3, false), (0.9, false)]), None);
        assert_eq!(auc(&[(f32::NAN, true), (0.9, false)]), None);
    }

    #[test]
    fn accuracy_uses_inclusive_half_threshold() {
        assert_eq!(accuracy(&[(0.5, true)]), Some(1.0));
        assert_eq!(accuracy(&[(0.5, false)]), Some(0.0));
        // 0.49→neg (wrong), 0.2→neg (right), 0.9→pos (wrong), 0.7→pos (right).
        let scored = [(0.49, true), (0.2, false), (0.9, false), (0.7, true)];
        assert_eq!(accuracy(&scored), Some(0.5));
        assert_eq!(accuracy(&[]), None);
        assert_eq!(accuracy(&[(f32::NAN, true)]), None);
    }

    #[test]
    fn calibration_error_of_calibrated_scores_is_zero() {
        // Bin [0, 0.5): four scores 0.25, one positive → 0.25 vs 0.25.
        // Bin [0.5, 1]: four scores 0.75, three positive → 0.75 vs 0.75.
        let scored = [
            (0.25, true),
            (0.25, false),
            (0.25, false),
            (0.25, false),
            (0.75, true),
            (0.75, true),
            (0.75, true),
            (0.75, false),
        ];
        assert_eq!(calibration_error(&scored, 2), Some(0.0));
    }

    #[test]
    fn calibration_error_hand_case() {
        // bins = 2. Bin 0: scores 0.1 (neg), 0.3 (pos) → mean 0.2, positive rate 0.5, gap 0.3.
        // Bin 1: 0.8 (pos), 0.9 (neg) → mean 0.85, rate 0.5, gap 0.35.
        // ECE = 2/4·0.3 + 2/4·0.35 = 0.325.
        let scored = [(0.1, false), (0.3, true), (0.8, true), (0.9, false)];
        close(calibration_error(&scored, 2).unwrap(), 0.325, 1e-6);
        // One bin: mean 0.525 vs rate 0.5.
        close(calibration_error(&scored, 1).unwrap(), 0.025, 1e-6);
    }

    #[test]
    fn calibration_error_edges() {
        // 1.0 goes to the last bin (not out of range), and counts as fully confident.
        assert_eq!(calibration_error(&[(1.0, true)], 4), Some(0.0));
        assert_eq!(calibration_error(&[(1.0, false)], 4), Some(1.0));
        // Out-of-range scores are clamped to 0 and 1.
        assert_eq!(
            calibration_error(&[(1.5, true), (-0.5, false)], 2),
            Some(0.0)
        );
        assert_eq!(calibration_error(&[], 10), None);
        assert_eq!(calibration_error(&[(0.5, true)], 0), None);
        assert_eq!(calibration_error(&[(f32::NAN, true)], 10), None);
    }

    #[test]
    fn ndcg_hand_worked_example() {
        // Served relevances [3, 2, 3, 0, 1, 2], gains 2^rel − 1 = [7, 3, 7, 0, 1, 3],
        // discounts 1/log2(i + 2) = [1, 0.630930, 0.5, 0.430677, 0.386853, 0.356207].
        // DCG  = 7 + 3·0.630930 + 7·0.5 + 0 + 1·0.386853 + 3·0.356207
        //      = 7 + 1.892789 + 3.5 + 0.386853 + 1.068622 = 13.848264.
        // Ideal order [3, 3, 2, 2, 1, 0], gains [7, 7, 3, 3, 1, 0]:
        // IDCG = 7 + 7·0.630930 + 3·0.5 + 3·0.430677 + 1·0.386853 + 0
        //      = 7 + 4.416509 + 1.5 + 1.292030 + 0.386853 = 14.595391.
        // NDCG@6 = 13.848264 / 14.595391 ≈ 0.948811.
        // (With linear gain rel instead of 2^rel − 1 it would be ≈ 0.9608.)
        let relevances = [3.0, 2.0, 3.0, 0.0, 1.0, 2.0];
        close(
            ndcg_at_k(&relevances, 6).unwrap(),
            0.948_810_748_567_898_5,
            1e-9,
        );
        // @3: (7 + 1.892789 + 3.5) / (7 + 4.416509 + 1.5) = 12.392789 / 12.916509 ≈ 0.959454.
        close(
            ndcg_at_k(&relevances, 3).unwrap(),
            0.959_453_514_592_679_6,
            1e-9,
        );
        // k beyond the list: all items, same as @6.
        close(
            ndcg_at_k(&relevances, 100).unwrap(),
            0.948_810_748_567_898_5,
            1e-9,
        );
    }

    #[test]
    fn ndcg_edges() {
        close(ndcg_at_k(&[3.0, 2.0, 1.0, 0.0], 4).unwrap(), 1.0, 1e-12);
        // The only relevant item is served second and k = 1: DCG 0, IDCG 7.
        assert_eq!(ndcg_at_k(&[0.0, 3.0], 1), Some(0.0));
        assert_eq!(ndcg_at_k(&[1.0, 2.0], 0), None);
        assert_eq!(ndcg_at_k(&[0.0, 0.0], 2), None);
        assert_eq!(ndcg_at_k(&[], 5), None);
        assert_eq!(ndcg_at_k(&[1.0, -1.0], 2), None);
        assert_eq!(ndcg_at_k(&[1.0, f64::NAN], 2), None);
    }
}
