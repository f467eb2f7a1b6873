//! Build script: with the `cuda` feature, compiles the project's CUDA kernels
//! (`src/**/*.cu`) to PTX with nvcc through cudaforge, the builder candle's own
//! kernels use, and writes the constants `src/model/cuda_kernels.rs` includes.
//! Without the feature it does nothing.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(feature = "cuda")]
    if let Err(e) = cuda::compile() {
        // A build script reports by exiting; the message names what failed.
        eprintln!("compiling the CUDA kernels: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    /// The kernel sources; each becomes a constant named after its file stem.
    const SOURCES: &[&str] = &[
        "src/model/fused_decode.cu",
        "src/generate/device_draw.cu",
        "src/train/adamw_fused.cu",
    ];

    pub fn compile() -> Result<(), Box<dyn std::error::Error>> {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        let ptx = cudaforge::KernelBuilder::new()
            .source_files(SOURCES.iter().copied())
            .arg("-O3")
            .build_ptx()?;
        ptx.write(out.join("cuda_kernels.rs"))?;
        Ok(())
    }
}
