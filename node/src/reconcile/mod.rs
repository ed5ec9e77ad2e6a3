//! Reconciliation: desired state (from the applied inventory) against
//! observed state (from the device). `plan` is pure and table-tested.

pub mod driver;
pub mod plan;
