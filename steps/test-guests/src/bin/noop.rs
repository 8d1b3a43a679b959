//! Does nothing: measures the cost of starting a step.
fn main() {}
