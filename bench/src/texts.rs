//! Realistic product-search texts for the benchmarks.
//!
//! Shoppers' queries and the product titles they are matched against: around 32 tokens each
//! once tokenized for `minilm-l6` ([CLS] and [SEP] included), with enough spread in length
//! that the dynamic batcher sees the token mix of real traffic rather than one fixed shape.
//!
//! They live in `bench/product_searches.json`, in the `--input-data` format of Triton's
//! `perf_analyzer` (`{"data": [{"TEXT": ["..."]}, ...]}`), so that `loadgen` and
//! `perf_analyzer` send exactly the same texts.

use std::sync::LazyLock;

/// `perf_analyzer` input data holding the texts, compiled into the binaries.
const INPUT_DATA: &str = include_str!("../product_searches.json");

/// The sixty-four product-search texts, cycled by the load generator; the first one is the
/// in-process benchmark's default sentence.
pub static PRODUCT_SEARCHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let data: serde_json::Value =
        serde_json::from_str(INPUT_DATA).expect("product_searches.json is valid JSON");
    data["data"]
        .as_array()
        .expect("product_searches.json has a \"data\" array")
        .iter()
        .map(|step| {
            step["TEXT"][0]
                .as_str()
                .expect("each step of product_searches.json has one TEXT string")
                .to_owned()
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use inference::tokenize::TextEncoder;

    use super::PRODUCT_SEARCHES;

    #[test]
    fn texts_are_distinct_and_about_32_tokens() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/minilm-l6/tokenizer.json");
        let encoder =
            TextEncoder::load(&path, 256).unwrap_or_else(|err| panic!("{err} (run `make model`)"));
        let texts = PRODUCT_SEARCHES.as_slice();
        assert_eq!(texts.len(), 64);
        let lengths: Vec<usize> = encoder
            .encode(texts)
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
        assert!(
            (28.0..=36.0).contains(&mean),
            "mean {mean} tokens: {lengths:?}"
        );
        assert!(lengths.iter().all(|n| (20..=48).contains(n)), "{lengths:?}");
        // `inprocess` and `loadgen --texts 1` rely on the first text being exactly 32 tokens.
        assert_eq!(lengths[0], 32, "{lengths:?}");
        assert_eq!(texts.iter().collect::<HashSet<_>>().len(), texts.len());
    }
}
