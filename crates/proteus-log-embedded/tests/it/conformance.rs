use crate::support::TempLog;

proteus_log_conformance::log_conformance_tests!(TempLog::new());
