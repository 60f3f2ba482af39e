//! Compile-time diagnostics of `#[websocket_manager]`: every `.stderr` under
//! `tests/ui/fail/` is what a user sees, and is reviewed as product text.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
