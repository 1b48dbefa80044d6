//! `--net egress`: a route out through the host's NAT, limited by an
//! allow-list. The destination is a network namespace this test makes
//! itself (a "server" at 10.201.x.2 behind a veth pair on the host), with
//! two HTTP servers in it; nothing outside this machine is contacted.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestRoot;
use envbox::{Network, Sandbox};

/// The server namespace and its two HTTP servers; torn down on drop.
struct Server {
    ns: String,
    veth: String,
    ip: String,
    children: Vec<Child>,
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Server {
    fn start() -> Server {
        let n = std::process::id() % 250 + 1;
        let (ns, veth) = (format!("ebx-srv-{}", std::process::id()), format!("ebt{}", std::process::id() % 100_000));
        let (host_ip, ip) = (format!("10.201.{n}.1"), format!("10.201.{n}.2"));
        sh(&format!("ip netns add {ns}"));
        let server = Server { ns: ns.clone(), veth: veth.clone(), ip: ip.clone(), children: Vec::new() };
        sh(&format!("ip link add {veth} type veth peer name srv netns {ns}"));
        sh(&format!("ip addr add {host_ip}/30 dev {veth} && ip link set {veth} up"));
        sh(&format!("ip -n {ns} addr add {ip}/30 dev srv && ip -n {ns} link set srv up && ip -n {ns} link set lo up"));
        sh(&format!("ip -n {ns} route add default via {host_ip}"));
        let mut server = server;
        for port in [8080, 8081] {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-m", "http.server", &port.to_string(), "--bind", &ip])
                .current_dir("/")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            server.children.push(child);
        }
        // Up when both answer from the host.
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [8080, 8081] {
            while std::net::TcpStream::connect((ip.as_str(), port)).is_err() {
                assert!(Instant::now() < deadline, "the test's HTTP server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `GET http://ip:port/` from inside the sandbox: "200" or the error's name.
fn fetch(sb: &Sandbox, ip: &str, port: u16) -> String {
    let script = format!(
        "python3 -c 'import urllib.request as u\ntry: print(u.urlopen(\"http://{ip}:{port}/\", timeout=2).status)\nexcept Exception as e: print(type(e).__name__)'"
    );
    sb.run(&script).unwrap().stdout_str().trim().to_string()
}

fn veb_interfaces() -> usize {
    std::fs::read_dir("/sys/class/net").unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("veb")).count()
}

#[test]
fn egress_goes_out_through_nat_and_the_allow_list_holds() {
    require_root!("egress_goes_out_through_nat_and_the_allow_list_holds");
    let root = TestRoot::new("egress");
    let server = Server::start();
    let before = veb_interfaces();

    // No allow-list: every destination, through the host's NAT.
    let mut cfg = root.config(common::debian());
    cfg.network = Network::Egress;
    let open = Sandbox::create(&cfg, "open").unwrap();
    assert_eq!(fetch(&open, &server.ip, 8080), "200");
    assert_eq!(fetch(&open, &server.ip, 8081), "200");

    // With one: only that destination and port.
    cfg.egress_allow = vec![format!("{}:8080", server.ip).parse().unwrap()];
    let narrow = Sandbox::create(&cfg, "narrow").unwrap();
    assert_eq!(fetch(&narrow, &server.ip, 8080), "200");
    assert_ne!(fetch(&narrow, &server.ip, 8081), "200");
    // Commands cannot lift it (no CAP_NET_ADMIN), nor change the route.
    let o = narrow
        .run("ip route del default 2>&1; python3 -c 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)' 2>&1; echo done")
        .unwrap();
    assert!(o.stdout_str().ends_with("done\n"));
    assert_ne!(fetch(&narrow, &server.ip, 8081), "200");

    // Neither may reach the host itself (its side of the veth), nor another
    // sandbox.
    let host_listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host_listener.local_addr().unwrap().port();
    let gateway = open.run("ip route 2>/dev/null | awk '/default/ {print $3}' || true").unwrap().stdout_str().trim().to_string();
    let gateway = if gateway.is_empty() {
        // No iproute2 in the image: read the gateway from /proc/net/route.
        let hex = open.run("awk 'NR==2 {print $3}' /proc/net/route").unwrap().stdout_str().trim().to_string();
        let v = u32::from_str_radix(&hex, 16).unwrap();
        std::net::Ipv4Addr::from(v.swap_bytes()).to_string()
    } else {
        gateway
    };
    assert!(gateway.starts_with("10.200."), "{gateway}");
    let o = open
        .run(&format!("python3 -c 'import socket; socket.create_connection((\"{gateway}\", {port}), timeout=2)' 2>&1 | tail -1"))
        .unwrap();
    assert!(o.stdout_str().contains("timed out") || o.stdout_str().contains("refused"), "reached the host: {o:?}");

    // --net none still has no route at all.
    cfg.network = Network::None;
    cfg.egress_allow.clear();
    let none = Sandbox::create(&cfg, "none").unwrap();
    assert_eq!(fetch(&none, &server.ip, 8080), "URLError");

    // The veth pairs go with the sandboxes.
    assert_eq!(veb_interfaces(), before + 2);
    for sb in [open, narrow, none] {
        sb.delete_and_wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while veb_interfaces() != before {
        assert!(Instant::now() < deadline, "veth pairs outlived their sandboxes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bad input: a clear error, nothing made.
    cfg.egress_allow = vec!["10.0.0.0/8".parse().unwrap()];
    let e = Sandbox::create(&cfg, "bad").err().unwrap().to_string();
    assert!(e.contains("--allow only applies to --net egress"), "{e}");
    drop(server);
    root.assert_clean();
}
