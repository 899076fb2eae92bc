//! The spec's test vectors (§10 of vidkv-spec.md), with the corrected dequantization.

use vidkv::config::{KeyScheme, QuantConfig, SplitGranularity, TernaryScale, ValueScheme};
use vidkv::packed::planes::{GroupedShape, SignPlane, TwoBitPlane};
use vidkv::packed::{PackedCache, PackedKeys};
use vidkv::reference::quantizers::{
    dequantize_2bit, dequantize_sign, dequantize_ternary, quantize_2bit, quantize_sign,
    quantize_ternary,
};
use vidkv::reference::rdft::CompactRdft;
use vidkv::reference::split::{accumulate_min_max, empty_min_max, split_by_range};
use vidkv::Tensor;

fn assert_close(got: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= tol * e.abs().max(1.0),
            "element {i}: got {g}, expected {e}"
        );
    }
}

fn rel_l2(approx: &[f32], exact: &[f32]) -> f64 {
    let err: f64 = approx
        .iter()
        .zip(exact)
        .map(|(&a, &x)| (f64::from(a) - f64::from(x)).powi(2))
        .sum();
    let norm: f64 = exact.iter().map(|&x| f64::from(x).powi(2)).sum();
    (err / norm).sqrt()
}

#[test]
fn tv_a_two_bit_rounds_half_to_even() {
    let x = [-2.0, 4.0, -1.0, 1.0, 0.5, 3.0, 2.9, -0.25];
    let mut codes = [0u8; 8];
    let p = quantize_2bit(&x, &mut codes);
    assert_eq!((p.min, p.scale), (-2.0, 2.0));
    assert_eq!(codes, [0, 3, 0, 2, 1, 2, 2, 1]);
    let x_hat: Vec<f32> = codes.iter().map(|&c| dequantize_2bit(c, p)).collect();
    assert_eq!(x_hat, [-2.0, 4.0, -2.0, 2.0, 0.0, 2.0, 2.0, 0.0]);
}

#[test]
fn tv_a_constant_group_decodes_to_its_minimum() {
    let x = [1.5f32; 8];
    let mut codes = [9u8; 8];
    let p = quantize_2bit(&x, &mut codes);
    assert_eq!(p.scale, 0.0);
    assert_eq!(codes, [0; 8]);
    assert!(codes.iter().all(|&c| dequantize_2bit(c, p) == 1.5));
}

#[test]
fn tv_b_sign_uses_plus_minus_scale_and_packs_lsb_first() {
    let x = [0.5, -1.5, 2.0, -0.25, 0.0, -3.0, 1.0, 0.25];
    let mut codes = [0u8; 8];
    let s = quantize_sign(&x, &mut codes);
    assert_eq!(s, 1.0625);
    assert_eq!(codes, [1, 0, 1, 0, 1, 0, 1, 1]);
    let x_hat: Vec<f32> = codes.iter().map(|&c| dequantize_sign(c, s)).collect();
    assert_eq!(
        x_hat,
        [1.0625, -1.0625, 1.0625, -1.0625, 1.0625, -1.0625, 1.0625, 1.0625]
    );
    let plane = SignPlane::quantize(
        &x,
        GroupedShape {
            rows: 1,
            len: 8,
            group_size: 8,
        },
    );
    assert_eq!(plane.codes, vec![213]);
}

#[test]
fn tv_c_ternary_thresholds_are_strict_and_scaled() {
    let x = [0.6, -1.5, 2.0, -0.25, 0.0, -3.0, 1.0, -0.55];
    let mut t = [0i8; 8];
    let s = quantize_ternary(&x, 0.5, TernaryScale::AbsMean, &mut t);
    assert!((s - 1.1125).abs() < 1e-6);
    assert_eq!(t, [1, -1, 1, 0, 0, -1, 1, 0]);
    let x_hat: Vec<f32> = t.iter().map(|&v| dequantize_ternary(v, s)).collect();
    assert_close(
        &x_hat,
        &[1.1125, -1.1125, 1.1125, 0.0, 0.0, -1.1125, 1.1125, 0.0],
        1e-6,
    );
    quantize_ternary(&x, 0.7, TernaryScale::AbsMean, &mut t);
    assert_eq!(t, [0, -1, 1, 0, 0, -1, 1, 0]);

    let tie = [0.5, -0.5, 2.0, -3.0, 1.0, 0.0, 0.5, -0.5];
    let s = quantize_ternary(&tie, 0.5, TernaryScale::AbsMean, &mut t);
    assert_eq!(s, 1.0);
    assert_eq!(t, [0, 0, 1, -1, 1, 0, 0, 0]);
}

fn tv_d_input() -> Vec<f32> {
    vec![
        1.0496, 0.8736, 1.2288, 3.0068, 2.7009, 1.5247, 2.1454, 1.6852, -0.4952, -0.8533, -0.7387,
        -2.5104, -3.0152, -1.7251, -2.0253, -2.2590, -0.2289, 0.7737, 0.3980, 1.8503, 3.1091,
        2.0283, 1.8568, 2.5873, 1.0381, -0.5573, -0.2088, -1.1343, -2.9328, -2.3683, -1.7281,
        -2.6617,
    ]
}

#[test]
fn tv_d_production_group() {
    let x = tv_d_input();
    let shape = GroupedShape {
        rows: 1,
        len: 32,
        group_size: 32,
    };

    let mut codes = [0u8; 32];
    let p = quantize_2bit(&x, &mut codes);
    assert!((p.scale - 2.041_433_3).abs() < 1e-5);
    assert_eq!(
        codes,
        [
            2, 2, 2, 3, 3, 2, 3, 2, 1, 1, 1, 0, 0, 1, 0, 0, 1, 2, 2, 2, 3, 2, 2, 3, 2, 1, 1, 1, 0,
            0, 1, 0
        ]
    );
    let x_hat: Vec<f32> = codes.iter().map(|&c| dequantize_2bit(c, p)).collect();
    assert!((rel_l2(&x_hat, &x) - 0.2944).abs() < 1e-4);
    assert_eq!(
        TwoBitPlane::quantize(&x, shape).codes,
        vec![68_533_226, 274_131_881]
    );

    let s = quantize_sign(&x, &mut codes);
    assert!((s - 1.665_593_8).abs() < 1e-6);
    assert_eq!(SignPlane::quantize(&x, shape).codes, vec![33_423_615]);

    let mut t = [0i8; 32];
    let s = quantize_ternary(&x, 0.5, TernaryScale::AbsMean, &mut t);
    assert_eq!(
        t,
        [
            1, 1, 1, 1, 1, 1, 1, 1, 0, -1, 0, -1, -1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0,
            -1, -1, -1, -1, -1
        ]
    );
    assert_eq!(t.iter().filter(|&&v| v != 0).count(), 25);
    let x_hat: Vec<f32> = t.iter().map(|&v| dequantize_ternary(v, s)).collect();
    assert!((rel_l2(&x_hat, &x) - 0.3850).abs() < 1e-4);

    quantize_ternary(&x, 0.7, TernaryScale::AbsMean, &mut t);
    assert_eq!(
        t,
        [
            0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, -1, -1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0,
            0, -1, -1, -1, -1
        ]
    );
}

const TV_E_K: [[f32; 8]; 8] = [
    [0.24, 1.17, 1.09, 0.26, 1.74, -0.68, -3.46, -0.27],
    [0.66, 1.94, 0.75, -0.11, -0.29, -0.81, -1.34, 0.01],
    [0.69, 0.02, 0.08, -0.39, -0.32, -0.40, 2.50, 0.21],
    [0.31, -2.82, -0.31, -0.32, 1.68, 0.16, 4.51, 0.14],
    [-0.14, -3.97, -0.05, 0.04, 3.87, 0.36, 2.86, -0.13],
    [-0.24, -2.37, 0.61, 0.35, 4.24, 0.02, -0.95, -0.36],
    [0.10, 0.50, 1.07, 0.33, 2.45, -0.56, -3.40, -0.33],
    [0.57, 2.02, 0.90, 0.00, 0.14, -0.83, -2.25, -0.07],
];

#[test]
fn tv_e_channel_split_by_range() {
    let flat: Vec<f32> = TV_E_K.concat();
    let mut mm = empty_min_max(8);
    accumulate_min_max(&flat, 8, &mut mm);
    let ranges: Vec<f32> = mm.iter().map(|(lo, hi)| hi - lo).collect();
    assert_close(
        &ranges,
        &[0.93, 5.99, 1.40, 0.74, 4.56, 1.19, 7.97, 0.57],
        1e-5,
    );
    let split = split_by_range(&mm, 4);
    assert_eq!(split.outliers, vec![1, 2, 4, 6]);
    assert_eq!(split.normals, vec![0, 3, 5, 7]);
}

#[test]
fn tv_e_compact_spectrum_and_scales() {
    let rdft = CompactRdft::new(4);
    let mut coefficient_rows = vec![vec![0.0f32; 8]; 4];
    for (t, row) in TV_E_K.iter().enumerate() {
        let normal = [row[0], row[3], row[5], row[7]];
        let mut c = [0.0f32; 4];
        rdft.forward(&normal, &mut c);
        for j in 0..4 {
            coefficient_rows[j][t] = c[j];
        }
    }
    let expected_scales = [0.28125, 0.80625, 0.415, 0.34625];
    let expected_codes = [
        [0, 0, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 1],
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
    ];
    for j in 0..4 {
        let mut codes = [0u8; 8];
        let s = quantize_sign(&coefficient_rows[j], &mut codes);
        assert!((s - expected_scales[j]).abs() < 1e-5, "component {j}: {s}");
        assert_eq!(codes, expected_codes[j], "component {j}");
    }
}

fn tv_e_config() -> QuantConfig {
    QuantConfig {
        group_size: 8,
        sinks: 0,
        residual: 0,
        keys: KeyScheme::Mixed {
            outlier_ratio: 0.5,
            fft: true,
            split: SplitGranularity::PerHead,
        },
        values: ValueScheme::Ternary {
            gamma: 0.5,
            scale: TernaryScale::AbsMean,
        },
        stp_ratio: 0.2,
    }
}

#[test]
fn tv_e_mixed_key_reconstruction() {
    let flat: Vec<f32> = TV_E_K.concat();
    let k = Tensor::new("k", vec![1, 1, 8, 8], flat.clone()).unwrap();
    let cache = PackedCache::quantize(&k, &k, &tv_e_config(), &[]).unwrap();
    assert!(matches!(cache.heads[0].keys, PackedKeys::Mixed(_)));
    let (k_hat, _) = cache.dequantize();

    let outliers: [(usize, [f32; 8]); 4] = [
        (
            1,
            [
                2.02, 2.02, 0.023333, -1.973333, -3.97, -1.973333, 0.023333, 2.02,
            ],
        ),
        (
            2,
            [
                1.09, 0.623333, 0.156667, -0.31, 0.156667, 0.623333, 1.09, 1.09,
            ],
        ),
        (4, [1.2, -0.32, -0.32, 1.2, 4.24, 4.24, 2.72, -0.32]),
        (
            6,
            [
                -3.46, -0.803333, 1.853333, 4.51, 1.853333, -0.803333, -3.46, -3.46,
            ],
        ),
    ];
    // Scales and minimums are stored as f16, so allow f16 rounding of the metadata.
    for (c, expected) in outliers {
        let got: Vec<f32> = (0..8).map(|t| k_hat.data[t * 8 + c]).collect();
        assert_close(&got, &expected, 4e-3);
    }
    let normals: [[f32; 4]; 8] = [
        [0.24625, 0.22375, -0.56, -0.19125],
        [0.24625, -0.19125, -0.56, 0.22375],
        [0.56, -0.22375, -0.24625, 0.19125],
        [0.56, -0.22375, -0.24625, 0.19125],
        [-0.24625, 0.19125, 0.56, -0.22375],
        [-0.56, 0.22375, 0.24625, -0.19125],
        [0.24625, 0.22375, -0.56, -0.19125],
        [0.24625, 0.22375, -0.56, -0.19125],
    ];
    for (t, expected) in normals.iter().enumerate() {
        let row = &k_hat.data[t * 8..t * 8 + 8];
        assert_close(&[row[0], row[3], row[5], row[7]], expected, 1e-3);
    }
    assert!((rel_l2(&k_hat.data, &flat) - 0.2140).abs() < 1e-3);
}
