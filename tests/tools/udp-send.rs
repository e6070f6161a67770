//! `udp-send ADDRESS:PORT HEX`: sends the bytes HEX (two hex digits each) as one UDP datagram,
//! three times 0.2 s apart, and prints what each send returned. Built static by
//! `tests/egress.rs` (std only) and pushed into a container, whose image has no tool that sends
//! chosen bytes over UDP.

use std::net::UdpSocket;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[2].len() % 2 != 0 {
        eprintln!("usage: udp-send ADDRESS:PORT HEX");
        std::process::exit(2);
    }
    let hex = args[2].as_bytes();
    let bytes: Vec<u8> = hex
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            eprintln!("udp-send: not hex: {e}");
            std::process::exit(2);
        });
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| {
        eprintln!("udp-send: bind: {e}");
        std::process::exit(1);
    });
    for _ in 0..3 {
        match socket.send_to(&bytes, &args[1]) {
            Ok(n) => println!("sent {n}"),
            Err(e) => println!("error {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
