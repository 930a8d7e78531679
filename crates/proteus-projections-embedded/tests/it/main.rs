//! The embedded read-model store runs the ReadModelStore conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_projections::ReadModelStore;
use proteus_projections::conformance::StoreHarness;
use proteus_projections_embedded::EmbeddedReadModelStore;

struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn ReadModelStore> {
        Arc::new(EmbeddedReadModelStore::open(self.dir.path()).unwrap())
    }
}

proteus_projections::read_model_store_conformance_tests!(Harness::new());
