//! Canary traffic splits between versions of a model, sticky per routing key.
//!
//! A routing key (a shopper or session id from the `x-routing-key` metadata) is hashed with
//! FNV-1a, which is stable across processes and releases, so every gateway replica sends the
//! same shopper to the same version. Calls without a key are spread by their request id.

use std::collections::HashMap;
use std::sync::RwLock;

/// Weight of one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionWeight {
    /// Model version.
    pub version: i64,
    /// Relative weight.
    pub weight: u32,
}

/// Traffic splits per model.
#[derive(Debug, Default)]
pub struct CanaryTable {
    splits: RwLock<HashMap<String, Vec<VersionWeight>>>,
}

/// Why a split was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CanaryError(String);

impl CanaryTable {
    /// Sets (or, with no weights, removes) the split of `model`.
    pub fn set(&self, model: &str, weights: Vec<VersionWeight>) -> Result<(), CanaryError> {
        if model.is_empty() {
            return Err(CanaryError("model is empty".to_owned()));
        }
        if let Some(bad) = weights.iter().find(|w| w.version <= 0) {
            return Err(CanaryError(format!(
                "version {} is not a positive model version",
                bad.version
            )));
        }
        let mut versions: Vec<i64> = weights.iter().map(|w| w.version).collect();
        versions.sort_unstable();
        versions.dedup();
        if versions.len() != weights.len() {
            return Err(CanaryError(
                "a version appears twice in the split".to_owned(),
            ));
        }
        if !weights.is_empty() && weights.iter().all(|w| w.weight == 0) {
            return Err(CanaryError(
                "every weight is 0: no version would take traffic".to_owned(),
            ));
        }
        let mut splits = self.splits.write().unwrap_or_else(|p| p.into_inner());
        if weights.is_empty() {
            splits.remove(model);
        } else {
            splits.insert(model.to_owned(), weights);
        }
        Ok(())
    }

    /// The split of `model` (empty: the newest version takes all traffic).
    pub fn get(&self, model: &str) -> Vec<VersionWeight> {
        let splits = self.splits.read().unwrap_or_else(|p| p.into_inner());
        splits.get(model).cloned().unwrap_or_default()
    }

    /// The version for a call with `key`, or `None` when `model` has no split.
    pub fn choose(&self, model: &str, key: &str) -> Option<i64> {
        let splits = self.splits.read().unwrap_or_else(|p| p.into_inner());
        let weights = splits.get(model)?;
        let total: u64 = weights.iter().map(|w| u64::from(w.weight)).sum();
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
                    }]
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
                    }]
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
        assert!(table.set("m", twice).is_err());
        table
            .set(
                "m",
                vec![VersionWeight {
                    version: 3,
                    weight: 1,
                }],
            )
            .unwrap();
        table.set("m", vec![]).unwrap();
        assert!(table.get("m").is_empty());
    }
}
