//! ddnn (skeleton)
pub mod config;
pub mod inference;
