//! The browser demo's figures (`vidkv::web`), `vidkv export-web` and the demo server. The
//! page (the library compiled to wasm32) runs in a real browser in `web/test.sh`; these
//! checks need no browser.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vidkv::io::KvSample;
use vidkv::web::{cache_figures, DEMO_PRESETS};
use vidkv::{GpuContext, GpuOptions, KvCache, ModelShape, QuantConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled_text_sample() -> KvSample {
    let dir = repo().join("data");
    let bytes = std::fs::read(dir.join("smollm2_text_sample.safetensors")).unwrap();
    let sidecar = std::fs::read_to_string(dir.join("smollm2_text_sample.json")).unwrap();
    KvSample::from_bytes("smollm2_text_sample", &bytes, Some(&sidecar)).unwrap()
}

/// The figures the page computes (`vidkv::web::cache_figures`, the same function the wasm
/// build runs): bits and bytes are the cache's own, the output through the non-blocking
/// `attend_async` equals the blocking `attend` exactly, fp16 is near exact, and the default
/// beats KIVI-2 on this sample.
#[test]
fn cache_figures_match_the_blocking_cache() {
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })
    .unwrap();
    let sample = bundled_text_sample();
    let visible = vidkv::web::visible_ranges(&sample).unwrap();
    let mut errors = std::collections::HashMap::new();
    for preset in DEMO_PRESETS {
        let figures = pollster::block_on(cache_figures(&gpu, &sample, preset)).unwrap();
        let (layers, kv_heads, tokens, d) = (
            sample.k.dim(0),
            sample.k.dim(1),
            sample.k.dim(2),
            sample.k.dim(3),
        );
        let shape = ModelShape {
            layers,
            q_heads: sample.q.dim(1),
            kv_heads,
            head_dim: d,
        };
        let mut cache = KvCache::new(shape, QuantConfig::preset(preset).unwrap(), &gpu).unwrap();
        for layer in 0..layers {
            let rows = kv_heads * tokens * d;
            let k = &sample.k.data[layer * rows..][..rows];
            let v = &sample.v.data[layer * rows..][..rows];
            cache.prefill(layer, k, v).unwrap();
        }
        let q_len = sample.q.data.len() / layers;
        let blocking = cache.attend(0, &sample.q.data[..q_len], &visible).unwrap();
        assert_eq!(figures.first_layer, blocking, "{preset}");
        assert_eq!(figures.bytes, cache.bytes(), "{preset}");
        assert_eq!(
            figures.bits_per_element,
            cache.bits_per_element(),
            "{preset}"
        );
        assert!(figures.attention_error.is_finite(), "{preset}");
        errors.insert(preset, figures.attention_error);
    }
    assert!(errors["fp16"] < 1e-3, "{errors:?}");
    assert!(errors["vidkv"] < errors["kivi2"], "{errors:?}");
}

fn same_file(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

/// `export-web` writes the page, the wasm package it is given, the sample and the native
/// figures; without a package it names the script that builds one.
#[test]
fn export_web_writes_a_complete_site() {
    let base = std::env::temp_dir().join(format!("vidkv-site-{}", std::process::id()));
    let (out, pkg) = (base.join("site"), base.join("pkg"));
    std::fs::create_dir_all(&pkg).unwrap();
    let export = |pkg: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vidkv"))
            .args(["export-web", "--out"])
            .arg(&out)
            .arg("--pkg")
            .arg(pkg)
            .output()
            .unwrap()
    };
    let missing = export(&pkg);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("scripts/build-wasm.sh"));
    for (file, bytes) in [
        ("vidkv_web.js", &b"// js"[..]),
        ("vidkv_web_bg.wasm", b"\0asm"),
    ] {
        std::fs::write(pkg.join(file), bytes).unwrap();
    }
    assert!(export(&pkg).status.success());
    same_file(&out.join("index.html"), &repo().join("web/index.html"));
    same_file(&out.join("app.js"), &repo().join("web/app.js"));
    same_file(
        &out.join("pkg/vidkv_web_bg.wasm"),
        &pkg.join("vidkv_web_bg.wasm"),
    );
    same_file(
        &out.join("data/sample.safetensors"),
        &repo().join("data/smollm2_text_sample.safetensors"),
    );
    let expected: Value =
        serde_json::from_slice(&std::fs::read(out.join("expected.json")).unwrap()).unwrap();
    let presets = expected["presets"].as_array().unwrap();
    assert_eq!(presets.len(), DEMO_PRESETS.len());
    for preset in presets {
        assert!(
            preset["bits_per_element"].as_f64().unwrap() > 0.0,
            "{preset}"
        );
    }
    std::fs::remove_dir_all(&base).unwrap();
}

/// Sends one raw HTTP/1.1 request and returns the status code of the answer.
fn status_of(port: u16, method: &str, host: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} /index.html HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// `vidkv demo` answers GET and HEAD for its loopback address only: other methods get 405,
/// another Host (a DNS-rebinding page) 403.
#[test]
fn the_demo_server_answers_reads_of_its_own_address_only() {
    use std::io::BufRead;
    // The server needs a package to serve; its contents do not matter here.
    let pkg = std::env::temp_dir().join(format!("vidkv-pkg-{}", std::process::id()));
    std::fs::create_dir_all(&pkg).unwrap();
    for file in ["vidkv_web.js", "vidkv_web_bg.wasm"] {
        std::fs::write(pkg.join(file), b"x").unwrap();
    }
    let mut demo = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(["demo", "--port", "0", "--pkg"])
        .arg(&pkg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let port = std::io::BufReader::new(stdout)
        .lines()
        .map_while(|line| line.ok())
        .find_map(|line| {
            let rest = line.split("http://127.0.0.1:").nth(1)?;
            rest.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u16>()
                .ok()
        });
    let statuses = port.map(|port| {
        let own = format!("127.0.0.1:{port}");
        [
            status_of(port, "GET", &own),
            status_of(port, "HEAD", &format!("localhost:{port}")),
            status_of(port, "POST", &own),
            status_of(port, "DELETE", &own),
            status_of(port, "GET", "attacker.example"),
            status_of(port, "GET", &format!("attacker.example:{port}")),
        ]
    });
    let _ = demo.kill();
    let _ = demo.wait();
    std::fs::remove_dir_all(&pkg).unwrap();
    assert_eq!(statuses, Some([200, 200, 405, 405, 403, 403]));
}

/// The page's weight maps: every query head's weights sum to 1 over the query's visible
/// keys and are zero elsewhere; fp16 and the default differ only slightly; a query past the
/// sample is a typed error.
#[test]
fn attention_weights_are_distributions_over_visible_keys() {
    let sample = bundled_text_sample();
    let (q_heads, tokens) = (sample.q.dim(1), sample.k.dim(2));
    let query = sample.q.dim(2) - 1;
    let (lo, hi) = vidkv::web::visible_ranges(&sample).unwrap()[query];
    let fp16 = vidkv::web::attention_weights(&sample, "fp16", 0, query).unwrap();
    let default = vidkv::web::attention_weights(&sample, "vidkv", 0, query).unwrap();
    for weights in [&fp16, &default] {
        assert_eq!(weights.len(), q_heads * tokens);
        for h in 0..q_heads {
            let row = &weights[h * tokens..(h + 1) * tokens];
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-4, "head {h}: {sum}");
            assert!(row[..lo as usize]
                .iter()
                .chain(&row[hi as usize..])
                .all(|&w| w == 0.0));
        }
    }
    let difference = vidkv::report::relative_l2(&default, &fp16);
    assert!(difference > 0.0 && difference < 0.5, "{difference}");
    assert!(vidkv::web::attention_weights(&sample, "vidkv", 0, query + 1).is_err());
}
