//! Compose file loading (discover, parse with positions, interpolate, merge, normalise,
//! validate) and the typed, canonical project model that the rest of incus-compose consumes.
//!
//! ```no_run
//! let project = ic_compose::load(&ic_compose::LoadOptions::from_process())
//!     .map_err(|errors| errors.to_string())?;
//! for (name, service) in &project.services {
//!     println!("{name}: {:?} x{:?}", service.image, service.replicas());
//! }
//! # Ok::<(), String>(())
//! ```

pub mod canonical;
#[doc(hidden)]
pub mod corpus;
pub mod env;
pub mod error;
pub mod goyaml;
pub mod hostile;
pub mod interpolate;
mod libyaml;
pub mod loader;
pub mod merge;
pub mod model;
pub mod normalize;
pub mod output;
pub mod schema;
pub mod validate;
pub mod yaml;

pub use error::{Diagnostic, LoadErrors};
pub use loader::{FileSystem, LoadOptions, MemFs, RealFs, load, load_with, normalize_project_name};
pub use model::Project;
