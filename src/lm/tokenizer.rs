//! The model's tokenizer, built from the GGUF's own vocabulary and merges.
//!
//! SmolLM2 uses byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`) with the `smollm`
//! pre-tokenizer: every digit is split off on its own, then GPT-2's byte-level regex. Control
//! tokens (`<|im_start|>`, `<|im_end|>`, …) are special tokens matched in the input text, so a
//! chat prompt written out as text encodes to the ids the model was trained on.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use super::model::{metadata_string, GgufFile};
use crate::error::{Result, VidkvError};

/// GGUF token type of control tokens.
const CONTROL_TOKEN: i64 = 3;

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

fn tokenizer_error(context: &str) -> impl Fn(tokenizers::Error) -> VidkvError + '_ {
    move |e| VidkvError::Model(format!("tokenizer: {context}: {e}"))
}

impl Tokenizer {
    /// Builds the tokenizer of a GGUF file (`gpt2` model with the `smollm` pre-tokenizer).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = metadata_string(&gguf.content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(VidkvError::Model(format!(
                "tokenizer model `{model}` is not supported (only gpt2 byte-level BPE)"
            )));
        }
        if let Ok(pre) = metadata_string(&gguf.content, "tokenizer.ggml.pre") {
            if pre != "smollm" {
                return Err(VidkvError::Model(format!(
                    "pre-tokenizer `{pre}` is not supported (only smollm)"
                )));
            }
        }
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let types = gguf.integers("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(VidkvError::Model(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let merges = gguf
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(VidkvError::Model(format!("malformed merge `{m}`"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tokenizer_error("BPE"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre: Vec<PreTokenizerWrapper> = vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ];
        inner.with_pre_tokenizer(Some(Sequence::new(pre)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == CONTROL_TOKEN)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        Ok(Tokenizer { inner })
    }

    /// The ids of `text`; special tokens written in the text map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tokenizer_error("encode"))?
            .get_ids()
            .to_vec())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(tokenizer_error("decode"))
    }
}
