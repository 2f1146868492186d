//! ddnn (skeleton)
pub mod inference;
