//! The WGSL sources: one file per kernel in `shaders/`, each prefixed with `common.wgsl`.
//!
//! WGSL has no include directive, so the host composes `common.wgsl` + kernel file into
//! one module. The same composition is what `shaders/tests.rs` validates with naga and
//! translates to SPIR-V, MSL, HLSL and GLSL.

/// How every kernel declares its parameter block (the line that immediates replace).
pub const UNIFORM_PARAMS: &str = "@group(0) @binding(0) var<uniform> params: Params;";

/// The directive that enables f16 in a module (the shader-f16 fast paths).
pub const F16_DIRECTIVE: &str = "enable f16;";

/// Helpers shared by every kernel (parameter block, f16 packing, code rules, twiddles).
pub const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// One kernel: its shader file (plus, for variants, the files appended to it), its compute
/// entry points, and whether it needs the adapter's subgroup or shader-f16 feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: &'static str,
    pub source: &'static str,
    /// The variant files appended after `source`, in order (none for single-file kernels).
    pub variants: &'static [&'static str],
    pub entry_points: &'static [&'static str],
    pub needs_subgroups: bool,
    /// Whether it reads f16 natively (`enable f16;`, the device's `SHADER_F16`).
    pub needs_f16: bool,
}

macro_rules! kernel {
    ($name:literal, [$($entry:literal),+]) => {
        Kernel {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            variants: &[],
            entry_points: &[$($entry),+],
            needs_subgroups: false,
            needs_f16: false,
        }
    };
    ($name:literal $(+ $variant:literal)+, [$($entry:literal),+], $subgroups:expr) => {
        kernel!($name $(+ $variant)+, [$($entry),+], $subgroups, false)
    };
    ($name:literal $(+ $variant:literal)+, [$($entry:literal),+], $subgroups:expr, $f16:expr) => {
        Kernel {
            name: concat!($name $(, "+", $variant)+),
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            variants: &[$(include_str!(concat!("../../shaders/", $name, "_", $variant, ".wgsl"))),+],
            entry_points: &[$($entry),+],
            needs_subgroups: $subgroups,
            needs_f16: $f16,
        }
    };
}

pub const CHANNEL_RANGE: Kernel = kernel!("channel_range", ["main"]);
pub const CHANNEL_SPLIT: Kernel = kernel!("channel_split", ["main"]);
pub const QUANTIZE_TWO_BIT: Kernel = kernel!("quantize_two_bit", ["per_channel", "per_token"]);
pub const REAL_DFT: Kernel = kernel!("real_dft", ["main"]);
pub const QUANTIZE_SIGN: Kernel = kernel!("quantize_sign", ["from_coefficients", "from_channels"]);
pub const QUANTIZE_TERNARY: Kernel = kernel!("quantize_ternary", ["main"]);
pub const PACK_EXACT: Kernel = kernel!("pack_exact", ["main", "heads"]);
pub const DEQUANTIZE_TWO_BIT: Kernel = kernel!("dequantize_two_bit", ["per_channel", "per_token"]);
pub const DEQUANTIZE_SIGN: Kernel = kernel!("dequantize_sign", ["to_coefficients", "to_channels"]);
pub const INVERSE_DFT: Kernel = kernel!("inverse_dft", ["main"]);
pub const DEQUANTIZE_TERNARY: Kernel = kernel!("dequantize_ternary", ["main"]);
pub const UNPACK_EXACT: Kernel = kernel!("unpack_exact", ["main"]);
pub const ATTENTION_QUERIES: Kernel = kernel!("attention_queries", ["main"]);
pub const ATTENTION_SCORES_EXACT: Kernel = kernel!("attention_scores_exact", ["main"]);
/// The fused split kernel over exact (f16) rows (the fp16 cache, sinks and windows), its
/// rows read as u32 words (portable).
pub const ATTENTION_SPLIT: Kernel = kernel!(
    "attention_split" + "exact" + "words" + "exact_only",
    ["main"],
    false
);
/// [`ATTENTION_SPLIT`] with native f16 row loads (the shader-f16 fast path).
pub const ATTENTION_SPLIT_HALVES: Kernel = kernel!(
    "attention_split" + "exact" + "halves" + "exact_only",
    ["main"],
    false,
    true
);
/// The fused split kernel over 2-bit keys per channel and 2-bit values per token (`kivi2`),
/// with exact segments riding as splits of their own (their rows read as u32 words).
pub const ATTENTION_SPLIT_TWO_BIT_TOKENS: Kernel = kernel!(
    "attention_split" + "exact" + "words" + "two_bit" + "value_tokens",
    ["main"],
    false
);
/// [`ATTENTION_SPLIT_TWO_BIT_TOKENS`] with the riders' rows loaded as f16.
pub const ATTENTION_SPLIT_TWO_BIT_TOKENS_HALVES: Kernel = kernel!(
    "attention_split" + "exact" + "halves" + "two_bit" + "value_tokens",
    ["main"],
    false,
    true
);
/// The same with 2-bit values per channel (`k2v2-channel`).
pub const ATTENTION_SPLIT_TWO_BIT_CHANNELS: Kernel = kernel!(
    "attention_split" + "exact" + "words" + "two_bit" + "value_channels",
    ["main"],
    false
);
/// [`ATTENTION_SPLIT_TWO_BIT_CHANNELS`] with the riders' rows loaded as f16.
pub const ATTENTION_SPLIT_TWO_BIT_CHANNELS_HALVES: Kernel = kernel!(
    "attention_split" + "exact" + "halves" + "two_bit" + "value_channels",
    ["main"],
    false,
    true
);
/// The fused split kernel over the VidKV paper's format (`vidkv-tuned`, `vidkv-paper`):
/// 2-bit outlier channels and sign rows against the planar query, ternary values.
pub const ATTENTION_SPLIT_SIGNS_TRITS: Kernel =
    kernel!("attention_split" + "signs_trits", ["main"], false);
/// The fused split kernel over rotated per-token codes (`rotated`, `rotated-flat`,
/// `rotated-k3v1`) against the rotated query of the queries pass; the split's sums are
/// rotated back at its end.
pub const ATTENTION_SPLIT_ROTATED_TOKENS: Kernel =
    kernel!("attention_split" + "rotated_tokens", ["main"], false);
/// The fused split kernel over codes across tokens, with the portable row reads and
/// row-dot sums and the logits and weights phases as tasks of one invocation (any group
/// size). Every fused composition ends with the `riders` file (the kernel rotates its query
/// rows and takes the exact sinks and window as splits), within 10 storage buffers.
pub const ATTENTION_SPLIT_GROUPS: Kernel = kernel!(
    "attention_split_groups" + "portable" + "tasks" + "riders",
    ["main"],
    false
);
/// [`ATTENTION_SPLIT_GROUPS`] for group size 32, a task's rows in registers.
pub const ATTENTION_SPLIT_GROUPS_32: Kernel = kernel!(
    "attention_split_groups" + "portable" + "tasks32" + "riders",
    ["main"],
    false
);
/// The subgroup fast path for group size 32 and 8 or 16 lanes per code row (d = 128, 256):
/// subgroup row reads, row-dot sums by halving shuffles, the phases by 8-invocation
/// clusters.
pub const ATTENTION_SPLIT_GROUPS_SUBGROUP: Kernel = kernel!(
    "attention_split_groups" + "subgroup" + "dots8" + "clusters" + "riders",
    ["main"],
    true
);
/// The subgroup fast path for group size 32 and fewer lanes per code row (d ≤ 112):
/// row-dot sums by butterflies.
pub const ATTENTION_SPLIT_GROUPS_SUBGROUP_ROWS: Kernel = kernel!(
    "attention_split_groups" + "subgroup" + "dots" + "clusters" + "riders",
    ["main"],
    true
);
/// The subgroup row reads and butterfly row-dot sums with the phases as tasks: other group
/// sizes.
pub const ATTENTION_SPLIT_GROUPS_SUBGROUP_TASKS: Kernel = kernel!(
    "attention_split_groups" + "subgroup" + "dots" + "tasks" + "riders",
    ["main"],
    true
);
pub const ATTENTION_SCORES_PACKED: Kernel = kernel!("attention_scores_packed", ["main"]);
pub const ATTENTION_SOFTMAX: Kernel = kernel!("attention_softmax", ["main"]);
pub const ATTENTION_VALUES_EXACT: Kernel = kernel!("attention_values_exact", ["main"]);
pub const ATTENTION_VALUES_TERNARY: Kernel =
    kernel!("attention_values_ternary" + "portable", ["main"], false);
/// The subgroup fast path of [`ATTENTION_VALUES_TERNARY`].
pub const ATTENTION_VALUES_TERNARY_SUBGROUP: Kernel =
    kernel!("attention_values_ternary" + "subgroup", ["main"], true);
pub const ATTENTION_VALUES_TWO_BIT: Kernel =
    kernel!("attention_values_two_bit", ["per_channel", "per_token"]);
/// Attention from rotated per-token codes: `attention_rotated.wgsl` (bindings, helpers, the
/// query rotation) and its `tokens` variant.
pub const ATTENTION_ROTATED: Kernel = kernel!(
    "attention_rotated" + "tokens",
    [
        "rotate_queries",
        "key_scores",
        "value_sums",
        "refinement_sums"
    ],
    false
);
/// Attention from codes across tokens: the same base file and its `groups` variant.
pub const ATTENTION_ROTATED_GROUPS: Kernel = kernel!(
    "attention_rotated" + "groups",
    ["rotate_queries", "group_scores", "group_values"],
    false
);
/// Codes across tokens: the same base file and its `groups` variant.
pub const ROTATED_GROUPS: Kernel = kernel!(
    "rotated" + "groups",
    [
        "state_means",
        "state_energies",
        "fit_base",
        "row_transforms",
        "group_columns",
        "row_energies",
        "group_widths",
        "row_fits",
        "row_errors",
        "choose_groups",
        "decode_rows",
        "finish_rows"
    ],
    false
);
pub const ATTENTION_COMBINE: Kernel = kernel!("attention_combine", ["main"]);
/// The rotated per-token scheme's quantization: `rotated.wgsl` (bindings, helpers, the
/// per-head state) and its `tokens` variant.
pub const ROTATED: Kernel = kernel!(
    "rotated" + "tokens",
    [
        "state_means",
        "state_energies",
        "fit_base",
        "group_means",
        "pack_steps",
        "group_centres",
        "quantize",
        "pack_scales",
        "dequantize"
    ],
    false
);

/// Every kernel, in pipeline order (the tests validate them all).
#[cfg(test)]
pub const ALL: [Kernel; 38] = [
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
    ATTENTION_SPLIT,
    ATTENTION_SPLIT_HALVES,
    ATTENTION_SPLIT_TWO_BIT_TOKENS,
    ATTENTION_SPLIT_TWO_BIT_TOKENS_HALVES,
    ATTENTION_SPLIT_TWO_BIT_CHANNELS,
    ATTENTION_SPLIT_TWO_BIT_CHANNELS_HALVES,
    ATTENTION_SPLIT_SIGNS_TRITS,
    ATTENTION_SPLIT_ROTATED_TOKENS,
    ATTENTION_SPLIT_GROUPS,
    ATTENTION_SPLIT_GROUPS_32,
    ATTENTION_SPLIT_GROUPS_SUBGROUP,
    ATTENTION_SPLIT_GROUPS_SUBGROUP_ROWS,
    ATTENTION_SPLIT_GROUPS_SUBGROUP_TASKS,
    ATTENTION_SCORES_PACKED,
    ATTENTION_SOFTMAX,
    ATTENTION_VALUES_EXACT,
    ATTENTION_VALUES_TERNARY,
    ATTENTION_VALUES_TERNARY_SUBGROUP,
    ATTENTION_VALUES_TWO_BIT,
    ATTENTION_ROTATED,
    ATTENTION_ROTATED_GROUPS,
    ATTENTION_COMBINE,
    ROTATED,
    ROTATED_GROUPS,
];

impl Kernel {
    /// The files of `shaders/` this kernel is composed of, in order: `common.wgsl`, its own
    /// file, and for each variant (`base+a+b`) `{base}_{a}.wgsl`, `{base}_{b}.wgsl`, each
    /// with its text. This is the one place the composition rule lives
    /// ([`Kernel::composed_source`] joins them).
    pub fn files(&self) -> Vec<(String, &'static str)> {
        let mut parts = self.name.split('+');
        let base = parts.next().unwrap_or(self.name);
        let mut files = vec![
            ("common.wgsl".to_string(), COMMON),
            (format!("{base}.wgsl"), self.source),
        ];
        for (variant, text) in parts.zip(self.variants) {
            files.push((format!("{base}_{variant}.wgsl"), *text));
        }
        files
    }

    /// `common.wgsl`, this kernel's file and its variants: the module the GPU compiles,
    /// after `enable f16;` for a kernel that reads f16 natively (a directive precedes
    /// every declaration, so no file can carry it).
    pub fn composed_source(&self) -> String {
        let texts: Vec<&str> = self.files().into_iter().map(|(_, text)| text).collect();
        let module = texts.join("\n");
        if self.needs_f16 {
            format!("{F16_DIRECTIVE}\n{module}")
        } else {
            module
        }
    }

    /// [`Kernel::composed_source`] with `Params` read as immediates instead of the uniform
    /// at binding 0, for devices with `Features::IMMEDIATES`.
    pub fn composed_source_with_immediates(&self) -> String {
        self.composed_source()
            .replace(UNIFORM_PARAMS, "var<immediate> params: Params;")
    }
}

#[cfg(test)]
mod hazards;
#[cfg(test)]
mod tests;
