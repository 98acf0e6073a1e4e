//! Real Open Inference Protocol clients against the runtime: NVIDIA's `tritonclient.http`
//! (JSON and binary tensors), run from the project's Python venv (`make venv`).

mod support;

use std::{path::PathBuf, process::Command};

use support::*;

/// The venv's Python (`KINFER_TEST_PYTHON`, set by the Makefile, or .tools/venv).
fn python() -> Option<PathBuf> {
    let p = std::env::var("KINFER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".tools/venv/bin/python"));
    p.is_file().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_works_unchanged() {
    let Some(py) = python() else {
        // `make test` always builds the venv; only a bare `cargo test` gets here.
        assert!(std::env::var("CI").is_err(), "the test venv is missing in CI: run `make venv`");
        eprintln!("SKIPPED: no Python venv with tritonclient; run `make venv` (make test does)");
        return;
    };
    for (model, name) in [("iris", "iris"), ("tabular", "fraud")] {
        let rt = runtime(model_path(model).display().to_string()).arg("--model-name", name).ready().await;
        let out = Command::new(&py)
            .arg(repo().join("runtime/tests/clients/triton_http.py"))
            .arg(format!("127.0.0.1:{}", rt.port))
            .arg(name)
            .arg(repo().join("examples/models").join(model).join("expected.json"))
            .output()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tritonclient failed for {model}:\n{stdout}\n{stderr}");
        assert!(stdout.contains("tritonclient: all checks passed"), "{stdout}");
        eprintln!("{model}: {stdout}");
    }
}
