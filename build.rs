//! Regenerates `include/ratekeeper.h` from `src/ffi` with cbindgen (pinned in
//! Cargo.toml, configured by `cbindgen.toml`). The header is committed; CI
//! builds and then runs `git diff --exit-code include/` so a stale header
//! fails. The file is only rewritten when its contents change.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let config_path = root.join("cbindgen.toml");
    let header_path = root.join("include").join("ratekeeper.h");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=include/ratekeeper.h");

    let config = cbindgen::Config::from_file(&config_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", config_path.display()));
    // Only the FFI module is parsed (following its `mod` declarations), so
    // the rest of the crate never affects the header.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("ffi").join("mod.rs"))
        .generate()
        .unwrap_or_else(|e| panic!("cbindgen could not generate the header: {e}"));
    let mut header = Vec::new();
    bindings.write(&mut header);

    if std::fs::read(&header_path).ok().as_deref() != Some(header.as_slice()) {
        if let Err(e) = std::fs::create_dir_all(header_path.parent().expect("has a parent"))
            .and_then(|()| std::fs::write(&header_path, &header))
        {
            // A read-only source tree (e.g. a packaged crate) keeps its header.
            println!("cargo:warning=cannot update {}: {e}", header_path.display());
        }
    }
}
