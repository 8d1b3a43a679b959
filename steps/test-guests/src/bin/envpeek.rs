//! Prints every environment variable it can see.
fn main() {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (k, v) in vars {
        println!("{k}={v}");
    }
}
