//! A sample's sidecar JSON (query positions and attention mask), checked against a shape the
//! first two bytes choose.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Some(&queries), Some(&tokens)) = (data.first(), data.get(1)) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&data[2..]) else {
        return;
    };
    if let Ok((positions, mask)) = vidkv::io::parse_sidecar(text, usize::from(queries)) {
        let _ = mask.validate(usize::from(tokens).max(1) * 16, &positions);
    }
});
