//! DNS SRV lookups for `dns: srv+http://_service._tcp.NAME`: one query over UDP to the
//! service's `dns_server` (else the first `nameserver` of /etc/resolv.conf), its answers read
//! with name compression followed (at most 32 jumps: a loop is an error, not a hang).

use std::net::SocketAddr;
use std::time::Duration;

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot.
    pub target: String,
}

const SRV: u16 = 33;

/// The nameserver of /etc/resolv.conf (port 53).
pub(crate) fn system_nameserver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next())
            .flatten()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The SRV records of `name`, lowest priority first.
pub(crate) async fn lookup(name: &str, server: SocketAddr) -> Result<Vec<Srv>, String> {
    let id: u16 = rand_id();
    let query = encode_query(id, name)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| "bind")?
    } else {
        "[::]:0".parse().map_err(|_| "bind")?
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("DNS: {e}"))?;
    sock.connect(server)
        .await
        .map_err(|e| format!("DNS {server}: {e}"))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&query)
            .await
            .map_err(|e| format!("DNS {server}: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let answer = &buf[..n];
                // Another query's answer (or a spoof): wait for ours.
                if answer.len() < 2 || u16::from_be_bytes([answer[0], answer[1]]) != id {
                    continue;
                }
                let mut records = parse_answer(answer)?;
                records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
                return Ok(records);
            }
            Ok(Err(e)) => return Err(format!("DNS {server}: {e}")),
            Err(_) => continue,
        }
    }
    Err(format!("DNS {server}: no answer for {name} SRV"))
}

fn rand_id() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

pub(crate) fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&SRV.to_be_bytes());
    q.extend_from_slice(&[0, 1]); // IN
    Ok(q)
}

/// Reads a name at `at`; returns it and where the record goes on after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..32 {
        let len = *msg.get(at).ok_or("DNS: a name runs past the answer")? as usize;
        match len {
            0 => {
                return Ok((labels.join("."), end.unwrap_or(at + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let lo = *msg.get(at + 1).ok_or("DNS: a cut pointer")? as usize;
                end.get_or_insert(at + 2);
                at = ((l & 0x3F) << 8) | lo;
            }
            l if l <= 63 => {
                let label = msg
                    .get(at + 1..at + 1 + l)
                    .ok_or("DNS: a label runs past the answer")?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + l;
            }
            _ => return Err("DNS: a bad label".into()),
        }
    }
    Err("DNS: a name of more than 32 jumps (a compression loop)".into())
}

pub(crate) fn parse_answer(msg: &[u8]) -> Result<Vec<Srv>, String> {
    let u16_at = |i: usize| -> Result<u16, String> {
        msg.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "DNS: the answer is cut short".to_string())
    };
    if msg.len() < 12 {
        return Err("DNS: the answer is cut short".into());
    }
    let flags = u16_at(2)?;
    if flags & 0x0200 != 0 {
        return Err("DNS: the answer was truncated (over UDP's size); TCP is not supported".into());
    }
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN: no such name, no endpoints
        rc => return Err(format!("DNS: the server answered with error code {rc}")),
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..qd {
        at = read_name(msg, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = read_name(msg, at)?.1;
        let (ty, len) = (u16_at(at)?, u16_at(at + 8)? as usize);
        let data = at + 10;
        if msg.len() < data + len {
            return Err("DNS: a record runs past the answer".into());
        }
        if ty == SRV && len >= 7 {
            out.push(Srv {
                priority: u16_at(data)?,
                weight: u16_at(data + 2)?,
                port: u16_at(data + 4)?,
                target: read_name(msg, data + 6)?.0,
            });
        }
        at = data + len;
    }
    Ok(out)
}
