//! The `greenroom` server binary.
fn main() {}
