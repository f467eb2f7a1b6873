//! Measuring Versifier: decode speed (`bench`), the load -> generate ->
//! release lifecycle and soak, poem quality, and conformance on a device
//! (`selftest`).
//!
//! Owns: benchmark and check procedures and their JSON reports. Sits above
//! `engine` and `train` (the lifecycle bench drives an engine, the quality
//! bench uses the trainer's held-out perplexity); nothing below imports it.

pub mod bench;
pub mod keyword_bench;
pub mod quality;
pub mod selftest;
