//! The WGSL sources: one file per kernel in `shaders/`, each prefixed with `common.wgsl`.
//!
//! WGSL has no include directive, so the host composes `common.wgsl` + kernel file into
//! one module. The same composition is what `tests/shaders.rs` validates with naga and
//! translates to SPIR-V, MSL, HLSL and GLSL.

/// Helpers shared by every kernel (parameter block, f16 packing, code rules, twiddles).
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// One shader file and its compute entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    pub entry_points: &'static [&'static str],
}

macro_rules! kernel {
    ($name:literal, [$($entry:literal),+]) => {
        Kernel {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            entry_points: &[$($entry),+],
        }
    };
}

pub const CHANNEL_RANGE: Kernel = kernel!("channel_range", ["main"]);
pub const CHANNEL_SPLIT: Kernel = kernel!("channel_split", ["main"]);
pub const QUANTIZE_TWO_BIT: Kernel = kernel!("quantize_two_bit", ["per_channel", "per_token"]);
pub const REAL_DFT: Kernel = kernel!("real_dft", ["main"]);
pub const QUANTIZE_SIGN: Kernel = kernel!("quantize_sign", ["from_coefficients", "from_channels"]);
pub const QUANTIZE_TERNARY: Kernel = kernel!("quantize_ternary", ["main"]);
pub const PACK_EXACT: Kernel = kernel!("pack_exact", ["main"]);
pub const DEQUANTIZE_TWO_BIT: Kernel = kernel!("dequantize_two_bit", ["per_channel", "per_token"]);
pub const DEQUANTIZE_SIGN: Kernel = kernel!("dequantize_sign", ["to_coefficients", "to_channels"]);
pub const INVERSE_DFT: Kernel = kernel!("inverse_dft", ["main"]);
pub const DEQUANTIZE_TERNARY: Kernel = kernel!("dequantize_ternary", ["main"]);
pub const UNPACK_EXACT: Kernel = kernel!("unpack_exact", ["main"]);
pub const ATTENTION_QUERIES: Kernel = kernel!("attention_queries", ["main"]);
pub const ATTENTION_SCORES_EXACT: Kernel = kernel!("attention_scores_exact", ["main"]);
pub const ATTENTION_SCORES_PACKED: Kernel = kernel!("attention_scores_packed", ["main"]);
pub const ATTENTION_SOFTMAX: Kernel = kernel!("attention_softmax", ["main"]);
pub const ATTENTION_VALUES_EXACT: Kernel = kernel!("attention_values_exact", ["main"]);
pub const ATTENTION_VALUES_TERNARY: Kernel = kernel!("attention_values_ternary", ["main"]);
pub const ATTENTION_VALUES_TWO_BIT: Kernel =
    kernel!("attention_values_two_bit", ["per_channel", "per_token"]);
pub const ATTENTION_COMBINE: Kernel = kernel!("attention_combine", ["main"]);

/// Every kernel, in pipeline order.
pub const ALL: [Kernel; 20] = [
    CHANNEL_RANGE,
    CHANNEL_SPLIT,
    QUANTIZE_TWO_BIT,
    REAL_DFT,
    QUANTIZE_SIGN,
    QUANTIZE_TERNARY,
    PACK_EXACT,
    DEQUANTIZE_TWO_BIT,
    DEQUANTIZE_SIGN,
    INVERSE_DFT,
    DEQUANTIZE_TERNARY,
    UNPACK_EXACT,
    ATTENTION_QUERIES,
    ATTENTION_SCORES_EXACT,
    ATTENTION_SCORES_PACKED,
    ATTENTION_SOFTMAX,
    ATTENTION_VALUES_EXACT,
    ATTENTION_VALUES_TERNARY,
    ATTENTION_VALUES_TWO_BIT,
    ATTENTION_COMBINE,
];

impl Kernel {
    /// `common.wgsl` followed by this kernel's file: the module the GPU compiles.
    pub fn composed_source(&self) -> String {
        format!("{COMMON}\n{}", self.source)
    }
}
