//! The embedded group store runs the GroupStore conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_groups::GroupStore;
use proteus_groups::conformance::StoreHarness;
use proteus_groups_embedded::EmbeddedGroupStore;

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
    async fn open(&self) -> Arc<dyn GroupStore> {
        Arc::new(EmbeddedGroupStore::open(self.dir.path()).unwrap())
    }
}

proteus_groups::group_store_conformance_tests!(Harness::new());
