//! Writes 1 GiB to stdout: the host must cut it without holding it in memory.
use std::io::Write;
fn main() {
    let chunk = vec![b'x'; 1 << 20];
    let mut out = std::io::stdout().lock();
    for _ in 0..1024 {
        if out.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = out.flush();
    eprintln!("flood done");
}
