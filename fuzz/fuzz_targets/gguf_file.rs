//! A GGUF model file, as `vidkv eval-lm --model` reads one: the header (candle's reader),
//! then the tokenizer and every weight the llama loader takes from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vidkv::lm::model::{GgufFile, Llama};
use vidkv::lm::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut gguf) = GgufFile::from_bytes(data.to_vec(), "fuzz") {
        if let Ok(tokenizer) = Tokenizer::from_gguf(&gguf) {
            let _ = tokenizer.encode("ab <|im_start|>");
        }
        let _ = Llama::load(&mut gguf);
    }
});
