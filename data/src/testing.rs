//! Test support shared by the crates' test suites; nothing in the pipeline uses it.

/// A test's fixture (`../shared`, the llama-server build) is missing. Under
/// `DISTILL_REQUIRE_FIXTURES=1`, which `scripts/test` sets, that fails the test, so a broken
/// fixture path can never turn a suite green by skipping; elsewhere the test says so on stderr
/// and the caller returns.
pub fn fixture_missing(what: &str) {
    if std::env::var_os("DISTILL_REQUIRE_FIXTURES").is_some_and(|v| v == "1") {
        panic!("fixture missing: {what} (DISTILL_REQUIRE_FIXTURES=1: every fixture is required)");
    }
    eprintln!("skipping: {what}");
}
