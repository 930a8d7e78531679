//! `serve --schema-policy strict`: appends of event types without a schema are refused.

use crate::support::{ServerProcess, run_cli};

#[test]
fn a_strict_schema_policy_refuses_unregistered_event_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--schema-policy", "strict"], &[]);
    let append = |event_type: &str| {
        run_cli(
            &[
                "stream",
                "append",
                "note-1",
                "--type",
                event_type,
                "--data",
                "{}",
                "--server",
                &server.url,
            ],
            None,
        )
    };
    let (code, _, err) = append("NoteTaken");
    assert_eq!(code, 1);
    assert!(
        err.contains("'NoteTaken' has no schema and the schema policy is strict"),
        "{err}"
    );
    let (code, _, err) = run_cli(
        &[
            "schema",
            "register",
            "NoteTaken",
            "--schema",
            r#"{"type": "object"}"#,
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = append("NoteTaken");
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = run_cli(
        &[
            "serve",
            "--schema-policy",
            "sometimes",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("schema_policy must be 'lenient' or 'strict'"),
        "{err}"
    );
}
