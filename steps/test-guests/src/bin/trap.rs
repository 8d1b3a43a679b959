//! Panics: a trap, with its message in the log.
fn main() {
    let v: Vec<u32> = Vec::new();
    let i = std::env::args().count() + 7;
    println!("{}", v[i]);
}
