//! Small pieces several components share, each written once.

pub mod body;
pub mod hex;
pub mod https;
pub mod json;
pub mod pem;
pub mod text;
