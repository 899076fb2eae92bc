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
}

#[derive(Args, Debug)]
pub(super) struct DemoArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// The demo's page files, embedded from `web/`.
const WEB_FILES: [(&str, &str); 2] = [
    ("index.html", include_str!("../../web/index.html")),
    ("app.js", include_str!("../../web/app.js")),
];

/// The sample the demo runs on (the text sample of the main job).
const DEMO_SAMPLE: usize = 0;

/// Every file of the demo site: (path, bytes). The shaders are the files of `shaders/`
/// byte for byte; the plan is traced now, on this machine's adapter.
fn demo_site() -> Result<Vec<(String, Vec<u8>)>> {
    let (name, tensors, sidecar) = BUNDLED[DEMO_SAMPLE];
    let sample = KvSample::from_bytes(name, tensors, Some(sidecar))?;
    let gpu = GpuContext::new(&GpuOptions {
        portable_only: true,
        ..GpuOptions::default()
    })?;
    eprintln!("tracing the demo plan on {}", gpu.adapter_name());
    let demo = crate::web::demo_plan(&gpu, &sample)?;
    let mut files: Vec<(String, Vec<u8>)> = WEB_FILES
        .iter()
        .map(|(path, text)| (path.to_string(), text.as_bytes().to_vec()))
        .collect();
    for kernel in crate::gpu::shaders::ALL {
        for (file, text) in kernel.files() {
            let path = format!("shaders/{file}");
            if !files.iter().any(|(p, _)| *p == path) {
                files.push((path, text.as_bytes().to_vec()));
            }
        }
    }
    files.push((format!("data/{name}.safetensors"), tensors.to_vec()));
    files.push((format!("data/{name}.json"), sidecar.as_bytes().to_vec()));
    let mut plan = demo.plan;
    plan["sample_file"] = format!("data/{name}.safetensors").into();
    if let Ok(sidecar) = serde_json::from_str::<serde_json::Value>(sidecar) {
        plan["model_layers"] = sidecar["layers"].clone();
    }
    files.push(("plan.json".into(), plan.to_string().into_bytes()));
    files.push(("plan.bin".into(), demo.blob));
    files.push((
        "expected.json".into(),
        demo.expected.to_string().into_bytes(),
    ));
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    Ok(files)
}

pub(super) fn run_export_web(args: &ExportWebArgs) -> Result<()> {
    for (path, bytes) in demo_site()? {
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
        Some("wgsl") => "text/plain; charset=utf-8",
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
    let files: HashMap<String, Vec<u8>> = demo_site()?.into_iter().collect();
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
