//! The embedding cache: product titles repeat constantly, so their embeddings are kept,
//! keyed by model, version and text, in a bounded cache (least recently used evicted).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;

/// Key of one cached embedding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EmbeddingKey {
    model: Arc<str>,
    version: i64,
    text: Box<str>,
}

/// Bounded cache of embeddings, with hit and miss counts.
pub struct EmbeddingCache {
    /// `None` when the cache is switched off (0 entries).
    cache: Option<Cache<EmbeddingKey, Arc<[f32]>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EmbeddingCache {
    /// A cache of at most `entries` embeddings (0 disables it).
    pub fn new(entries: usize) -> EmbeddingCache {
        EmbeddingCache {
            cache: (entries > 0).then(|| Cache::new(entries)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached embedding of `text` by `model` version `version`.
    pub fn get(&self, model: &Arc<str>, version: i64, text: &str) -> Option<Arc<[f32]>> {
        let key = EmbeddingKey {
            model: model.clone(),
            version,
            text: text.into(),
        };
        let found = self.cache.as_ref().and_then(|cache| cache.get(&key));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps an embedding.
    pub fn insert(&self, model: &Arc<str>, version: i64, text: &str, embedding: Arc<[f32]>) {
        let Some(cache) = &self.cache else {
            return;
        };
        cache.insert(
            EmbeddingKey {
                model: model.clone(),
                version,
                text: text.into(),
            },
            embedding,
        );
    }

    /// Lookups that found an embedding, and those that did not.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_keyed_by_version_and_bounded() {
        let cache = EmbeddingCache::new(100);
        let model: Arc<str> = Arc::from("m");
        cache.insert(&model, 1, "tea", Arc::from(vec![1.0]));
        assert!(cache.get(&model, 1, "tea").is_some());
        assert!(
            cache.get(&model, 2, "tea").is_none(),
            "another version is another entry"
        );
        assert_eq!(cache.hits_and_misses(), (1, 1));
        for i in 0..1000 {
            cache.insert(&model, 1, &format!("t{i}"), Arc::from(vec![0.0]));
        }
        let kept = (0..1000)
            .filter(|i| cache.get(&model, 1, &format!("t{i}")).is_some())
            .count();
        assert!(kept <= 110, "bounded: {kept} kept");
        let off = EmbeddingCache::new(0);
        off.insert(&model, 1, "tea", Arc::from(vec![1.0]));
        assert!(
            off.get(&model, 1, "tea").is_none(),
            "0 entries switches the cache off"
        );
    }
}
