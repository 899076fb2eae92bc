//! `vidkv demo` (serve the browser demo on loopback) and `vidkv export-web`.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use super::serve::{serve, Request, Response};
use super::BUNDLED;
use crate::error::{Result, VidkvError};
use crate::gpu::{GpuContext, GpuOptions};
use crate::io::KvSample;

#[derive(Args, Debug)]
pub(super) struct ExportWebArgs {
    /// The folder to write (created if absent; files in it are replaced).
    #[arg(long, value_name = "DIR", default_value = "web/site")]
    out: PathBuf,
    /// The wasm-bindgen package of the library (`scripts/build-wasm.sh` writes it).
    #[arg(long, value_name = "DIR", default_value = "web/pkg")]
    pkg: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct DemoArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The wasm-bindgen package of the library (`scripts/build-wasm.sh` writes it).
    #[arg(long, value_name = "DIR", default_value = "web/pkg")]
    pkg: PathBuf,
}

/// The demo's page files, embedded from `web/`.
const WEB_FILES: [(&str, &str); 2] = [
    ("index.html", include_str!("../../web/index.html")),
    ("app.js", include_str!("../../web/app.js")),
];

/// The files of the wasm-bindgen package the page imports.
const PKG_FILES: [&str; 2] = ["vidkv_web.js", "vidkv_web_bg.wasm"];

/// The sample the demo runs on (the text sample of the main job).
const DEMO_SAMPLE: usize = 0;

/// Every file of the demo site: (path, bytes): the page, the library's wasm package from
/// `pkg`, the sample, and `expected.json`, the figures the native library computes for each
/// preset with the same function the page runs (for the browser test; the page never
/// reads it).
fn demo_site(pkg: &std::path::Path) -> Result<Vec<(String, Vec<u8>)>> {
    let (name, tensors, sidecar) = BUNDLED[DEMO_SAMPLE];
    let mut files: Vec<(String, Vec<u8>)> = WEB_FILES
        .iter()
        .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
        .collect();
    for file in PKG_FILES {
        let path = pkg.join(file);
        let bytes = std::fs::read(&path).map_err(|source| VidkvError::Io {
            path: format!(
                "{} (build the wasm package first: bash scripts/build-wasm.sh)",
                path.display()
            ),
            source,
        })?;
        files.push((format!("pkg/{file}"), bytes));
    }
    let sample = KvSample::from_bytes(name, tensors, Some(sidecar))?;
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })?;
    eprintln!("computing the expected figures on {}", gpu.adapter_name());
    let mut presets = Vec::new();
    for preset in crate::web::DEMO_PRESETS {
        let figures = pollster::block_on(crate::web::cache_figures(&gpu, &sample, preset))?;
        presets.push(figures.to_json());
    }
    let expected = serde_json::json!({ "sample": name, "presets": presets });
    files.push(("expected.json".into(), expected.to_string().into_bytes()));
    files.push(("data/sample.safetensors".into(), tensors.to_vec()));
    files.push(("data/sample.json".into(), sidecar.as_bytes().to_vec()));
    Ok(files)
}

pub(super) fn run_export_web(args: &ExportWebArgs) -> Result<()> {
    for (path, bytes) in demo_site(&args.pkg)? {
        let target = args.out.join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| VidkvError::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        }
        crate::io::write_atomic(&target, &bytes)?;
    }
    println!("wrote the demo to {}", args.out.display());
    Ok(())
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// The demo server's answer: GET and HEAD only (405 otherwise), and only for a Host that
/// names the loopback address it bound (403 otherwise, so that a page of another origin
/// cannot read the demo through DNS rebinding); then the file, or 404.
fn demo_response(request: &Request, files: &HashMap<String, Vec<u8>>, port: u16) -> Response {
    if !matches!(request.method.as_str(), "GET" | "HEAD") {
        let mut response = Response::text(405, "method not allowed");
        response.headers.push(("Allow", "GET, HEAD".into()));
        return response;
    }
    let host_allowed = request.host.as_deref().is_some_and(|host| {
        host == format!("127.0.0.1:{port}") || host == format!("localhost:{port}")
    });
    if !host_allowed {
        return Response::text(
            403,
            "the demo answers requests for its loopback address only",
        );
    }
    let path = request.target.split('?').next().unwrap_or("/");
    let path = match path.trim_start_matches('/') {
        "" => "index.html",
        other => other,
    };
    match files.get(path) {
        Some(bytes) => Response {
            status: 200,
            headers: vec![("Content-Type", content_type(path).into())],
            body: bytes.clone(),
        },
        None => Response::text(404, "not found"),
    }
}

pub(super) fn run_demo(args: &DemoArgs) -> Result<()> {
    let files: HashMap<String, Vec<u8>> = demo_site(&args.pkg)?.into_iter().collect();
    let io_error = |source: std::io::Error| VidkvError::Io {
        path: format!("127.0.0.1:{}", args.port),
        source,
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", args.port)).map_err(io_error)?;
    let port = listener.local_addr().map_err(io_error)?.port();
    println!("vidkv demo: http://127.0.0.1:{port}/ (Ctrl-C stops it)");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    serve(
        listener,
        std::sync::Arc::new(move |request: &Request| demo_response(request, &files, port)),
    )
    .map_err(io_error)
}
