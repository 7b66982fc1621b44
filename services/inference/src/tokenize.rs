//! Server-side tokenization with Hugging Face `tokenizers`.
//!
//! The shipped `tokenizer.json` pads every text to a fixed 128 tokens; padding is switched
//! off here (the batcher pads to the longest text of each batch) and truncation is set to the
//! model's `max_sequence_length`, as sentence-transformers does.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::InferError;

/// Token ids of one text, special tokens included.
pub type TokenIds = Vec<u32>;

/// Turns texts into token ids for one model.
pub struct TextEncoder {
    tokenizer: Tokenizer,
}

impl TextEncoder {
    /// Loads a `tokenizer.json`, without padding and truncating at `max_tokens`.
    pub fn load(path: &Path, max_tokens: usize) -> Result<TextEncoder, InferError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|err| {
            InferError::Load(format!("cannot load tokenizer {}: {err}", path.display()))
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|err| InferError::Load(format!("tokenizer {}: {err}", path.display())))?;
        Ok(TextEncoder { tokenizer })
    }

    /// Tokenizes each text (CPU work: call it off the async runtime).
    pub fn encode(&self, texts: &[String]) -> Result<Vec<TokenIds>, InferError> {
        texts
            .iter()
            .map(|text| {
                self.tokenizer
                    .encode_fast(text.as_str(), true)
                    .map(|encoding| encoding.get_ids().to_vec())
                    .map_err(|err| InferError::Invalid(format!("cannot tokenize text: {err}")))
            })
            .collect()
    }
}
