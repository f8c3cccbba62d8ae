//! The store conformance suite (the same cases as SQLite's) on a real PostgreSQL server: one
//! database for this test, one schema per case.

use kflow_store::Store;
use kflow_store_pg::testing::TestDb;
use kflow_store_pg::{PgOptions, PgStore};

#[test]
fn conformance_suite_on_postgres() {
    let Some(db) = TestDb::create("conformance_suite_on_postgres") else {
        return;
    };
    let n = std::sync::atomic::AtomicU32::new(0);
    kflow_store::testkit::conformance_suite(&|| {
        let mut options = PgOptions::new(&db.url);
        options.schema = Some(format!(
            "case_{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Box::new(PgStore::open(&options).expect("open")) as Box<dyn Store>
    });
    // Every case ran on the server, in a schema of its own.
    let store = PgStore::open(&PgOptions::new(&db.url)).expect("open");
    let schemas = store.schemas_for_tests().expect("schemas");
    let cases = schemas.iter().filter(|s| s.starts_with("case_")).count();
    assert_eq!(cases, kflow_store::testkit::CASES.len(), "{schemas:?}");
}
