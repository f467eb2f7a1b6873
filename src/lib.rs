//! Versifier: a desktop app that writes poems with a local GPT-2 and gives the
//! GPU back when it is done.
//!
//! Data flows one way: `ui` sends commands to `engine`; `engine` sends events
//! back; `meter` sends memory snapshots. Only `engine` opens or drops devices.

pub mod engine;
pub mod generate;
pub mod meter;
pub mod model;
pub mod store;
pub mod train;
pub mod ui;
