//! The job runner (being built).
pub mod sandbox;
