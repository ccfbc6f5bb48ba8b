//! Compiles the version in: `PLEXI_BUILD_VERSION=X.Y.Z cargo build` overrides
//! the package version so a second real version can be built for tests.
fn main() {
    println!("cargo:rerun-if-env-changed=PLEXI_BUILD_VERSION");
    let version = std::env::var("PLEXI_BUILD_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION")
        });
    if let Err(e) = semver::Version::parse(&version) {
        panic!("PLEXI_BUILD_VERSION={version:?} is not a semantic version: {e}");
    }
    println!("cargo:rustc-env=PLEXI_VERSION={version}");
    // Test-only faults for the update path; empty in every real build.
    println!("cargo:rerun-if-env-changed=PLEXI_BUILD_FAULT");
    let fault = std::env::var("PLEXI_BUILD_FAULT").unwrap_or_default();
    let known = [
        "",
        "exit-at-start",
        "unhealthy",
        "migrate-unhealthy",
        "migrate-crash",
    ];
    if !known.contains(&fault.as_str()) {
        panic!("PLEXI_BUILD_FAULT={fault:?} is not one of {known:?}");
    }
    println!("cargo:rustc-env=PLEXI_BUILD_FAULT={fault}");
}
