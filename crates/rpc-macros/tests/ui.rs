//! `#[service]` misuse gives a clear compile error at the offending span (checked against the
//! `.stderr` files in tests/ui/fail), and every supported shape compiles (tests/ui/pass).

#[test]
fn service_macro_ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
