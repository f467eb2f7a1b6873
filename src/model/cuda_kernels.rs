//! The PTX of the project's CUDA kernels (`src/model/fused_decode.cu`,
//! `src/generate/device_draw.cu`, `src/train/adamw_fused.cu`), compiled by build.rs with nvcc through
//! cudaforge when the `cuda` feature is on, and embedded in the binary: no
//! compiler is needed at run time and the first step pays no compile.

include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
