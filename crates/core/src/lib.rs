//! The pure core: scheduling, desired state and diff. No I/O, no clock.
pub mod display;
pub mod health;
pub mod keys;
pub mod lease;
pub mod plan;
pub mod revision;
pub mod rollout;
pub mod schedule;
pub mod watch;
