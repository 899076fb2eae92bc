//! Rewrites the metadata of a safetensors file (hostile-input tests): the header is parsed,
//! one metadata entry replaced, and the file rebuilt with the same tensor bytes.

/// `bytes` with metadata entry `key` set to `value`.
pub fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.to_string());
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// `bytes` with field `field` of the JSON metadata entry `key` set to `value`.
pub fn with_json_field(bytes: &[u8], key: &str, field: &str, value: serde_json::Value) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut entry: serde_json::Value =
        serde_json::from_str(header["__metadata__"][key].as_str().unwrap()).unwrap();
    entry[field] = value;
    with_metadata(bytes, key, &entry.to_string())
}
