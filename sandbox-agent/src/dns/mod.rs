//! The resolver that sandboxes talk to.
pub mod message;
