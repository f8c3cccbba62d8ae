//! One module per area of the UI.

pub mod editor;
pub mod instances;
pub mod login;
pub mod ops;
pub mod start;
pub mod workflows;
