//! A real OpenFeature SDK against a real server: the Python `openfeature-sdk` with its OFREP
//! provider, from PyPI, evaluates `tests/openfeature/flags.json` served by `proteus serve
//! --flags` and checks values and reasons (`tests/openfeature/check.py`).
//!
//! The SDK is installed once into a virtualenv under the target directory. Without Python 3 or
//! network access to PyPI the test fails and says how to provide them; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::ServerProcess;

/// The versions the checks were written against.
const PACKAGES: [&str; 2] = [
    "openfeature-sdk==0.10.0",
    "openfeature-provider-ofrep==0.3.0",
];

fn run(command: &mut Command, what: &str, hint: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}; {hint}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}; {hint}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A virtualenv holding the SDK, created on first use.
fn python_with_sdk() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openfeature-venv");
    let python = venv.join("bin/python");
    let marker = venv.join(format!("installed-{}", PACKAGES.join("+")));
    if marker.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating a Python virtualenv",
        "install Python 3 with venv (e.g. apt-get install python3-venv)",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PACKAGES),
        "installing the OpenFeature SDK from PyPI",
        "this test needs network access to pypi.org (or a configured pip index)",
    );
    std::fs::write(&marker, b"").unwrap();
    python
}

#[test]
fn the_python_openfeature_sdk_evaluates_flags_through_ofrep() {
    let python = python_with_sdk();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openfeature");
    let dir = tempfile::tempdir().unwrap();
    let flags = here.join("flags.json");
    let server = ServerProcess::start_with(dir.path(), &["--flags", flags.to_str().unwrap()], &[]);
    run(
        Command::new(&python)
            .arg(here.join("check.py"))
            .arg(&server.url),
        "the OpenFeature checks",
        "see the failed checks above",
    );
}
