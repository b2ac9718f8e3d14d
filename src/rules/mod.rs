//! Rule and template files: loading, validation with located diagnostics, the typed model.

pub mod model;
pub mod yaml;
pub use model::*;
