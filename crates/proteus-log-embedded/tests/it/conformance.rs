use crate::support::TempLog;

proteus_log_conformance::log_conformance_tests!(TempLog::new());
proteus_log_conformance::log_import_conformance_tests!(TempLog::new());
