//! Egress networking, `--net egress [--allow CIDR[:PORT[-PORT]]]...`: the
//! sandbox's private network namespace gets a veth pair to the host and a
//! default route through it, the host masquerades its traffic, and an
//! allow-list (when given) is enforced by an nftables table inside the
//! sandbox's namespace, which commands cannot change (no CAP_NET_ADMIN).
//!
//! Addressing: each sandbox takes a /30 of 10.200.0.0/16 (host .1, sandbox
//! .2); the host side is named `veb<5 hex digits>` after the subnet, and
//! creating it is the atomic claim of the subnet (EEXIST → next one).
//!
//! Host state, all of it shared and static, so nothing per sandbox can
//! leak: one nftables table `ip envbox` (masquerade of 10.200.0.0/16, no
//! traffic from sandboxes to the host itself, none between sandboxes) and
//! `net.ipv4.ip_forward=1`. The veth pair and the sandbox's table die with
//! its network namespace.
//!
//! The work is done with the `ip` (iproute2) and `nft` (nftables)
//! programs, run in the sandbox's namespace where needed (setns before
//! exec). IPv4 only.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// One allowed destination: a network and optionally a port range (TCP and
/// UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRule {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub ports: Option<(u16, u16)>,
}

impl std::fmt::Display for AllowRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        match self.ports {
            Some((a, b)) if a == b => write!(f, ":{a}"),
            Some((a, b)) => write!(f, ":{a}-{b}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for AllowRule {
    type Err = String;
    /// `10.0.0.0/8`, `1.2.3.4`, `1.2.3.4:443`, `10.1.0.0/16:8000-8100`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid --allow {s:?}: {why} (examples: 10.0.0.0/8, 192.0.2.7:443, 10.1.0.0/16:8000-8100)");
        let (net, ports) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad("the prefix length must be 0-32"))?),
            None => (net, 32),
        };
        if prefix > 32 {
            return Err(bad("the prefix length must be 0-32"));
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        if u32::from(addr) & !mask != 0 {
            return Err(bad("host bits are set below the prefix length"));
        }
        let ports = match ports {
            None => None,
            Some(p) => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                let a: u16 = a.parse().map_err(|_| bad("bad port"))?;
                let b: u16 = b.parse().map_err(|_| bad("bad port"))?;
                if a == 0 || a > b {
                    return Err(bad("ports must be 1-65535, low to high"));
                }
                Some((a, b))
            }
        };
        Ok(AllowRule { addr, prefix, ports })
    }
}

/// Why egress networking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{program}` is needed for --net egress but could not run ({source}); install iproute2 and nftables")]
    Missing {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("no free /30 in 10.200.0.0/16 for another egress sandbox")]
    NoSubnet,
    #[error("enabling IPv4 forwarding on the host failed")]
    Forwarding(#[source] io::Error),
}

/// Runs a program, in `netns` when given.
fn run(program: &'static str, args: &[String], netns: Option<BorrowedFd<'_>>, stdin: Option<&str>) -> Result<(), NetError> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        crate::sys::set_pre_exec(&mut cmd, move || crate::sys::setns_net(fd));
    }
    let mut child = cmd.spawn().map_err(|source| NetError::Missing { program, source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetError::Missing { program, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Failed {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The host's shared table: masquerade what leaves the sandboxes' subnet
/// for anywhere but another sandbox, refuse their traffic to the host
/// itself and to each other. Replaced atomically (nft -f is one
/// transaction), so it is the same whoever writes it.
const HOST_TABLE: &str = r#"
table ip envbox {}
delete table ip envbox
table ip envbox {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.200.0.0/16 oifname != "veb*" masquerade
    }
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "veb*" ct state established,related accept
        iifname "veb*" drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "veb*" oifname "veb*" drop
        oifname "veb*" ct state established,related accept
        oifname "veb*" drop
    }
}
table ip6 envbox {}
delete table ip6 envbox
table ip6 envbox {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "veb*" drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "veb*" drop
        oifname "veb*" drop
    }
}
"#;

fn host_setup() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        run("nft", &args("-f -"), None, Some(HOST_TABLE)).map_err(|e| e.to_string())?;
        let path = "/proc/sys/net/ipv4/ip_forward";
        if std::fs::read_to_string(path).map(|v| v.trim() != "1").unwrap_or(true) {
            std::fs::write(path, "1").map_err(|e| NetError::Forwarding(e).to_string())?;
        }
        Ok(())
    })
    .clone()
}

/// The sandbox's own table: only loopback, replies, and the allowed
/// destinations may leave.
fn sandbox_table(allow: &[AllowRule]) -> String {
    let mut rules = String::new();
    for r in allow {
        rules.push_str(&format!("        ip daddr {}/{}", r.addr, r.prefix));
        if let Some((a, b)) = r.ports {
            let ports = if a == b { a.to_string() } else { format!("{a}-{b}") };
            rules.push_str(&format!(" meta l4proto {{ tcp, udp }} th dport {ports}"));
        }
        rules.push_str(" accept\n");
    }
    format!(
        "table inet envbox {{\n    chain output {{\n        type filter hook output priority filter; policy drop;\n        oif \"lo\" accept\n        ct state established,related accept\n{rules}    }}\n}}\n"
    )
}

/// Connects the network namespace `netns` (loopback up already) to the
/// host for sandbox `id`.
pub fn setup_egress(netns: BorrowedFd<'_>, id: &str, allow: &[AllowRule]) -> Result<(), NetError> {
    host_setup().map_err(|stderr| NetError::Failed { command: "nft -f - (the host's envbox table)".into(), stderr })?;
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let ns_path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    for attempt in 0..256u32 {
        let index = (h.wrapping_add(attempt.wrapping_mul(7919))) % 16384;
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + index * 4;
        let (host_ip, sandbox_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let veth = format!("veb{index:05x}");
        // Creating the pair claims the subnet: a taken name is EEXIST.
        match run("ip", &args(&format!("link add {veth} type veth peer name eth0 netns {ns_path}")), None, None) {
            Ok(()) => {}
            Err(NetError::Failed { stderr, .. }) if stderr.contains("exists") => continue,
            Err(e) => return Err(e),
        }
        run("ip", &args(&format!("addr add {host_ip}/30 dev {veth}")), None, None)?;
        run("ip", &args(&format!("link set {veth} up")), None, None)?;
        run("ip", &args(&format!("addr add {sandbox_ip}/30 dev eth0")), Some(netns), None)?;
        run("ip", &args("link set eth0 up"), Some(netns), None)?;
        run("ip", &args(&format!("route add default via {host_ip}")), Some(netns), None)?;
        if !allow.is_empty() {
            run("nft", &args("-f -"), Some(netns), Some(&sandbox_table(allow)))?;
        }
        return Ok(());
    }
    Err(NetError::NoSubnet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_rules_parse_and_print() {
        for (s, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("192.0.2.7:443", "192.0.2.7/32:443"),
            ("10.1.0.0/16:8000-8100", "10.1.0.0/16:8000-8100"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(s.parse::<AllowRule>().unwrap().to_string(), shown);
        }
        for bad in ["", "10.0.0.1/8", "10.0.0.0/33", "host:80", "1.2.3.4:0", "1.2.3.4:90-80", "1.2.3.4:x", "::1", "1.2.3.4/8:1"] {
            assert!(bad.parse::<AllowRule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sandbox_table_allows_only_what_is_listed() {
        let t = sandbox_table(&["10.1.0.0/16:443".parse().unwrap(), "192.0.2.7".parse().unwrap()]);
        assert!(t.contains("policy drop;"));
        assert!(t.contains("ip daddr 10.1.0.0/16 meta l4proto { tcp, udp } th dport 443 accept"));
        assert!(t.contains("ip daddr 192.0.2.7/32 accept"));
    }
}
