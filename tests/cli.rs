//! The command line end to end: the main job, JSON output, and GPU/CPU agreement.

#[path = "common/cli.rs"]
mod cli_runner;

use serde_json::Value;

use cli_runner::vidkv_ok as vidkv;

fn json(args: &[&str]) -> Value {
    serde_json::from_slice(&vidkv(args).stdout).expect("one JSON document on stdout")
}

/// The `fast_paths` list of a JSON report (`adapter`, `bench`).
fn fast_paths(doc: &Value) -> Vec<&str> {
    doc["fast_paths"]
        .as_array()
        .expect("a fast_paths list")
        .iter()
        .map(|p| p.as_str().expect("a fast path's name"))
        .collect()
}

#[test]
fn the_main_job_prints_every_preset_for_both_bundled_samples() {
    let out = String::from_utf8(vidkv(&[]).stdout).unwrap();
    for needle in [
        "device:",
        "smollm2_text_sample",
        "dinov2_video_sample",
        "fp16",
        "kivi2",
        "vidkv-paper",
        "k2v2-channel",
        "vidkv-tuned",
        "vidkv ",
    ] {
        assert!(out.contains(needle), "missing {needle} in\n{out}");
    }
}

#[test]
fn gpu_and_cpu_report_the_same_numbers() {
    let gpu = json(&["report", "--json", "--device", "gpu"]);
    let cpu = json(&["report", "--json", "--device", "cpu"]);
    assert!(
        gpu["device"].as_str().unwrap().contains('('),
        "adapter named: {}",
        gpu["device"]
    );
    assert_eq!(cpu["device"], "cpu (reference)");
    let files = gpu["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for (g, c) in files.iter().zip(cpu["files"].as_array().unwrap()) {
        assert_eq!(g["file"], c["file"]);
        let presets = g["presets"].as_array().unwrap();
        assert_eq!(presets.len(), vidkv::PRESET_NAMES.len());
        for (gp, cp) in presets.iter().zip(c["presets"].as_array().unwrap()) {
            for key in ["k_rel_mse", "v_rel_mse", "attn_rel_err"] {
                let (a, b) = (gp[key].as_f64().unwrap(), cp[key].as_f64().unwrap());
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1e-12),
                    "{} {key}: gpu {a} cpu {b}",
                    gp["preset"]
                );
            }
            assert_eq!(gp["bits_per_element"], cp["bits_per_element"]);
        }
    }
}

#[test]
fn sizes_refuses_shapes_it_cannot_size() {
    for tokens in ["0", "18446744073709551615", "1000000000000000000"] {
        let out = cli_runner::vidkv(&["sizes", "--tokens", tokens]);
        assert!(!out.status.success(), "sizes --tokens {tokens} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid configuration"), "{stderr}");
    }
}

/// Benchmarks sized beyond the machine are refused up front with the memory they would need
/// (they used to abort on the allocation).
#[test]
fn benchmarks_refuse_sizes_beyond_the_machine() {
    let huge = "100000000000";
    for args in [
        &[
            "bench",
            "attention",
            "--context",
            huge,
            "--preset",
            "vidkv",
            "--runs",
            "1",
        ][..],
        &["bench", "quantize", "--tokens", huge, "--runs", "1"][..],
        &["bench", "cache", "--context", huge, "--runs", "1"][..],
        &["bench", "cache", "--layers", "100000", "--runs", "1"][..],
    ] {
        let out = cli_runner::vidkv(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("bytes of memory") || stderr.contains("must be in range"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A run count of 0 (which would time nothing) or past 10,000 is refused by the parser,
/// before any work.
#[test]
fn benchmarks_refuse_run_counts_out_of_range() {
    for bench in ["attention", "quantize", "cache"] {
        for runs in ["0", "10001"] {
            let out = cli_runner::vidkv(&["bench", bench, "--runs", runs]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{bench} {runs}: {stderr}");
            assert!(
                stderr.contains("--runs") && stderr.contains("1..=10000"),
                "{bench} {runs}: {stderr}"
            );
        }
    }
}

/// `vidkv adapter` reports the adapter's offer and the context's picks: the fast paths it
/// uses are features the adapter offers (none with `--portable`), the same as a benchmark
/// reports, and the lines name the adapter.
#[test]
fn adapter_reports_what_the_gpu_offers_and_what_vidkv_picks() {
    let doc = json(&["adapter", "--json"]);
    assert!(doc["offer_known"].as_bool().unwrap(), "{doc}");
    let offered = |key: &str| doc["features"][key].as_bool().unwrap();
    let paths = fast_paths(&doc);
    for (path, feature) in [
        ("subgroups", "subgroups"),
        ("shader-f16 loads", "shader_f16"),
        ("immediates", "immediates"),
    ] {
        assert!(!paths.contains(&path) || offered(feature), "{doc}");
    }
    let configs = doc["cooperative_matrix_configs"].as_array().unwrap();
    assert!(configs.is_empty() || offered("cooperative_matrix"), "{doc}");
    assert_eq!(doc["split_tokens"].as_u64().unwrap() % 256, 0, "{doc}");
    let bench = json(&[
        "bench",
        "attention",
        "--context",
        "1024",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(bench["fast_paths"], doc["fast_paths"]);
    let portable = json(&["adapter", "--json", "--portable"]);
    assert_eq!(portable["fast_paths"], serde_json::json!([]));
    assert_eq!(portable["features"], doc["features"]);
    let lines = String::from_utf8(vidkv(&["adapter"]).stdout).unwrap();
    let name = doc["name"].as_str().unwrap();
    assert!(
        lines.contains(name) && lines.contains("vidkv uses"),
        "{lines}"
    );
}

#[test]
fn sizes_reports_vidkv_within_the_bit_budget() {
    let doc = json(&["sizes", "--tokens", "16384", "--json"]);
    for name in ["vidkv", "vidkv-tuned"] {
        let preset = doc["sizes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["preset"] == name)
            .unwrap();
        let bits = preset["bits_per_element"]["all"].as_f64().unwrap();
        assert!(bits <= 2.2, "{name}: {bits}");
    }
}

#[test]
fn report_and_bench_write_svg_charts() {
    let dir = std::env::temp_dir().join(format!("vidkv-plots-{}", std::process::id()));
    vidkv(&[
        "report",
        "--device",
        "cpu",
        "--preset",
        "kivi2",
        "--preset",
        "vidkv-tuned",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    for name in [
        "pareto.svg",
        "layers-smollm2_text_sample.svg",
        "layers-dinov2_video_sample.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("vidkv-tuned"),
            "{name}"
        );
    }
    vidkv(
        &[
            &["bench", "attention", "--context", "256", "--context", "512"][..],
            &SMALL_SHAPE[..],
            &["--preset", "vidkv-tuned", "--plot", dir.to_str().unwrap()][..],
        ]
        .concat(),
    );
    let svg = std::fs::read_to_string(dir.join("attention.svg")).unwrap();
    assert!(svg.contains("fp16") && svg.contains("vidkv-tuned"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kernels a `bench attention --kernels --json` result timed.
fn kernel_names(result: &Value) -> Vec<&str> {
    result["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kernel"].as_str().unwrap())
        .collect()
}

/// A small model shape and one timed run, for the decode benchmarks.
const SMALL_SHAPE: [&str; 8] = [
    "--kv-heads",
    "1",
    "--q-heads",
    "2",
    "--head-dim",
    "64",
    "--runs",
    "1",
];

/// Both decode benchmarks take `flag` with the value `taken` (reported as `key` in their
/// JSON), and refuse the value `refused` with an error that contains `rule`, not a panic.
fn check_bench_option(flag: &str, taken: u64, key: &str, refused: &str, rule: &str) {
    let value = taken.to_string();
    let small = [&SMALL_SHAPE[..], &[flag, &value, "--json"][..]].concat();
    let attention = [
        &[
            "bench",
            "attention",
            "--context",
            "600",
            "--preset",
            "vidkv",
        ][..],
        &small[..],
    ]
    .concat();
    assert_eq!(json(&attention)[key], taken);
    let cache = [
        &["bench", "cache", "--layers", "1", "--context", "600"][..],
        &small[..],
    ]
    .concat();
    assert_eq!(json(&cache)[key], taken);
    for bench in ["attention", "cache"] {
        let out = cli_runner::vidkv(&["bench", bench, "--context", "600", flag, refused]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bench}: {stderr}");
        assert!(stderr.contains(rule), "{bench}: {stderr}");
        assert!(!stderr.contains("panicked"), "{bench}: {stderr}");
    }
}

/// `--split-tokens` sets the split size of both decode benchmarks (reported with the
/// results), and a size the kernels cannot take is refused with the rule.
#[test]
fn benchmarks_take_a_split_size() {
    check_bench_option(
        "--split-tokens",
        256,
        "split_tokens",
        "300",
        "multiple of 256",
    );
}

/// Both decode benchmarks take `--protect`: a share of the tokens protected in the caches
/// whose values take protection (`vidkv+STP`; in `bench attention`, its fused dispatch,
/// then the softmax and refinement passes), not in the others (`kivi2`); a share outside
/// (0, 1] is refused.
#[test]
fn benchmarks_time_protected_caches() {
    let presets = [
        "--preset",
        "vidkv",
        "--preset",
        "kivi2",
        "--protect",
        "0.2",
        "--json",
    ];
    let run = |bench: &[&str]| json(&[bench, &SMALL_SHAPE[..], &presets[..]].concat());
    let attention = run(&["bench", "attention", "--context", "600", "--kernels"]);
    let cache = run(&["bench", "cache", "--layers", "1", "--context", "600"]);
    for doc in [&attention, &cache] {
        assert_eq!(doc["protected_share"].as_f64(), Some(0.2));
        let rows: Vec<&str> = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["preset"].as_str().unwrap())
            .collect();
        assert!(
            rows.contains(&"vidkv+STP") && rows.contains(&"kivi2"),
            "{rows:?}"
        );
    }
    let fused = attention["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["preset"] == "vidkv+STP")
        .unwrap();
    let names = kernel_names(fused);
    assert!(
        names.contains(&"attention_rotated+tokens::refinement_sums")
            && names
                .iter()
                .any(|n| n.starts_with("attention_split_groups+")),
        "{names:?}"
    );
    for bench in ["attention", "cache"] {
        for refused in ["0", "1.5", "NaN"] {
            let out =
                cli_runner::vidkv(&["bench", bench, "--context", "600", "--protect", refused]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{bench} {refused}: {stderr}");
            assert!(stderr.contains("(0, 1]"), "{bench} {refused}: {stderr}");
            assert!(!stderr.contains("panicked"), "{bench} {refused}: {stderr}");
        }
    }
}

/// `bench attention --kernels` reports GPU time per kernel (lavapipe has timestamp queries).
#[test]
fn bench_attention_reports_time_per_kernel() {
    let doc = json(&[
        "bench",
        "attention",
        "--context",
        "300",
        "--runs",
        "1",
        "--kv-heads",
        "1",
        "--q-heads",
        "7",
        "--head-dim",
        "64",
        "--preset",
        "vidkv-tuned",
        "--kernels",
        "--f16-loads-on-cpu",
        "--json",
    ]);
    let paths = fast_paths(&doc);
    assert!(
        paths.contains(&"subgroups") && paths.contains(&"shader-f16 loads"),
        "lavapipe has both: {paths:?}"
    );
    for result in doc["results"].as_array().unwrap() {
        let kernels = result["kernels"].as_array().unwrap();
        let names = kernel_names(result);
        assert!(names.contains(&"attention_combine::main"), "{names:?}");
        let preset = result["preset"].as_str().unwrap();
        // vidkv-tuned's quantized groups: the signs-and-trits split kernel, or the ternary
        // value pass of the three passes.
        if preset.starts_with("vidkv-tuned") {
            let values = if preset.ends_with("(three-pass)") {
                "attention_values_ternary"
            } else {
                "attention_split+signs_trits::main"
            };
            assert!(
                names.iter().any(|n| n.starts_with(values)),
                "{preset}: {names:?}"
            );
        }
        // Exact rows (the fp16 cache, the sinks and window) go through the fused split
        // kernel (rows loaded as f16 on the fast path, lavapipe having shader-f16, as u32
        // words by the portable kernels), or through the three passes it replaced in the
        // `(three-pass)` rows.
        let exact = if preset.ends_with("(three-pass)") {
            "attention_scores_exact::main"
        } else if preset.ends_with("(portable)") {
            "attention_split+exact+words+exact_only::main"
        } else {
            "attention_split+exact+halves+exact_only::main"
        };
        assert!(names.contains(&exact), "{preset}: {names:?}");
        assert!(kernels
            .iter()
            .all(|k| k["ms_per_call"].as_f64().unwrap() >= 0.0));
    }
}
