//! Grows memory without end: must end `memory_limit`.
fn main() {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![1u8; 8 << 20]);
        eprintln!("holding {} MiB", blocks.len() * 8);
    }
}
