//! The engine: the only code that opens and drops compute devices, and the
//! thread that will own the model (load on demand, generate, release).
//!
//! Owns: devices, precision choice, model lifetime, benchmarks that need a
//! device. Must not: draw UI or read settings files; it is told what to do by
//! commands and reports by events.

mod first_token;
mod owner;
mod protocol;

pub use crate::device::{
    self, cpu_threads, fit, open_device, DeviceChoice, DeviceError, Precision, PrecisionSpeeds,
};
pub use owner::{
    Clock, Engine, EngineError, EngineOptions, EngineRemote, ManualClock, SystemClock, Waker,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_QUEUE_CAPACITY,
};
pub use protocol::*;
