//! Tries the network below HTTP: a TCP connection and a UDP datagram to the
//! address in `SENTINEL_PROBE_ARG` (`host:port`), and a name lookup. Prints
//! what each attempt got; exits 0 only when every one was refused.
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

fn main() {
    let target = std::env::var("SENTINEL_PROBE_ARG").unwrap_or_else(|_| "127.0.0.1:9".into());
    let mut escaped = false;
    match TcpStream::connect(&target) {
        Ok(_) => {
            println!("tcp: connected to {target}");
            escaped = true;
        }
        Err(e) => println!("tcp: refused ({e})"),
    }
    match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"escaped", &target)) {
        Ok(n) => {
            println!("udp: sent {n} bytes to {target}");
            escaped = true;
        }
        Err(e) => println!("udp: refused ({e})"),
    }
    match "localhost:80".to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => {
                println!("lookup: localhost is {a}");
                escaped = true;
            }
            None => println!("lookup: refused (no address)"),
        },
        Err(e) => println!("lookup: refused ({e})"),
    }
    std::process::exit(i32::from(escaped));
}
