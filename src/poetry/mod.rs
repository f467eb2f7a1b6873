//! The poem domain: forms (free, 絕句, 律詩, acrostic), their line layouts,
//! and the constraints that enforce them while decoding. Knows characters and
//! token strings, not tensors or devices.

pub mod forms;
