//! Exits with code 3.
fn main() {
    eprintln!("exiting with 3");
    std::process::exit(3);
}
