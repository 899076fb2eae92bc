//! The browser demo's plan (`vidkv::web`, `gpu::trace`) and `vidkv export-web`. The page
//! itself runs in a real browser in `web/test.sh`; these checks need no browser.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vidkv::gpu::{GpuContext, GpuOptions};
use vidkv::io::KvSample;
use vidkv::web::{demo_plan, DEMO_PRESETS};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled_text_sample() -> KvSample {
    let dir = repo().join("data");
    let bytes = std::fs::read(dir.join("smollm2_text_sample.safetensors")).unwrap();
    let sidecar = std::fs::read_to_string(dir.join("smollm2_text_sample.json")).unwrap();
    KvSample::from_bytes("smollm2_text_sample", &bytes, Some(&sidecar)).unwrap()
}

/// Every write of the plan resolves to bytes that exist (a source, an earlier read-back or
/// the blob) and covers exactly what was written; every kernel file exists in `shaders/`;
/// the read-back planes add up to the stored size; GPU codes equal the CPU reference's.
#[test]
fn demo_plan_is_complete_and_consistent() {
    // A fresh context: the trace must see every buffer from its creation.
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })
    .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    let sample = bundled_text_sample();
    let demo = demo_plan(&gpu, &sample).unwrap();
    let plan = &demo.plan;
    let buffers = plan["buffers"].as_array().unwrap();
    let source_len = |name: &str| match name {
        "k" => sample.k.data.len() * 4,
        "v" => sample.v.data.len() * 4,
        "q" => sample.q.data.len() * 4,
        other => panic!("unknown source {other}"),
    };
    let mut read_bytes: Vec<usize> = Vec::new();
    let mut dispatches = 0;
    let mut step = String::new();
    let mut plane_bytes = std::collections::HashMap::<String, usize>::new();
    for event in plan["events"].as_array().unwrap() {
        match event["op"].as_str().unwrap() {
            "step" => step = event["name"].as_str().unwrap().to_string(),
            "write" => {
                let buffer = &buffers[event["buffer"].as_u64().unwrap() as usize];
                let mut len = 0;
                for piece in event["data"].as_array().unwrap() {
                    let (offset, n) = (
                        piece["offset"].as_u64().unwrap_or(0) as usize,
                        piece["len"].as_u64().unwrap() as usize,
                    );
                    if let Some(at) = piece["blob"].as_u64() {
                        assert!(at as usize + n <= demo.blob.len(), "{piece}");
                    } else if let Some(read) = piece["read"].as_u64() {
                        assert!(offset + n <= read_bytes[read as usize], "{piece}");
                    } else {
                        let source = piece["source"].as_str().unwrap();
                        assert!(offset + n <= source_len(source), "{piece}");
                    }
                    len += n;
                }
                let end = event["offset"].as_u64().unwrap() as usize + len;
                assert!(end as u64 <= buffer["size"].as_u64().unwrap(), "{event}");
            }
            "dispatch" => {
                dispatches += 1;
                for file in event["files"].as_array().unwrap() {
                    let path = repo().join("shaders").join(file.as_str().unwrap());
                    assert!(path.is_file(), "{} is not in shaders/", path.display());
                }
                assert_eq!(
                    event["params"].as_array().unwrap().len(),
                    vidkv::web::PARAMS_WORDS
                );
            }
            "read" => {
                assert_eq!(event["read"].as_u64().unwrap() as usize, read_bytes.len());
                let bytes = event["words"].as_u64().unwrap() as usize * 4;
                read_bytes.push(bytes);
                if let Some(preset) = step.strip_suffix(": quantize") {
                    *plane_bytes.entry(preset.to_string()).or_default() +=
                        bytes - vidkv::web::READ_GUARD_WORDS * 4;
                }
            }
            "copy" | "submit" | "note" => {}
            other => panic!("unknown op {other}"),
        }
    }
    assert!(dispatches > 100, "{dispatches} dispatches");
    let expected = demo.expected["presets"].as_array().unwrap();
    assert_eq!(expected.len(), DEMO_PRESETS.len());
    for preset in expected {
        let name = preset["preset"].as_str().unwrap();
        assert_eq!(preset["gpu_codes_differing_from_cpu"], 0, "{name}");
        let stored = preset["bytes"].as_u64().unwrap() as f64;
        let planes = plane_bytes[name] as f64;
        assert!(
            (planes - stored).abs() / stored < 1e-3,
            "{name}: {planes} plane bytes vs {stored} stored"
        );
    }
    assert!(
        demo.blob.len() < 64 * 1024,
        "{} literal bytes: the sample and read-backs should be referenced, not copied",
        demo.blob.len()
    );
}

fn same_file(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        "{} differs from {}",
        a.display(),
        b.display()
    );
}

/// `export-web` writes the page, every shader byte for byte, the sample, the plan and the
/// reference figures.
#[test]
fn export_web_writes_a_complete_site() {
    let out = std::env::temp_dir().join(format!("vidkv-site-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(["export-web", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    same_file(&out.join("index.html"), &repo().join("web/index.html"));
    same_file(&out.join("app.js"), &repo().join("web/app.js"));
    for entry in std::fs::read_dir(repo().join("shaders")).unwrap() {
        let path = entry.unwrap().path();
        same_file(&out.join("shaders").join(path.file_name().unwrap()), &path);
    }
    same_file(
        &out.join("data/smollm2_text_sample.safetensors"),
        &repo().join("data/smollm2_text_sample.safetensors"),
    );
    let plan: Value =
        serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    assert_eq!(plan["sample_file"], "data/smollm2_text_sample.safetensors");
    assert_eq!(plan["model_layers"], serde_json::json!([0, 12, 29]));
    let expected: Value =
        serde_json::from_slice(&std::fs::read(out.join("expected.json")).unwrap()).unwrap();
    assert_eq!(
        expected["presets"].as_array().unwrap().len(),
        vidkv::web::DEMO_PRESETS.len()
    );
    assert!(out.join("plan.bin").is_file());
    std::fs::remove_dir_all(&out).unwrap();
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
    let mut demo = Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(["demo", "--port", "0"])
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
    assert_eq!(statuses, Some([200, 200, 405, 405, 403, 403]));
}
