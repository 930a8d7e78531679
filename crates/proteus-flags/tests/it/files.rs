//! Every reference flag file loads and every one of its flags evaluates; strict validation
//! rejects exactly the rules flagd only tolerates.

use std::collections::BTreeSet;

use proteus_flags::{ErrorCode, FlagSet, FlagSetBuilder, Reason, Validation};
use serde_json::json;

use crate::support::{NOW_S, compatible, context, flag_files};

#[test]
fn every_reference_file_loads_and_every_flag_evaluates() {
    let contexts = [
        context(json!({})),
        context(json!({
            "targetingKey": "user-1", "email": "ballmer@macrosoft.com", "version": "2.0.0",
            "id": "abcxyz", "user": {"name": "jack"}, "tier": "premium", "color": "red",
            "time": 1, "num": 3, "hashing_input": "user1", "fn": "Sulisław", "ln": "Świętopełk",
            "age": 29, "customer": false
        })),
        context(
            json!({"targetingKey": 12, "version": 1.2, "email": null, "user": "not an object"}),
        ),
    ];
    let mut files = 0;
    let mut evaluations = 0;
    for (name, text) in flag_files() {
        let set = compatible(&text).flag_set;
        assert!(!set.is_empty(), "{name} has flags");
        for flag in set.flags() {
            for context in &contexts {
                let evaluation = flag.evaluate(context, NOW_S);
                assert_ne!(
                    evaluation.error,
                    Some(ErrorCode::FlagNotFound),
                    "{name} {}",
                    flag.key()
                );
                if evaluation.error.is_none() && evaluation.reason != Reason::Disabled {
                    // A resolved variant always comes with its value.
                    assert_eq!(
                        evaluation.variant.is_some(),
                        evaluation.value.is_some(),
                        "{name} {}",
                        flag.key()
                    );
                }
                evaluations += 1;
            }
        }
        files += 1;
    }
    assert_eq!(files, 11, "the reference directory has 11 flag files");
    assert!(evaluations > 300);
}

/// Strict validation: the files without tolerated problems load; the others are rejected at
/// exactly these paths.
#[test]
fn strict_validation_reports_what_flagd_only_tolerates() {
    let expected: &[(&str, &[&str])] = &[
        ("changing-flag.json", &[]),
        (
            "custom-ops.json",
            &[
                "/flags/equal-greater-lesser-version-flag/targeting/if/2/if/2/if/2/if/0/sem_ver/2",
                "/flags/equal-greater-lesser-version-flag/targeting/if/2/if/2/if/2/if/1",
                "/flags/starts-ends-flag/targeting/if/2/if/2/if/0/ends_with/1",
                "/flags/starts-ends-flag/targeting/if/2/if/2/if/1",
            ],
        ),
        ("disabled-flags.json", &[]),
        (
            "edge-case-flags.json",
            &[
                "/flags/ends-with-wrong-args-flag/targeting/ends_with",
                "/flags/error-targeting-flag/targeting/invalid",
                "/flags/fractional-negative-weight-flag/targeting/fractional/1/1",
                "/flags/fractional-zero-weights-flag/targeting/fractional",
                "/flags/missing-variant-targeting-flag/targeting/if/1",
                "/flags/semver-invalid-operator-flag/targeting/sem_ver/1",
                "/flags/semver-wrong-args-flag/targeting/sem_ver",
                "/flags/starts-with-wrong-args-flag/targeting/starts_with",
            ],
        ),
        (
            "evaluator-refs.json",
            &["/flags/ref-to-nonexistent-evaluator-flag/targeting/if/0/$ref"],
        ),
        ("metadata-flags.json", &[]),
        ("selector-flag-combined-metadata.json", &[]),
        ("selector-flags.json", &[]),
        ("testing-flags.json", &[]),
        (
            "zero-flags.json",
            &[
                "/flags/boolean-targeted-zero-flag/targeting/if/0/$ref",
                "/flags/float-targeted-zero-flag/targeting/if/0/$ref",
                "/flags/integer-targeted-zero-flag/targeting/if/0/$ref",
                "/flags/string-targeted-zero-flag/targeting/if/0/$ref",
            ],
        ),
    ];
    for (name, text) in flag_files() {
        if name == "testkit-flags.json" {
            continue;
        }
        let (_, paths) = expected
            .iter()
            .find(|(file, _)| *file == name)
            .expect("every file is listed");
        let expected: BTreeSet<&str> = paths.iter().copied().collect();
        let found: BTreeSet<String> = match FlagSet::from_json(&text) {
            Ok(_) => BTreeSet::new(),
            Err(errors) => errors.errors().iter().map(|e| e.path.clone()).collect(),
        };
        let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
        assert_eq!(found, expected, "{name}");

        // In flagd-compatible mode the same problems are warnings.
        let warnings: BTreeSet<String> = compatible(&text)
            .warnings
            .into_iter()
            .map(|w| w.path)
            .collect();
        let warnings: BTreeSet<&str> = warnings.iter().map(String::as_str).collect();
        assert_eq!(warnings, expected, "{name} warnings");
    }
}

#[test]
fn all_files_compile_together_with_later_files_overriding() {
    let mut builder = FlagSetBuilder::new(Validation::FlagdCompatible);
    for (_, text) in flag_files() {
        builder = builder.with_json(&text);
    }
    let set = builder.build().expect("all files load together").flag_set;
    // `cross-flagset-flag` is disabled in disabled-flags.json and enabled in selector-flags.json,
    // which comes later.
    let evaluation = set.evaluate("cross-flagset-flag", &context(json!({})), NOW_S);
    assert_eq!(evaluation.reason, Reason::Static);
    // Set metadata merges over the documents.
    assert_eq!(
        set.metadata().get("flagSetId"),
        Some(&json!("selector-set"))
    );
}

#[test]
fn flag_metadata_is_merged_over_document_metadata() {
    let set = compatible(&crate::support::flag_file(
        "selector-flag-combined-metadata.json",
    ))
    .flag_set;
    let combined = set.flag("combined-metadata-flag").unwrap();
    assert_eq!(combined.metadata().get("string"), Some(&json!("a")));
    assert_eq!(
        combined.metadata().get("flag-set-string"),
        Some(&json!("c"))
    );
    let only_set = set.flag("only-set-metadata-flag").unwrap();
    assert_eq!(only_set.metadata().get("string"), Some(&json!("b")));
}
