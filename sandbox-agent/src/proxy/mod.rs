//! The transparent proxy for TCP that needs a domain decision (ports 80 and 443).
pub mod detect;
