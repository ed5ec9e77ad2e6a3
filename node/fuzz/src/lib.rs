//! The pure parts of anygate-node, compiled on their own for fuzzing.
#![allow(dead_code, unused_imports)]

#[path = "../../src/model/mod.rs"]
pub mod model;

#[path = "dataplane.rs"]
pub mod dataplane;
