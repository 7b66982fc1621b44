//! The classification head and its training: softmax over `W·φ(x) + b` on frozen sentence
//! embeddings φ(x), cross-entropy loss, AdamW (decoupled weight decay, the bias not decayed),
//! inverted dropout on the embedding, mini-batches, and early stopping on the validation loss
//! (the best epoch's weights are kept). Every random choice comes from one seed.

use traffic::catalog::Rng;

/// Embedding size of the encoder (minilm-l6).
pub const DIM: usize = 384;
/// Classes: 0 no purchase intent, 1 purchase intent.
pub const CLASSES: usize = 2;

/// The head: `logits = x · W + b`, `W` of shape [DIM, CLASSES] row-major (as the ONNX graph's
/// `classifier.weight` initializer).
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// Weights, `DIM × CLASSES`.
    pub w: Vec<f32>,
    /// Bias.
    pub b: [f32; CLASSES],
}

impl Head {
    /// A head of zeros.
    #[cfg(test)]
    pub fn zeros() -> Head {
        Head {
            w: vec![0.0; DIM * CLASSES],
            b: [0.0; CLASSES],
        }
    }

    fn logits(&self, x: &[f32]) -> [f32; CLASSES] {
        let mut out = self.b;
        for (d, &xd) in x.iter().enumerate() {
            let row = &self.w[d * CLASSES..(d + 1) * CLASSES];
            for c in 0..CLASSES {
                out[c] += xd * row[c];
            }
        }
        out
    }

    /// Class probabilities of one embedding (softmax of the logits, as the served graph
    /// computes it).
    pub fn probabilities(&self, x: &[f32]) -> [f32; CLASSES] {
        softmax(self.logits(x))
    }
}

fn softmax(logits: [f32; CLASSES]) -> [f32; CLASSES] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out = [0.0; CLASSES];
    let mut sum = 0.0;
    for c in 0..CLASSES {
        out[c] = (logits[c] - max).exp();
        sum += out[c];
    }
    for v in &mut out {
        *v /= sum;
    }
    out
}

/// An embedded, labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Its text.
    pub text: String,
    /// Its embedding.
    pub x: Vec<f32>,
    /// Its class.
    pub y: u32,
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hyper {
    /// AdamW's learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay (an L2 penalty on the weights).
    pub weight_decay: f64,
    /// Share of embedding components dropped during training.
    pub dropout: f64,
    /// Examples per step.
    pub batch_size: usize,
    /// Most epochs.
    pub epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// The seed of the split, the shuffles and the dropout masks.
    pub seed: u64,
}

impl Hyper {
    /// Refuses settings that cannot train.
    pub fn check(&self) -> Result<(), String> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "--learning-rate must be a positive number, not {}",
                self.learning_rate
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "--weight-decay must be 0 or more, not {}",
                self.weight_decay
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(format!("--dropout must be in [0, 1), not {}", self.dropout));
        }
        if self.batch_size == 0 || self.epochs == 0 || self.patience == 0 {
            return Err("--batch-size, --epochs and --patience must be at least 1".into());
        }
        Ok(())
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Epoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch (with dropout).
    pub train_loss: f64,
    /// Validation loss after the epoch.
    pub validation_loss: f64,
    /// Validation accuracy after the epoch.
    pub validation_accuracy: f64,
}

/// Quality on a labelled set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Share classified right (argmax).
    pub accuracy: f64,
    /// F1 of the purchase-intent class.
    pub f1: f64,
    /// Area under the ROC curve of P(purchase intent).
    pub auc: f64,
}

/// The trained head and how training went.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The weights of the best epoch.
    pub head: Head,
    /// Every epoch run.
    pub epochs: Vec<Epoch>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Whether training stopped before the epoch limit.
    pub stopped_early: bool,
}

/// Splits `examples` into training and validation sets, stratified by class (each class
/// contributes `share` of its examples to validation, at least one).
pub fn split(examples: Vec<Example>, share: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    let mut train = Vec::new();
    let mut validation = Vec::new();
    for class in 0..CLASSES as u32 {
        let mut of_class: Vec<Example> =
            examples.iter().filter(|e| e.y == class).cloned().collect();
        shuffle(&mut of_class, &mut rng);
        let n = ((of_class.len() as f64 * share).round() as usize)
            .max(1)
            .min(of_class.len().saturating_sub(1));
        validation.extend(of_class.drain(..n));
        train.extend(of_class);
    }
    shuffle(&mut train, &mut rng);
    (train, validation)
}

fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

fn cross_entropy(p: [f32; CLASSES], y: u32) -> f64 {
    -(f64::from(p[y as usize]).max(1e-12)).ln()
}

/// Loss, accuracy, F1 and AUC of `head` on `set`.
pub fn evaluate(head: &Head, set: &[Example]) -> Metrics {
    let mut loss = 0.0;
    let (mut right, mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    let mut scored = Vec::with_capacity(set.len());
    for e in set {
        let p = head.probabilities(&e.x);
        loss += cross_entropy(p, e.y);
        let predicted = u32::from(p[1] > p[0]);
        right += usize::from(predicted == e.y);
        match (predicted, e.y) {
            (1, 1) => tp += 1,
            (1, 0) => fp += 1,
            (0, 1) => fn_ += 1,
            _ => {}
        }
        scored.push((p[1], e.y));
    }
    let n = set.len().max(1) as f64;
    let f1 = if tp == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    };
    Metrics {
        loss: loss / n,
        accuracy: right as f64 / n,
        f1,
        auc: auc(&mut scored),
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative (ties count half), from the ranks of the scores.
pub fn auc(scored: &mut [(f32, u32)]) -> f64 {
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives = scored.iter().filter(|s| s.1 == 1).count() as f64;
    let negatives = scored.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Sum of the positives' ranks, ties given their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j + 1 < scored.len() && scored[j + 1].0 == scored[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += rank * scored[i..=j].iter().filter(|s| s.1 == 1).count() as f64;
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// AdamW's state of one parameter vector.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adam {
    fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One step on `params` with gradient `grad` at step `t` (1-based).
    fn step(&mut self, params: &mut [f32], grad: &[f64], t: i32, lr: f64, decay: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        const EPS: f64 = 1e-8;
        let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
        for i in 0..params.len() {
            self.m[i] = B1 * self.m[i] + (1.0 - B1) * grad[i];
            self.v[i] = B2 * self.v[i] + (1.0 - B2) * grad[i] * grad[i];
            let update = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + EPS);
            let p = f64::from(params[i]);
            params[i] = (p - lr * (update + decay * p)) as f32;
        }
    }
}

/// Trains from `start` on `train`, stopping early on `validation`'s loss; `on_epoch` sees each
/// epoch as it ends.
pub fn train(
    train: &[Example],
    validation: &[Example],
    start: Head,
    hyper: &Hyper,
    mut on_epoch: impl FnMut(&Epoch),
) -> Trained {
    let mut rng = Rng::new(hyper.seed);
    let mut head = start;
    let mut adam_w = Adam::new(DIM * CLASSES);
    let mut adam_b = Adam::new(CLASSES);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let keep = 1.0 - hyper.dropout;
    let mut best = (f64::INFINITY, head.clone(), 0usize);
    let mut since_best = 0;
    let mut epochs = Vec::new();
    let mut step = 0;
    let mut masked = vec![0.0f32; DIM];
    for epoch in 1..=hyper.epochs {
        shuffle(&mut order, &mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(hyper.batch_size) {
            let mut grad_w = vec![0.0f64; DIM * CLASSES];
            let mut grad_b = [0.0f64; CLASSES];
            for &i in batch {
                let e = &train[i];
                // Inverted dropout: kept components are scaled by 1/keep.
                for (d, m) in masked.iter_mut().enumerate() {
                    *m = if hyper.dropout > 0.0 && rng.unit() >= keep {
                        0.0
                    } else {
                        e.x[d] / keep as f32
                    };
                }
                let p = head.probabilities(&masked);
                loss_sum += cross_entropy(p, e.y);
                for c in 0..CLASSES {
                    let g = f64::from(p[c]) - f64::from(u8::from(c as u32 == e.y));
                    grad_b[c] += g;
                    for (d, &x) in masked.iter().enumerate() {
                        grad_w[d * CLASSES + c] += g * f64::from(x);
                    }
                }
            }
            let n = batch.len() as f64;
            grad_w.iter_mut().for_each(|g| *g /= n);
            grad_b.iter_mut().for_each(|g| *g /= n);
            step += 1;
            adam_w.step(
                &mut head.w,
                &grad_w,
                step,
                hyper.learning_rate,
                hyper.weight_decay,
            );
            adam_b.step(&mut head.b, &grad_b, step, hyper.learning_rate, 0.0);
        }
        let measured = evaluate(&head, validation);
        let record = Epoch {
            epoch,
            train_loss: loss_sum / train.len().max(1) as f64,
            validation_loss: measured.loss,
            validation_accuracy: measured.accuracy,
        };
        on_epoch(&record);
        epochs.push(record);
        if measured.loss < best.0 - 1e-6 {
            best = (measured.loss, head.clone(), epoch);
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hyper.patience {
                break;
            }
        }
    }
    let stopped_early = epochs.len() < hyper.epochs;
    Trained {
        head: best.1,
        best_epoch: best.2,
        epochs,
        stopped_early,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper() -> Hyper {
        Hyper {
            learning_rate: 0.05,
            weight_decay: 0.0,
            dropout: 0.0,
            batch_size: 16,
            epochs: 300,
            patience: 5,
            seed: 1,
        }
    }

    /// Nearly separable data: the class is the sign of the first component, except for every
    /// tenth example, whose label is flipped (so that fitting on goes on to fit noise).
    fn separable(n: usize) -> Vec<Example> {
        let mut rng = Rng::new(9);
        (0..n)
            .map(|i| {
                let side = (i % 2) as u32;
                let mut x: Vec<f32> = (0..DIM).map(|_| (rng.unit() as f32 - 0.5) * 0.1).collect();
                x[0] = if side == 1 { 0.5 } else { -0.5 };
                let y = if i % 10 == 3 { 1 - side } else { side };
                Example {
                    text: String::new(),
                    x,
                    y,
                }
            })
            .collect()
    }

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(auc(&mut [(0.9, 1), (0.1, 0)]), 1.0);
        assert_eq!(auc(&mut [(0.1, 1), (0.9, 0)]), 0.0);
        assert_eq!(auc(&mut [(0.5, 1), (0.5, 0)]), 0.5);
        // 3 positives, 2 negatives: pairs (p > n) = 5 of 6.
        let mut s = [(0.8, 1), (0.7, 0), (0.6, 1), (0.9, 1), (0.1, 0)];
        assert!((auc(&mut s) - 5.0 / 6.0).abs() < 1e-12);
        assert!(auc(&mut [(0.5, 1)]).is_nan());
    }

    #[test]
    fn training_separates_separable_data_and_stops_early() {
        let (tr, va) = split(separable(400), 0.2, 1);
        assert_eq!(va.len(), 80);
        assert!(va.iter().any(|e| e.y == 0) && va.iter().any(|e| e.y == 1));
        let before = evaluate(&Head::zeros(), &va);
        assert!((before.auc - 0.5).abs() < 1e-9, "zeros tie everything");
        let trained = train(&tr, &va, Head::zeros(), &hyper(), |_| {});
        let after = evaluate(&trained.head, &va);
        // A tenth of the labels are flipped: the best a head can do is about 0.9.
        assert!(after.auc > 0.85 && after.accuracy > 0.85, "{after:?}");
        assert!(trained.stopped_early, "{} epochs", trained.epochs.len());
        let best = &trained.epochs[trained.best_epoch - 1];
        assert!(
            trained
                .epochs
                .iter()
                .all(|e| e.validation_loss >= best.validation_loss)
        );
    }

    #[test]
    fn a_seed_makes_a_run_repeatable() {
        let (tr, va) = split(separable(100), 0.2, 4);
        let h = Hyper {
            dropout: 0.2,
            epochs: 5,
            ..hyper()
        };
        let a = train(&tr, &va, Head::zeros(), &h, |_| {});
        let b = train(&tr, &va, Head::zeros(), &h, |_| {});
        assert_eq!(a.head, b.head);
    }

    #[test]
    fn settings_that_cannot_train_are_refused() {
        let bad = Hyper {
            learning_rate: f64::NAN,
            ..hyper()
        };
        assert!(bad.check().unwrap_err().contains("--learning-rate"));
        assert!(
            Hyper {
                dropout: 1.0,
                ..hyper()
            }
            .check()
            .is_err()
        );
        assert!(hyper().check().is_ok());
    }
}
