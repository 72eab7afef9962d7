//! Compiles the contract with protox (pure Rust, no `protoc`) and generates
//! the prost messages and tonic clients/servers. The encoded descriptor set is
//! written next to the generated code so reflection and the gateway see the
//! same contract, custom options (`google.api.http`, `postmesh.options.v1.auth`)
//! and comments included.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&root.join("postmesh"), &mut files)?;
    // Not imported by the contract, but the gateway decodes error details
    // (the `grpc-status-details-bin` trailer) through the descriptor pool.
    collect_protos(&root.join("google/rpc"), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed={}", root.join("google").display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&files)?;

    // `encode_file_descriptor_set` keeps extension options, which the
    // prost_types round trip would drop.
    std::fs::write(out_dir.join("postmesh_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        // RPCs a later issue implements answer UNIMPLEMENTED until then.
        .generate_default_stubs(true)
        .include_file("postmesh_include.rs")
        .emit_rerun_if_changed(false)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
