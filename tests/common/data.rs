//! The real dev files, shared by the integration tests that read them.

use std::path::PathBuf;

use vidkv::io::KvSample;

/// Reads the real dev file `../shared/data/{name}.safetensors` with its JSON sidecar.
pub fn shared_sample(name: &str) -> KvSample {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    let tensors = dir.join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&tensors).unwrap_or_else(|e| {
        panic!(
            "the real dev files are needed: cannot read {} ({e}); the repository expects \
             ../shared/data beside it",
            tensors.display()
        )
    });
    let sidecar = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    KvSample::from_bytes(name, &bytes, Some(&sidecar)).unwrap()
}
