//! `ic-resolver`: the name server incus-compose runs on every cluster member for the service
//! names of its spanning bridges (see `src/engine/names.rs`). A static binary with no
//! dependencies but the standard library, built by `build.rs` and pushed into an empty
//! container (`source: none`) as its init; the container's routed NIC gives it its address.
//!
//! It answers A queries from `/hosts`, which incus-compose pushes through the Incus file API:
//! one line per port and address, `PORT ADDRESS NAME...`, and a last line `# end` (a file
//! caught half written has no end line and is ignored until the next one). Each port is one
//! network's table: the network's dnsmasq forwards its `.incus` and unqualified names to
//! `ADDRESS#PORT` (`server=` lines in `raw.dnsmasq`, written once), so a client of one network
//! never gets the addresses of another. The file is read again when its time or size changes,
//! checked at every query: no restart, no signal. Answers carry TTL 0 (dnsmasq keeps nothing)
//! and rotate through the addresses; a name it does not know is NXDOMAIN, a known name asked
//! for another type is an empty answer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const HOSTS: &str = "/hosts";
const END: &str = "# end";

unsafe extern "C" {
    fn signal(sig: i32, handler: usize) -> usize;
    fn _exit(code: i32) -> !;
}

extern "C" fn bye(_: i32) {
    unsafe { _exit(0) }
}

/// port -> name -> addresses.
type Tables = BTreeMap<u16, BTreeMap<String, Vec<Ipv4Addr>>>;

/// The tables of a hosts file, or None when it is not complete.
fn parse(text: &str) -> Option<Tables> {
    if !text.lines().any(|l| l.trim() == END) {
        return None;
    }
    let mut t = Tables::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(port), Some(addr)) = (w.next(), w.next()) else {
            continue;
        };
        let (Ok(port), Ok(addr)) = (port.parse::<u16>(), addr.parse::<Ipv4Addr>()) else {
            continue;
        };
        let table = t.entry(port).or_default();
        for name in w {
            table
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push(addr);
        }
    }
    Some(t)
}

/// The answer to query `q` from `table`, or None to drop it (not a query, or malformed).
fn answer(
    q: &[u8],
    table: Option<&BTreeMap<String, Vec<Ipv4Addr>>>,
    turn: usize,
) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 {
        return None;
    }
    let mut out = q[..12].to_vec();
    out[2] = 0x84 | (q[2] & 0x01); // a response, authoritative, RD as asked
    out[3] = 0;
    if u16::from_be_bytes([q[4], q[5]]) != 1 {
        out[3] = 4; // not implemented
        out[4..12].fill(0);
        return Some(out);
    }
    let mut i = 12;
    let mut name = String::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    i += 4;
    out.extend_from_slice(&q[12..i]);
    out[6..12].fill(0);
    let Some(addrs) = table.and_then(|t| t.get(&name)) else {
        out[3] = 3; // NXDOMAIN
        return Some(out);
    };
    if qtype == 1 && (qclass == 1 || qclass == 255) {
        out[6..8].copy_from_slice(&(addrs.len() as u16).to_be_bytes());
        for k in 0..addrs.len() {
            let a = addrs[(k + turn) % addrs.len()];
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            out.extend_from_slice(&a.octets());
        }
    }
    Some(out)
}

struct State {
    seen: Option<(SystemTime, u64)>,
    tables: Tables,
    turn: usize,
}

/// Reads the file again when it changed (a file without its end line keeps the old tables).
fn refresh(s: &mut State) {
    let stamp = std::fs::metadata(HOSTS)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    if stamp == s.seen {
        return;
    }
    if let Some(t) = std::fs::read_to_string(HOSTS)
        .ok()
        .as_deref()
        .and_then(parse)
    {
        s.tables = t;
        s.seen = stamp;
    }
}

fn serve(port: u16, state: Arc<Mutex<State>>) {
    let sock = loop {
        match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    };
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let reply = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            refresh(&mut s);
            s.turn = s.turn.wrapping_add(1);
            answer(&buf[..n], s.tables.get(&port), s.turn)
        };
        if let Some(r) = reply {
            let _ = sock.send_to(&r, from);
        }
    }
}

fn main() {
    // HUP, INT, TERM and PWR (Incus's clean stop) end it: as PID 1 it has no default action.
    for sig in [1, 2, 15, 30] {
        unsafe {
            signal(sig, bye as *const () as usize);
        }
    }
    let state = Arc::new(Mutex::new(State {
        seen: None,
        tables: Tables::new(),
        turn: 0,
    }));
    let mut serving: Vec<u16> = Vec::new();
    // A thread per port of the file; ports that appear later get theirs within a second.
    loop {
        let ports: Vec<u16> = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            refresh(&mut s);
            s.tables.keys().copied().collect()
        };
        for p in ports {
            if !serving.contains(&p) {
                serving.push(p);
                let st = state.clone();
                std::thread::spawn(move || serve(p, st));
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn answers_every_address_of_a_known_name_and_nxdomain_otherwise() {
        let t = parse("5301 10.0.0.2 web web.incus\n5301 10.0.0.3 web\n5302 10.1.0.2 web\n# end\n")
            .unwrap();
        let r = answer(&query("WEB", 1), t.get(&5301), 0).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2);
        let r = answer(&query("web", 1), t.get(&5302), 0).unwrap();
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
        assert_eq!(&r[r.len() - 4..], &[10, 1, 0, 2]);
        let r = answer(&query("web", 28), t.get(&5301), 0).unwrap();
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
        let r = answer(&query("nope.incus", 1), t.get(&5301), 0).unwrap();
        assert_eq!(r[3] & 0x0f, 3);
        assert!(
            parse("5301 10.0.0.2 web\n").is_none(),
            "no end line: incomplete"
        );
    }
}
