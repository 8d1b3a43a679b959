//! Loops forever: must end `timed_out` by the epoch deadline.
fn main() {
    let mut x: u64 = 0;
    loop {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        if x == 42 {
            println!("{x}");
        }
    }
}
