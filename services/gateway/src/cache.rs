//! The embedding cache: product titles repeat constantly, so their embeddings are kept,
//! keyed by model, version and text, in a cache bounded by entries and by bytes (least recently
//! used evicted): a key holds its whole text, so long texts weigh more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Key of one cached embedding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EmbeddingKey {
    model: Arc<str>,
    version: i64,
    text: Box<str>,
}

/// Default number of embeddings kept (`--cache-entries`).
pub const DEFAULT_CACHE_ENTRIES: usize = 100_000;

/// Default byte budget of the cache (`--cache-bytes`): 160 MiB of a gateway pod's 1 GiB, what
/// [`DEFAULT_CACHE_ENTRIES`] embeddings of 384 dimensions (1.5 KiB each) with product-title
/// keys take. Keys hold the whole text (up to 16 KiB, inference's `max_text_bytes`), so
/// counting entries alone let 100,000 long texts hold ~1.8 GB; weighed by bytes, long texts
/// just leave room for fewer entries (~9,000 of 16 KiB).
pub const DEFAULT_CACHE_BYTES: u64 = 160 * 1024 * 1024;

/// Bytes an entry holds besides its text and vector, estimated: the key and value structs,
/// the vector's reference count and the cache's own slot, hash table and history entries.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// Estimated bytes of one entry: its text, its vector and the bookkeeping around them.
fn entry_bytes(key: &EmbeddingKey, embedding: &[f32]) -> u64 {
    (key.text.len() + std::mem::size_of_val(embedding)) as u64 + ENTRY_OVERHEAD_BYTES
}

/// Weighs an entry by its bytes, and at least by the byte budget over the entry budget, so
/// that the cache holds neither more bytes nor more entries than configured.
#[derive(Clone)]
struct EntryWeighter {
    min_weight: u64,
}

impl Weighter<EmbeddingKey, Arc<[f32]>> for EntryWeighter {
    fn weight(&self, key: &EmbeddingKey, embedding: &Arc<[f32]>) -> u64 {
        entry_bytes(key, embedding).max(self.min_weight)
    }
}

/// Bounded cache of embeddings, with hit and miss counts.
pub struct EmbeddingCache {
    /// `None` when the cache is switched off (0 entries or 0 bytes).
    cache: Option<Cache<EmbeddingKey, Arc<[f32]>, EntryWeighter>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EmbeddingCache {
    /// A cache of at most `entries` embeddings holding at most `budget_bytes` bytes (see
    /// [`DEFAULT_CACHE_BYTES`]); 0 for either disables it. The least recently used go first.
    pub fn new(entries: usize, budget_bytes: u64) -> EmbeddingCache {
        let cache = (entries > 0 && budget_bytes > 0).then(|| {
            let weighter = EntryWeighter {
                min_weight: budget_bytes.div_ceil(entries as u64),
            };
            Cache::with_weighter(entries, budget_bytes, weighter)
        });
        EmbeddingCache {
            cache,
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

    /// Bytes the cached entries are weighed at (each its estimated bytes, or the byte budget
    /// over the entry budget if more): never over the byte budget.
    pub fn held_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |cache| cache.weight())
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
        let cache = EmbeddingCache::new(100, DEFAULT_CACHE_BYTES);
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
        let off = EmbeddingCache::new(0, DEFAULT_CACHE_BYTES);
        off.insert(&model, 1, "tea", Arc::from(vec![1.0]));
        assert!(
            off.get(&model, 1, "tea").is_none(),
            "0 entries switches the cache off"
        );
    }

    #[test]
    fn long_texts_stay_within_the_byte_budget() {
        let cache = EmbeddingCache::new(DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_BYTES);
        let model: Arc<str> = Arc::from("m");
        // Texts as long as inference takes (its max_text_bytes), with 384-dimension vectors.
        let filler = "x".repeat(16 * 1024 - 8);
        let text = |i: usize| format!("{i:08}{filler}");
        for i in 0..12_000 {
            cache.insert(&model, 1, &text(i), Arc::from(vec![0.5; 384]));
        }
        let held = cache.held_bytes();
        assert!(
            held <= DEFAULT_CACHE_BYTES,
            "{held} bytes held, over the {DEFAULT_CACHE_BYTES}-byte budget"
        );
        assert!(cache.get(&model, 1, &text(11_999)).is_some());
    }
}
