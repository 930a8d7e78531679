use crate::support::NatsHarness;

proteus_log_conformance::log_conformance_tests!(NatsHarness::new());
proteus_log_conformance::log_import_conformance_tests!(NatsHarness::new());
