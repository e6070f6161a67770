//! The typed, canonical compose project.

pub mod placement;
