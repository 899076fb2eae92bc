//! Typed errors for every fallible operation in the library.
//!
//! Nothing in the crate panics on user input: malformed files, bad shapes, non-finite
//! numbers and impossible configurations all come back as a [`VidkvError`] whose message
//! names the offending tensor, field or value.

use thiserror::Error;

/// Every error the library returns.
#[derive(Debug, Error)]
pub enum VidkvError {
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A preset name that the library does not know.
    #[error("unknown preset `{name}` (known presets: {known})")]
    UnknownPreset { name: String, known: String },

    /// A tensor has a shape that does not fit the operation.
    #[error("shape mismatch for `{tensor}`: {detail}")]
    ShapeMismatch { tensor: String, detail: String },

    /// A tensor holds NaN or infinity.
    #[error("tensor `{tensor}` holds a non-finite value ({value}) at index {index:?}")]
    NonFinite {
        tensor: String,
        index: Vec<usize>,
        value: f32,
    },

    /// A tensor holds a value that f16 storage cannot represent.
    #[error("tensor `{tensor}` holds {value} at index {index:?}, outside the f16 range ±65504 used by the packed format")]
    OutOfRange {
        tensor: String,
        index: Vec<usize>,
        value: f32,
    },

    /// An output path that a save must not write: the input itself, a directory, a device,
    /// a FIFO or a symbolic link (a save writes regular files only, never through a link).
    #[error("refusing to write `{path}`: {reason}")]
    UnsafeOutput { path: String, reason: String },

    /// A query value so large that a logit could overflow f32.
    #[error("tensor `{tensor}` holds {value} at index {index:?}; attention takes query values up to ±{limit} (beyond that a logit can overflow f32)")]
    QueryOutOfRange {
        tensor: String,
        index: Vec<usize>,
        value: f32,
        limit: f32,
    },

    /// A request that needs more memory than the machine has free (checked before anything
    /// is allocated).
    #[error("{what} needs {needed} bytes of memory, more than the {limit} bytes available")]
    TooLarge {
        what: String,
        needed: u64,
        limit: u64,
    },

    /// A tensor that the operation needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),

    /// A tensor stored with an element type the loader does not read.
    #[error("tensor `{tensor}` has unsupported dtype {dtype} (supported: F32, F16, BF16)")]
    UnsupportedDtype { tensor: String, dtype: String },

    /// A tensor with zero elements where data is required.
    #[error("tensor `{0}` is empty")]
    EmptyTensor(String),

    /// The safetensors container itself is unreadable (empty, truncated, corrupted header).
    #[error("cannot read safetensors data: {0}")]
    Safetensors(String),

    /// The JSON sidecar is malformed or inconsistent with the tensors.
    #[error("malformed sidecar: {0}")]
    Sidecar(String),

    /// Packed data whose sizes or fields are inconsistent.
    #[error("corrupted packed data: {0}")]
    CorruptPacked(String),

    /// No GPU adapter could be found (or none matched `VIDKV_ADAPTER`).
    #[error("no GPU adapter found{detail}. On headless Linux install Mesa's Vulkan software driver: `apt-get install mesa-vulkan-drivers` (Debian/Ubuntu); elsewhere install your GPU's Vulkan, Metal or DX12 driver")]
    NoAdapter { detail: String },

    /// The language-model check (feature `lm`): a missing or unreadable model file, a
    /// tokenizer that cannot be built, a failed tensor operation.
    #[error("language model: {0}")]
    Model(String),

    /// The GPU rejected a command (validation, out of memory, pipeline creation).
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The GPU device was lost (driver reset, removal); the context must be recreated.
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A file system error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for results carrying a [`VidkvError`].
pub type Result<T> = std::result::Result<T, VidkvError>;
