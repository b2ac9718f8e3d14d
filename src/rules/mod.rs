//! Rule and template files: loading, validation with located diagnostics, the typed model,
//! and the loaded `RuleSet` the engine asks questions of.

pub mod diagnostic;
pub mod load;
pub mod model;
pub mod routing;
pub mod set;
pub mod yaml;

pub use diagnostic::{Diagnostic, Severity};
pub use model::*;
pub use set::{LoadErrors, Loaded, RuleSet};
