//! Tries to leave the workspace: `..`, absolute paths, a symlink pointing
//! outside. Prints one line per attempt: `NAME ok` or `NAME refused`.
fn attempt(name: &str, r: std::io::Result<String>) {
    match r {
        Ok(s) => println!("{name} ok {}", s.len()),
        Err(_) => println!("{name} refused"),
    }
}
fn main() {
    attempt(
        "dotdot",
        std::fs::read_to_string("/workspace/../etc/passwd"),
    );
    attempt("absolute", std::fs::read_to_string("/etc/passwd"));
    attempt(
        "symlink",
        std::fs::read_to_string("/workspace/outside-link"),
    );
    attempt("inside", std::fs::read_to_string("/workspace/inside.txt"));
    attempt(
        "write",
        std::fs::write("/workspace/written.txt", "hi").map(|_| String::new()),
    );
    attempt(
        "private",
        std::fs::write("/sentinel/output", "probe=1\n").map(|_| String::new()),
    );
}
