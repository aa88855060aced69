//! Embeds the prebuilt libduckdb's directory as the binary's rpath, so `tidewater` runs without
//! LD_LIBRARY_PATH (unless DuckDB is bundled).
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_BUNDLED_DUCKDB").is_none() {
        if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
            // A packaged binary (scripts/dist.sh) finds the library beside it, in ../lib.
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib");
        }
    }
}
