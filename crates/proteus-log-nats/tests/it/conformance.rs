use crate::support::NatsHarness;

proteus_log_conformance::log_conformance_tests!(NatsHarness::new());
