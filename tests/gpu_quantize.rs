//! GPU quantization and dequantization against the CPU reference, on lavapipe in CI.
//!
//! A missing adapter fails these tests with the runtime's message (how to install one);
//! nothing is skipped. Every GPU output is read back with its guard words checked, so an
//! out-of-bounds write fails the call.

#[path = "common/noise.rs"]
mod noise;

#[path = "common/data.rs"]
mod data;

#[path = "common/gpu.rs"]
mod gpu_context;

use gpu_context::gpu;

use data::shared_sample;

use proptest::prelude::*;

use vidkv::config::{
    Grouping, KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme,
};
use vidkv::gpu::dequantize::dequantize_cache;
use vidkv::gpu::quantize::quantize_cache;
use vidkv::gpu::{GpuContext, GpuOptions};
use vidkv::packed::planes::{SignPlane, TernaryPlane, TwoBitPlane};
use vidkv::packed::rotated::RotatedRows;
use vidkv::packed::rotated_groups::GroupCodes;
use vidkv::packed::stp::takes_protection;
use vidkv::packed::{PackedCache, PackedKeys, PackedValues};
use vidkv::report::relative_l2;
use vidkv::{Tensor, VidkvError, PRESET_NAMES};

/// Differences between a CPU and a GPU plane set.
#[derive(Default, Debug)]
struct Diff {
    codes: usize,
    code_mismatches: usize,
    metadata: usize,
    metadata_ulp: usize,
    /// The first differences, each naming the kernel that writes the array, the row, the
    /// element and the word of the array that holds it.
    first: Vec<String>,
}

/// How many differences a failure lists.
const LISTED: usize = 5;

impl Diff {
    fn note(&mut self, kernel: &str, array: &str, row: usize, at: usize, word: usize) {
        if self.first.len() < LISTED {
            self.first.push(format!(
                "{kernel}: {array} row {row} element {at} (word {word})"
            ));
        }
    }

    /// `kernel`'s f16 metadata of `row`, group `group` (`word` of its array).
    fn metadata(
        &mut self,
        kernel: &str,
        (row, group, word): (usize, usize, usize),
        pair: [f32; 2],
    ) {
        let [cpu, gpu] = pair;
        self.metadata += 1;
        if cpu == gpu {
            return;
        }
        // A one-ulp f16 difference can only come from an f32 value rounding differently,
        // i.e. an f32 difference at the rounding boundary; count it.
        let (a, b) = (
            half::f16::from_f32(cpu).to_bits(),
            half::f16::from_f32(gpu).to_bits(),
        );
        assert!(
            a.abs_diff(b) <= 1,
            "{kernel}: metadata of row {row} group {group} (word {word}): cpu {cpu}, gpu {gpu}"
        );
        self.metadata_ulp += 1;
        self.note(kernel, "metadata", row, group, word);
    }

    fn code(&mut self, kernel: &str, (row, at, word): (usize, usize, usize), same: bool) {
        self.codes += 1;
        if !same {
            self.code_mismatches += 1;
            self.note(kernel, "codes", row, at, word);
        }
    }

    fn two_bit(&mut self, cpu: &TwoBitPlane, gpu: &TwoBitPlane) {
        const KERNEL: &str = "quantize_two_bit";
        assert_eq!(cpu.shape, gpu.shape);
        let s = cpu.shape;
        let words_per_row = s.groups() * TwoBitPlane::words_per_group(s.group_size);
        for r in 0..s.rows {
            for g in 0..s.groups() {
                let (a, b) = (cpu.params(r, g), gpu.params(r, g));
                let at = (r, g, r * s.groups() + g);
                self.metadata(KERNEL, at, [a.scale, b.scale]);
                self.metadata(KERNEL, at, [a.min, b.min]);
            }
            for i in 0..s.len {
                let word = r * words_per_row + i / 16;
                self.code(KERNEL, (r, i, word), cpu.code(r, i) == gpu.code(r, i));
            }
        }
    }

    fn sign(&mut self, cpu: &SignPlane, gpu: &SignPlane) {
        const KERNEL: &str = "quantize_sign (after real_dft)";
        assert_eq!(cpu.shape, gpu.shape);
        let s = cpu.shape;
        let words_per_row = s.groups() * SignPlane::words_per_group(s.group_size);
        for r in 0..s.rows {
            for g in 0..s.groups() {
                let at = (r, g, (r / 2) * s.groups() + g);
                self.metadata(KERNEL, at, [cpu.scale(r, g), gpu.scale(r, g)]);
            }
            for i in 0..s.len {
                let word = r * words_per_row + i / 32;
                self.code(KERNEL, (r, i, word), cpu.code(r, i) == gpu.code(r, i));
            }
        }
    }

    /// STP refinement rows: the GPU decodes the value plane with its own kernels, so a
    /// residual may round differently and move a code or scale across a boundary.
    fn refinement(&mut self, cpu: Option<&RotatedRows>, gpu: Option<&RotatedRows>) {
        let (cpu, gpu) = match (cpu, gpu) {
            (None, None) => return,
            (Some(a), Some(b)) => (a, b),
            _ => panic!("one side has an STP refinement, the other not"),
        };
        const KERNEL: &str = "rotated+tokens (STP refinement)";
        assert_eq!((cpu.tokens, cpu.bits), (gpu.tokens, gpu.bits));
        let d = cpu.head_dim;
        for c in 0..d {
            let pair = [cpu.state.mean_value(c), gpu.state.mean_value(c)];
            self.metadata(KERNEL, (0, c, c / 2), pair);
        }
        self.metadata(KERNEL, (0, 0, 0), [cpu.state.base(), gpu.state.base()]);
        let words_per_token = cpu.codes.len() / cpu.tokens.max(1);
        for t in 0..cpu.tokens {
            self.code(
                KERNEL,
                (t, 0, t / 4),
                cpu.scale_byte(t) == gpu.scale_byte(t),
            );
            for i in 0..d {
                let word = t * words_per_token + i * usize::from(cpu.bits) / 32;
                self.code(KERNEL, (t, i, word), cpu.code(t, i) == gpu.code(t, i));
            }
        }
    }

    fn ternary(&mut self, cpu: &TernaryPlane, gpu: &TernaryPlane) {
        const KERNEL: &str = "quantize_ternary";
        assert_eq!(cpu.shape, gpu.shape);
        let s = cpu.shape;
        let record = TernaryPlane::words_per_record(s.group_size);
        for r in 0..s.rows {
            for g in 0..s.groups() {
                let at = (r, g, (r / 2) * s.groups() + g);
                self.metadata(KERNEL, at, [cpu.scale(r, g), gpu.scale(r, g)]);
            }
            for i in 0..s.len {
                // Five channels share a record of one byte per token.
                let word =
                    ((r / 5) * s.groups() + i / s.group_size) * record + (i % s.group_size) / 4;
                self.code(KERNEL, (r, i, word), cpu.trit(r, i) == gpu.trit(r, i));
            }
        }
    }

    /// Boundary cases allowed: at most 1 in 10⁴ codes (and a handful in small cases).
    fn assert_tiny(&self, what: &str) {
        let allowed = 2 + self.codes / 10_000;
        assert!(
            self.code_mismatches <= allowed,
            "{what}: {} of {} codes differ (allowed {allowed}); first: {:?}",
            self.code_mismatches,
            self.codes,
            self.first
        );
        assert!(
            self.metadata_ulp <= 2 + self.metadata / 1000,
            "{what}: {} of {} scales/mins differ by an f16 ulp; first: {:?}",
            self.metadata_ulp,
            self.metadata,
            self.first
        );
    }
}

/// A plane's arrays, each named by the kernel stage that writes it.
type NamedArrays<'a> = Vec<(&'static str, &'a [u32])>;

/// The arrays of rotated per-token rows, by the `rotated.wgsl` (+ `tokens`) stage that writes them.
fn rotated_arrays(rows: &RotatedRows) -> NamedArrays<'_> {
    vec![
        ("state mean (state_means)", &rows.state.mean),
        (
            "state base (fit_base)",
            std::slice::from_ref(&rows.state.base),
        ),
        ("codes (quantize)", &rows.codes),
        ("scale bytes (pack_scales)", &rows.scales),
    ]
}

/// The arrays of group records, by the `rotated.wgsl` (+ `groups`) stage that writes them.
fn group_arrays(codes: &GroupCodes) -> NamedArrays<'_> {
    vec![
        ("state mean (state_means)", &codes.state.mean),
        (
            "state base (fit_base)",
            std::slice::from_ref(&codes.state.base),
        ),
        ("row widths (group_widths, choose_groups)", &codes.widths),
        ("codes (row_fits, choose_groups)", &codes.codes),
        ("scale bytes (choose_groups)", &codes.scales),
    ]
}

/// Fails on the first word that differs, naming the array (and the kernel stage that
/// writes it) and the word.
fn same_words(what: &str, cpu: &NamedArrays<'_>, gpu: &NamedArrays<'_>) {
    for ((name, a), (_, b)) in cpu.iter().zip(gpu) {
        assert_eq!(a.len(), b.len(), "{what}: {name}: lengths differ");
        if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
            panic!(
                "{what}: {name}: word {i} of {} differs: cpu {:#010x}, gpu {:#010x}",
                a.len(),
                a[i],
                b[i]
            );
        }
    }
}

fn compare(cpu: &PackedCache, gpu: &PackedCache, what: &str) -> Diff {
    assert_eq!(cpu.shape, gpu.shape);
    assert_eq!(cpu.protected, gpu.protected);
    let mut diff = Diff::default();
    for (c, g) in cpu.heads.iter().zip(&gpu.heads) {
        assert_eq!(c.plan, g.plan);
        assert_eq!(c.exact_keys, g.exact_keys, "{what}: exact keys");
        assert_eq!(c.exact_values, g.exact_values, "{what}: exact values");
        match (&c.keys, &g.keys) {
            (PackedKeys::Exact, PackedKeys::Exact) => {}
            (PackedKeys::TwoBit { plane: a, .. }, PackedKeys::TwoBit { plane: b, .. }) => {
                diff.two_bit(a, b)
            }
            (PackedKeys::Mixed(a), PackedKeys::Mixed(b)) => {
                assert_eq!(a.outlier_mask, b.outlier_mask, "{what}: channel split");
                diff.two_bit(&a.outliers, &b.outliers);
                diff.sign(&a.normals, &b.normals);
            }
            // The rotated kernels write the reference's words exactly (tests/rotated.rs); a
            // difference names the kernel stage and the word.
            (PackedKeys::Rotated(a), PackedKeys::Rotated(b)) => same_words(
                &format!("{what}: keys"),
                &rotated_arrays(a),
                &rotated_arrays(b),
            ),
            (PackedKeys::RotatedGroups(a), PackedKeys::RotatedGroups(b)) => {
                same_words(&format!("{what}: keys"), &group_arrays(a), &group_arrays(b))
            }
            _ => panic!("{what}: key schemes differ"),
        }
        match (&c.values, &g.values) {
            (PackedValues::Exact, PackedValues::Exact) => {}
            (PackedValues::TwoBit { plane: a, .. }, PackedValues::TwoBit { plane: b, .. }) => {
                diff.two_bit(a, b)
            }
            (
                PackedValues::Ternary {
                    plane: a,
                    protected: pa,
                },
                PackedValues::Ternary {
                    plane: b,
                    protected: pb,
                },
            ) => {
                diff.ternary(a, b);
                diff.two_bit(pa, pb);
            }
            (
                PackedValues::Rotated { rows: a, means: ma },
                PackedValues::Rotated { rows: b, means: mb },
            ) => {
                same_words(
                    &format!("{what}: values"),
                    &rotated_arrays(a),
                    &rotated_arrays(b),
                );
                assert_eq!(
                    ma, mb,
                    "{what}: group means (rotated.wgsl group_means, pack_steps)"
                );
            }
            (PackedValues::RotatedGroups(a), PackedValues::RotatedGroups(b)) => same_words(
                &format!("{what}: values"),
                &group_arrays(a),
                &group_arrays(b),
            ),
            _ => panic!("{what}: value schemes differ"),
        }
        diff.refinement(c.value_refinement.as_ref(), g.value_refinement.as_ref());
    }
    if diff.code_mismatches + diff.metadata_ulp > 0 {
        eprintln!("{what}: boundary cases {diff:?}");
    }
    diff.assert_tiny(what);
    diff
}

fn check_round_trip(k: &Tensor, v: &Tensor, config: &QuantConfig, protected: &[u32], what: &str) {
    let cpu = PackedCache::quantize(k, v, config, protected).unwrap();
    let gpu_cache = quantize_cache(gpu(), k, v, config, protected).unwrap();
    compare(&cpu, &gpu_cache, what);
    let (k_cpu, v_cpu) = cpu.dequantize();
    let (k_gpu, v_gpu) = dequantize_cache(gpu(), &cpu).unwrap();
    assert!(
        relative_l2(&k_gpu.data, &k_cpu.data) < 1e-5,
        "{what}: dequantized K"
    );
    assert!(
        relative_l2(&v_gpu.data, &v_cpu.data) < 1e-5,
        "{what}: dequantized V"
    );
}

#[test]
fn real_dev_files_match_the_cpu_for_every_preset() {
    for file in ["smollm2_text_dev", "dinov2_video_dev"] {
        let sample = shared_sample(file);
        for preset in PRESET_NAMES {
            let config = QuantConfig::preset(preset).unwrap();
            check_round_trip(
                &sample.k,
                &sample.v,
                &config,
                &[],
                &format!("{file} {preset}"),
            );
        }
        // STP: every seventh token protected (ternary planes, then rotated refinements).
        let protected: Vec<u32> = (3..sample.k.dim(2) as u32).step_by(7).collect();
        for preset in ["vidkv-tuned", "vidkv"] {
            let config = QuantConfig::preset(preset).unwrap();
            check_round_trip(
                &sample.k,
                &sample.v,
                &config,
                &protected,
                &format!("{file} {preset}+STP"),
            );
        }
    }
}

/// The GPU quantization tests' K/V ([`noise::structured_noise`]).
fn random_tensor(shape: [usize; 4], seed: u64) -> Tensor {
    noise::structured_noise(
        shape,
        seed.wrapping_add(0x9E37_79B9_7F4A_7C15),
        5,
        (11, 3.0),
        1.0,
    )
}

fn config_strategy() -> impl Strategy<Value = QuantConfig> {
    (
        prop::sample::select(PRESET_NAMES.to_vec()),
        prop::sample::select(vec![8usize, 16, 32, 64]),
        0usize..5,
        0usize..3,
        prop::sample::select(vec![0.0f32, 0.25, 0.4, 0.5, 1.0]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(preset, group_size, sinks, residual_groups, rho, fft, per_layer)| {
                let mut config = QuantConfig::preset(preset).unwrap();
                config.group_size = group_size;
                config.sinks = sinks;
                config.residual = residual_groups * group_size;
                if let KeyScheme::Mixed { .. } = config.keys {
                    config.keys = KeyScheme::Mixed {
                        outlier_ratio: rho,
                        fft,
                        split: if per_layer {
                            SplitGranularity::PerLayer
                        } else {
                            SplitGranularity::PerHead
                        },
                    };
                }
                config
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn generated_shapes_match_the_cpu(
        d in prop::sample::select(vec![64usize, 80, 96, 112, 128, 256]),
        tokens in 1usize..5000,
        heads in 1usize..9,
        config in config_strategy(),
        seed in any::<u64>(),
        stp in any::<bool>(),
    ) {
        // Keep each case small enough for the CPU side: at most ~1.2M elements.
        let tokens = tokens.min(1_200_000 / (d * heads)).max(1);
        let k = random_tensor([1, heads, tokens, d], seed);
        let v = random_tensor([1, heads, tokens, d], seed ^ 1);
        let protected: Vec<u32> = if stp && takes_protection(&config.values) {
            (0..tokens as u32).filter(|t| t % 5 == 2).collect()
        } else {
            Vec::new()
        };
        check_round_trip(&k, &v, &config, &protected, &format!("d={d} tokens={tokens} heads={heads} {config:?}"));
    }
}

#[test]
fn chunked_inputs_match_the_cpu() {
    // A 48 KiB binding limit forces several chunks per head for every kernel.
    let small = GpuContext::new(&GpuOptions {
        max_binding_bytes: Some(48 * 1024),
        ..Default::default()
    })
    .unwrap();
    let k = random_tensor([2, 2, 700, 64], 5);
    let v = random_tensor([2, 2, 700, 64], 6);
    let configs = [
        QuantConfig::preset("vidkv-tuned").unwrap(),
        QuantConfig::preset("kivi2").unwrap(),
        QuantConfig::preset("fp16").unwrap(),
        QuantConfig {
            keys: KeyScheme::Mixed {
                outlier_ratio: 0.5,
                fft: false,
                split: SplitGranularity::PerHead,
            },
            values: ValueScheme::TwoBit {
                grouping: Grouping::PerChannel,
            },
            ..QuantConfig::preset("vidkv-tuned").unwrap()
        },
        QuantConfig {
            values: ValueScheme::Ternary {
                gamma: 0.5,
                scale: TernaryScale::AbsMean,
            },
            ..QuantConfig::preset("vidkv-tuned").unwrap()
        },
    ];
    for config in configs {
        let protected: Vec<u32> = if matches!(config.values, ValueScheme::Ternary { .. }) {
            (1..700).step_by(4).collect()
        } else {
            Vec::new()
        };
        let cpu = PackedCache::quantize(&k, &v, &config, &protected).unwrap();
        let chunked = quantize_cache(&small, &k, &v, &config, &protected).unwrap();
        compare(&cpu, &chunked, &format!("chunked {config:?}"));
        let (k_cpu, v_cpu) = cpu.dequantize();
        let (k_gpu, v_gpu) = dequantize_cache(&small, &cpu).unwrap();
        assert!(relative_l2(&k_gpu.data, &k_cpu.data) < 1e-5);
        assert!(relative_l2(&v_gpu.data, &v_cpu.data) < 1e-5);
    }
}

#[test]
fn a_64k_token_8_head_d128_layer_quantizes_without_error() {
    let k = random_tensor([1, 8, 65536, 128], 11);
    let v = random_tensor([1, 8, 65536, 128], 12);
    let config = QuantConfig::preset("vidkv-tuned").unwrap();
    let gpu_cache = quantize_cache(gpu(), &k, &v, &config, &[]).unwrap();
    let cpu = PackedCache::quantize(&k, &v, &config, &[]).unwrap();
    let diff = compare(&cpu, &gpu_cache, "64k layer");
    assert!(diff.codes > 100_000_000);
    assert_eq!(gpu_cache.size(), cpu.size());
}

#[test]
fn an_unknown_adapter_is_a_typed_error_that_says_how_to_get_one() {
    let err = GpuContext::new(&GpuOptions {
        adapter: Some("no-such-adapter-anywhere".into()),
        ..Default::default()
    })
    .err()
    .expect("no adapter should match");
    assert!(matches!(err, VidkvError::NoAdapter { .. }));
    assert!(err.to_string().contains("mesa-vulkan-drivers"), "{err}");
}

/// A word that differs is reported with its array, the kernel stage writing it, and its
/// index.
#[test]
#[should_panic(expected = "values: codes (quantize): word 1 of 3 differs")]
fn a_differing_word_names_its_kernel_stage() {
    let (cpu, gpu) = ([1u32, 2, 3], [1u32, 7, 3]);
    same_words(
        "values",
        &vec![("codes (quantize)", &cpu[..])],
        &vec![("codes (quantize)", &gpu[..])],
    );
}

/// A 2-bit code that differs is listed with its kernel, row, element and word, and a
/// ternary one likewise (the failure message of `Diff::assert_tiny`).
#[test]
fn a_differing_code_names_its_kernel_row_and_word() {
    use vidkv::packed::planes::GroupedShape;
    let shape = GroupedShape {
        rows: 2,
        len: 64,
        group_size: 32,
    };
    let cpu = TwoBitPlane {
        shape,
        codes: vec![0; 2 * 2 * TwoBitPlane::words_per_group(32)],
        params: vec![0; 4],
    };
    let mut gpu = cpu.clone();
    gpu.codes[5] = 1 << 2;
    let mut diff = Diff::default();
    diff.two_bit(&cpu, &gpu);
    assert_eq!(
        diff.first,
        ["quantize_two_bit: codes row 1 element 17 (word 5)"]
    );

    let shape = GroupedShape { rows: 6, ..shape };
    let words = 2 * 2 * TernaryPlane::words_per_record(32);
    let cpu = TernaryPlane {
        shape,
        codes: vec![0; words],
        scales: vec![0; 6],
    };
    let mut gpu = cpu.clone();
    // Record (row group 1, token group 0), byte 1: rows 5…9, token 1; 2 = trit +1 of row 5.
    gpu.codes[2 * TernaryPlane::words_per_record(32)] = 2 << 8;
    let mut diff = Diff::default();
    diff.ternary(&cpu, &gpu);
    assert_eq!(
        diff.first,
        ["quantize_ternary: codes row 5 element 1 (word 16)"]
    );
}
