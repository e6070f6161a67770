//! Compose file loading (discover, parse with positions, interpolate, merge, normalise,
//! validate) and the typed, canonical project model that the rest of incus-compose consumes.

pub mod model;
