//! Canary traffic splits between versions of a model, sticky per routing key.
//!
//! A routing key (a shopper or session id from the `x-routing-key` metadata) is hashed with
//! FNV-1a, which is stable across processes and releases, so every gateway replica sends the
//! same shopper to the same version. Calls without a key are spread by their request id.
//!
//! Each split carries the revision it was stored at (see [`crate::deployed`]): a replica
//! applies a split only over an older one, so that two changes arriving in either order (its
//! own write's answer and another replica's notification) leave the newer in force.

use std::collections::HashMap;
use std::sync::RwLock;

/// Weight of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionWeight {
    /// Model version.
    pub version: i64,
    /// Relative weight.
    pub weight: u32,
}

/// A model's split as stored: the weights (empty: no split), its revision and who set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// The weights; empty when the newest version takes all traffic.
    pub weights: Vec<VersionWeight>,
    /// Revision of the model's split: every change adds one.
    pub revision: i64,
    /// Who changed it last (tenant and key id, or "local" without shared state).
    pub changed_by: String,
    /// When, in Unix milliseconds.
    pub changed_at_ms: i64,
}

/// Traffic splits per model.
#[derive(Debug, Default)]
pub struct CanaryTable {
    splits: RwLock<HashMap<String, Split>>,
}

/// Why a split was refused.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// The split itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The change expected another revision than the one in force.
    #[error("the split in force is at revision {current}")]
    Stale {
        /// The revision in force.
        current: i64,
    },
}

impl CanaryTable {
    /// Sets (or, with no weights, removes) the split of `model`, at the next revision; when
    /// `expected` is given, only over that revision. The split in force set again keeps its
    /// revision.
    pub fn set(
        &self,
        model: &str,
        weights: Vec<VersionWeight>,
        expected: Option<i64>,
    ) -> Result<(), CanaryError> {
        validate(model, &weights)?;
        let mut splits = self.splits.write().unwrap_or_else(|p| p.into_inner());
        let current = splits.get(model).map_or(0, |split| split.revision);
        if expected.is_some_and(|expected| expected != current) {
            return Err(CanaryError::Stale { current });
        }
        let split = splits.entry(model.to_owned()).or_default();
        if split.revision > 0 && split.weights == weights {
            return Ok(());
        }
        split.weights = weights;
        split.revision += 1;
        split.changed_by = "local".to_owned();
        split.changed_at_ms = unix_ms();
        Ok(())
    }

    /// Applies a stored split of `model` when it is newer than the one in force; returns
    /// whether it was applied.
    pub fn apply(&self, model: &str, split: Split) -> bool {
        let mut splits = self.splits.write().unwrap_or_else(|p| p.into_inner());
        match splits.get(model) {
            Some(current) if current.revision >= split.revision => false,
            _ => {
                splits.insert(model.to_owned(), split);
                true
            }
        }
    }

    /// Models with a split (or a removed one) held.
    pub fn models(&self) -> usize {
        self.splits.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The split of `model` with its revision (revision 0: never set).
    pub fn split(&self, model: &str) -> Split {
        let splits = self.splits.read().unwrap_or_else(|p| p.into_inner());
        splits.get(model).cloned().unwrap_or_default()
    }

    /// The split of `model` (empty: the newest version takes all traffic).
    pub fn get(&self, model: &str) -> Vec<VersionWeight> {
        let splits = self.splits.read().unwrap_or_else(|p| p.into_inner());
        splits
            .get(model)
            .map(|s| s.weights.clone())
            .unwrap_or_default()
    }

    /// The version for a call with `key`, or `None` when `model` has no split.
    pub fn choose(&self, model: &str, key: &str) -> Option<i64> {
        let splits = self.splits.read().unwrap_or_else(|p| p.into_inner());
        let weights = &splits.get(model)?.weights;
        let total: u64 = weights.iter().map(|w| u64::from(w.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = fnv1a(key.as_bytes()) % total;
        for w in weights {
            if point < u64::from(w.weight) {
                return Some(w.version);
            }
            point -= u64::from(w.weight);
        }
        None
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Checks a split of `model` before it is stored: positive versions, each once, some weight.
pub fn validate(model: &str, weights: &[VersionWeight]) -> Result<(), CanaryError> {
    if model.is_empty() {
        return Err(CanaryError::Invalid("model is empty".to_owned()));
    }
    if let Some(bad) = weights.iter().find(|w| w.version <= 0) {
        return Err(CanaryError::Invalid(format!(
            "version {} is not a positive model version",
            bad.version
        )));
    }
    let mut versions: Vec<i64> = weights.iter().map(|w| w.version).collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.len() != weights.len() {
        return Err(CanaryError::Invalid(
            "a version appears twice in the split".to_owned(),
        ));
    }
    if !weights.is_empty() && weights.iter().all(|w| w.weight == 0) {
        return Err(CanaryError::Invalid(
            "every weight is 0: no version would take traffic".to_owned(),
        ));
    }
    Ok(())
}

/// 64-bit FNV-1a, mixed at the end so that nearby keys spread evenly over the buckets.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (from SplitMix64): FNV alone leaves short keys clustered.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_sticky_per_key_and_close_to_its_weights() {
        let table = CanaryTable::default();
        assert_eq!(table.choose("m", "shopper-1"), None);
        table
            .set(
                "m",
                vec![
                    VersionWeight {
                        version: 1,
                        weight: 90,
                    },
                    VersionWeight {
                        version: 2,
                        weight: 10,
                    },
                ],
                None,
            )
            .unwrap();
        let canary = (0..10_000)
            .filter(|i| table.choose("m", &format!("shopper-{i}")) == Some(2))
            .count();
        assert!(
            (900..=1100).contains(&canary),
            "{canary} of 10000 on the canary"
        );
        let first = table.choose("m", "shopper-42");
        assert!((0..100).all(|_| table.choose("m", "shopper-42") == first));
    }

    /// Two changes arriving out of order (a replica's own write answered after another
    /// replica's newer change was applied) leave the newer split in force.
    #[test]
    fn an_older_revision_never_replaces_a_newer_one() {
        let table = CanaryTable::default();
        let split = |version, revision| Split {
            weights: vec![VersionWeight { version, weight: 1 }],
            revision,
            changed_by: "ops".into(),
            changed_at_ms: 0,
        };
        assert!(table.apply("m", split(2, 6)));
        assert!(!table.apply("m", split(3, 5)));
        assert!(!table.apply("m", split(3, 6)));
        assert_eq!(table.choose("m", "k"), Some(2));
        let removed = Split {
            weights: vec![],
            ..split(0, 7)
        };
        assert!(table.apply("m", removed));
        assert_eq!(table.choose("m", "k"), None);
        assert_eq!(table.split("m").revision, 7);
    }

    #[test]
    fn bad_splits_are_refused() {
        let table = CanaryTable::default();
        assert!(
            table
                .set(
                    "m",
                    vec![VersionWeight {
                        version: 0,
                        weight: 1
                    }],
                    None
                )
                .is_err()
        );
        assert!(
            table
                .set(
                    "m",
                    vec![VersionWeight {
                        version: 1,
                        weight: 0
                    }],
                    None
                )
                .is_err()
        );
        let twice = vec![
            VersionWeight {
                version: 1,
                weight: 1,
            },
            VersionWeight {
                version: 1,
                weight: 2,
            },
        ];
        assert!(table.set("m", twice, None).is_err());
        table
            .set(
                "m",
                vec![VersionWeight {
                    version: 3,
                    weight: 1,
                }],
                None,
            )
            .unwrap();
        table.set("m", vec![], None).unwrap();
        assert!(table.get("m").is_empty());
    }

    #[test]
    fn a_change_made_over_another_revision_than_expected_is_refused_and_a_repeat_changes_nothing() {
        let table = CanaryTable::default();
        let one = |version| vec![VersionWeight { version, weight: 1 }];
        // A change over a revision of a model never set: refused, and nothing held for it.
        assert!(matches!(
            table.set("m", one(1), Some(3)),
            Err(CanaryError::Stale { current: 0 })
        ));
        assert_eq!(table.models(), 0);
        table.set("m", one(1), Some(0)).unwrap();
        assert_eq!(table.split("m").revision, 1);
        // Read at revision 1; someone else changes it meanwhile.
        table.set("m", one(2), None).unwrap();
        let stale = table.set("m", one(3), Some(1)).unwrap_err();
        assert!(
            matches!(stale, CanaryError::Stale { current: 2 }),
            "{stale:?}"
        );
        assert_eq!(table.get("m"), one(2));
        // The split in force set again keeps its revision.
        table.set("m", one(2), Some(2)).unwrap();
        assert_eq!(table.split("m").revision, 2);
    }
}
