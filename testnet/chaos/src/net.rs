//! Network namespaces for the netns mode (root only): one bridge in the
//! host namespace and one namespace per node, each joined to the bridge by
//! a veth pair, in an address range the harness owns (`10.213.K.0/24`:
//! the bridge, where the harness's own API traffic comes from, is `.1`,
//! node `i` is `.11 + i`). [`Plan`] is the pure part (names and addresses,
//! all names at most 15 characters); [`Net`] creates it, cuts and heals
//! directed pairs with blackhole routes inside the sender's namespace,
//! tries tc netem, and removes everything of its prefix on drop, on a
//! signal (`teardown.rs`) and, for a crashed earlier run, at start. One
//! run per `K` at a time (an flock on `/run/plexi-chaos-K.lock`).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every interface and namespace name starts with this and then `K`.
pub const PREFIX: &str = "pxc";
/// The first two octets of every address of the netns mode.
pub const NET_BASE: [u8; 2] = [10, 213];
/// Fixed ports inside each namespace.
pub const P2P_PORT: u16 = 7000;
pub const API_PORT: u16 = 8080;
/// Most nodes of one plan (addresses `.11` to `.250`).
pub const MAX_NODES: usize = 240;
/// Bound of one `ip`/`tc` command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The interface name inside each namespace.
pub const NS_IFACE: &str = "eth0";
/// Range of K (the third octet), drawn from the seed.
pub const K_RANGE: (u8, u8) = (16, 215);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("`{cmd}` did not finish within {COMMAND_TIMEOUT:?}")]
    Timeout { cmd: String },
    #[error("{0}")]
    Plan(String),
    #[error("another run holds {path} (same address range); pass another seed or wait")]
    Locked { path: String },
}

/// Where the nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// 127.0.0.1, OS-chosen ports, process and fault-file faults only.
    Loopback,
    /// One network namespace per node on a bridge (root).
    Netns,
}

impl NetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetMode::Loopback => "loopback",
            NetMode::Netns => "netns",
        }
    }

    /// netns as root, loopback otherwise.
    pub fn default_for_user() -> NetMode {
        if is_root() {
            NetMode::Netns
        } else {
            NetMode::Loopback
        }
    }
}

/// The names and addresses of one netns cluster (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub k: u8,
    pub nodes: usize,
}

impl Plan {
    /// The plan of a run: K from the seed.
    pub fn new(seed: u64, nodes: usize) -> Result<Plan, NetError> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(NetError::Plan(format!(
                "{nodes} nodes: the netns mode takes 1..={MAX_NODES}"
            )));
        }
        let span = (K_RANGE.1 - K_RANGE.0) as u64 + 1;
        Ok(Plan {
            k: K_RANGE.0 + (seed % span) as u8,
            nodes,
        })
    }

    /// `pxcK`: the prefix of every name of this plan.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}", self.k)
    }

    /// Whether `name` is one of this plan's prefix (an earlier run's too).
    pub fn owns(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix())
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| matches!(c, 'b' | 'n' | 'h' | 'p'))
    }

    pub fn bridge(&self) -> String {
        format!("{}br", self.prefix())
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{}", self.prefix(), i + 1)
    }

    pub fn veth_host(&self, i: usize) -> String {
        format!("{}h{}", self.prefix(), i + 1)
    }

    pub fn veth_peer(&self, i: usize) -> String {
        format!("{}p{}", self.prefix(), i + 1)
    }

    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET_BASE[0], NET_BASE[1], self.k, 1)
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(NET_BASE[0], NET_BASE[1], self.k, 11 + i as u8)
    }

    /// Every name the plan creates (each at most 15 characters).
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.bridge()];
        for i in 0..self.nodes {
            v.extend([self.ns(i), self.veth_host(i), self.veth_peer(i)]);
        }
        v
    }

    /// The tmpfs source name of this plan's data dirs (`disk.rs`).
    pub fn mount_source(&self) -> String {
        format!("{}tmpfs", self.prefix())
    }

    pub fn lock_path(&self) -> String {
        format!("/run/plexi-chaos-{}.lock", self.k)
    }
}

/// Runs `program args`, bounded by [`COMMAND_TIMEOUT`]; stdout on success,
/// an error naming the command and its stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command {
            cmd: cmd.clone(),
            detail: e.to_string(),
        })?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetError::Timeout { cmd });
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| NetError::Command {
        cmd: cmd.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            cmd,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    run("ip", args)
}

/// Namespace names in `ip netns list` output.
fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Interface names in `ip -o link show` output (`12: name@peer: <...>`).
fn parse_link_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Removes everything of `plan`'s prefix: processes inside its namespaces
/// (SIGKILL), the namespaces, its links, its tmpfs mounts. Best effort:
/// returns what could not be removed, one line each.
pub fn remove_all(plan: &Plan) -> Vec<String> {
    let mut problems = Vec::new();
    let namespaces = ip(&["netns", "list"])
        .map(|t| parse_netns_list(&t))
        .unwrap_or_default();
    for ns in namespaces.iter().filter(|n| plan.owns(n)) {
        if let Ok(pids) = ip(&["netns", "pids", ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process inside our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    problems.extend(crate::disk::unmount_source(&plan.mount_source()));
    for ns in namespaces.iter().filter(|n| plan.owns(n)) {
        if let Err(e) = ip(&["netns", "del", ns]) {
            problems.push(e.to_string());
        }
    }
    let links = ip(&["-o", "link", "show"])
        .map(|t| parse_link_names(&t))
        .unwrap_or_default();
    // Host veth ends first (their peers go with them), the bridge last.
    let mut ours: Vec<&String> = links.iter().filter(|n| plan.owns(n)).collect();
    ours.sort_by_key(|n| *n == &plan.bridge());
    for link in ours {
        match ip(&["link", "del", link]) {
            Ok(_) => {}
            // The peer of an end already deleted.
            Err(_) if !link_exists(link) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    problems
}

fn link_exists(name: &str) -> bool {
    ip(&["link", "show", name]).is_ok()
}

/// The live namespaces and bridge of one run.
pub struct Net {
    pub plan: Plan,
    /// Held for the run: one run per K.
    _lock: std::fs::File,
}

impl Net {
    /// Takes the plan's lock, removes an earlier run's leftovers, creates
    /// the bridge and the namespaces, and registers the teardown for
    /// signals. On an error, what was created is removed again.
    pub fn setup(plan: Plan) -> Result<Net, NetError> {
        let path = plan.lock_path();
        let lock = std::fs::File::create(&path).map_err(|e| NetError::Command {
            cmd: format!("create {path}"),
            detail: e.to_string(),
        })?;
        // SAFETY: flock(2) on a file we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(NetError::Locked { path });
        }
        for p in remove_all(&plan) {
            eprintln!("leftover of an earlier run not removed: {p}");
        }
        crate::teardown::register_net(plan.clone());
        let net = Net { plan, _lock: lock };
        // On error `net` drops here and removes what was made.
        net.create()?;
        Ok(net)
    }

    fn create(&self) -> Result<(), NetError> {
        let p = &self.plan;
        let br = p.bridge();
        let cidr = |a: Ipv4Addr| format!("{a}/24");
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &cidr(p.bridge_addr()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..p.nodes {
            let (ns, host, peer) = (p.ns(i), p.veth_host(i), p.veth_peer(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &host, "master", &br])?;
            ip(&["link", "set", &host, "up"])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", &peer, "name", NS_IFACE])?;
            ip(&["-n", &ns, "addr", "add", &cidr(p.addr(i)), "dev", NS_IFACE])?;
            ip(&["-n", &ns, "link", "set", NS_IFACE, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Drops `from`'s packets to `to` (a blackhole route in `from`'s namespace).
    pub fn cut(&self, from: usize, to: usize) -> Result<(), NetError> {
        let dst = format!("{}/32", self.plan.addr(to));
        ip(&["-n", &self.plan.ns(from), "route", "add", "blackhole", &dst]).map(drop)
    }

    /// Removes that route again.
    pub fn uncut(&self, from: usize, to: usize) -> Result<(), NetError> {
        let dst = format!("{}/32", self.plan.addr(to));
        ip(&["-n", &self.plan.ns(from), "route", "del", "blackhole", &dst]).map(drop)
    }

    /// Removes every blackhole route of every namespace (heal-all).
    pub fn uncut_all(&self) -> Result<(), NetError> {
        for i in 0..self.plan.nodes {
            ip(&[
                "-n",
                &self.plan.ns(i),
                "route",
                "flush",
                "type",
                "blackhole",
            ])?;
        }
        Ok(())
    }

    /// The blackhole routes of node `i`'s namespace (their destinations).
    pub fn cuts_of(&self, i: usize) -> Result<Vec<String>, NetError> {
        let text = ip(&["-n", &self.plan.ns(i), "route", "show", "type", "blackhole"])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .collect())
    }

    /// tc netem on node `i`'s interface: delay `[min, max]` as a mean and
    /// jitter (so messages reorder), loss and duplication.
    pub fn netem_add(
        &self,
        i: usize,
        delay_ms: [u64; 2],
        loss: u8,
        dup: u8,
    ) -> Result<(), NetError> {
        let mean = format!("{}ms", (delay_ms[0] + delay_ms[1]) / 2);
        let jitter = format!("{}ms", (delay_ms[1] - delay_ms[0].min(delay_ms[1])) / 2);
        let (loss, dup) = (format!("{loss}%"), format!("{dup}%"));
        let ns = self.plan.ns(i);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                NS_IFACE,
                "root",
                "netem",
                "delay",
                &mean,
                &jitter,
                "loss",
                &loss,
                "duplicate",
                &dup,
            ],
        )
        .map(drop)
    }

    pub fn netem_del(&self, i: usize) -> Result<(), NetError> {
        let ns = self.plan.ns(i);
        run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", NS_IFACE, "root",
            ],
        )
        .map(drop)
    }

    /// Removes everything (also done on drop).
    pub fn teardown(&self) {
        for p in remove_all(&self.plan) {
            eprintln!("netns cleanup: {p}");
        }
        crate::teardown::forget_net();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether this process runs as root (the default mode is netns then).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_interface_names_and_are_distinct() {
        for seed in [0, 1, 199, 200, u64::MAX] {
            let p = Plan::new(seed, MAX_NODES).unwrap();
            let names = p.names();
            assert!(names.iter().all(|n| n.len() <= 15), "{names:?}");
            let set: std::collections::BTreeSet<_> = names.iter().collect();
            assert_eq!(set.len(), names.len());
            assert!(names.iter().all(|n| p.owns(n)));
        }
    }

    #[test]
    fn k_comes_from_the_seed_and_addresses_stay_in_the_owned_range() {
        let p = Plan::new(7, 5).unwrap();
        assert_eq!(p, Plan::new(7, 5).unwrap());
        assert!((K_RANGE.0..=K_RANGE.1).contains(&p.k));
        assert_eq!(p.bridge_addr().octets(), [10, 213, p.k, 1]);
        assert_eq!(p.addr(0).octets(), [10, 213, p.k, 11]);
        assert_eq!(p.addr(4).octets(), [10, 213, p.k, 15]);
        assert!(Plan::new(7, 0).is_err());
        assert!(Plan::new(7, MAX_NODES + 1).is_err());
    }

    #[test]
    fn another_ks_names_are_not_ours() {
        let p = Plan { k: 17, nodes: 5 };
        assert!(p.owns("pxc17n1"));
        assert!(p.owns("pxc17br"));
        assert!(!p.owns("pxc171n1"), "K 171 is another run's");
        assert!(!p.owns("pxc1n1"));
        assert!(!p.owns("eth0"));
    }

    #[test]
    fn ip_listings_parse() {
        assert_eq!(
            parse_netns_list("pxc17n2 (id: 1)\npxc17n1\n"),
            vec!["pxc17n2", "pxc17n1"]
        );
        let links =
            "1: lo: <LOOPBACK,UP> mtu 65536\n7: pxc17h1@if6: <BROADCAST> mtu 1500 master pxc17br\n";
        assert_eq!(parse_link_names(links), vec!["lo", "pxc17h1"]);
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it makes stay
    /// in that namespace).
    fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) of this thread only, on a namespace fd we opened.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    }

    fn udp_reaches(plan: &Plan, from: usize, to: usize, port: u16) -> bool {
        let dst = std::net::SocketAddr::from((plan.addr(to), port));
        let rx = in_ns(&plan.ns(to), move || {
            std::net::UdpSocket::bind(dst).unwrap()
        });
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        in_ns(&plan.ns(from), move || {
            let tx = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            // A blackhole route makes the send itself fail (EINVAL): not reached.
            let _ = tx.send_to(b"x", dst);
        });
        let mut buf = [0u8; 4];
        rx.recv_from(&mut buf).is_ok()
    }

    /// Root only (skipped otherwise): real namespaces; a one-way cut drops
    /// exactly one direction, the harness (bridge address) still reaches
    /// the cut node, uncut heals, and teardown leaves nothing behind.
    #[test]
    fn namespaces_cut_one_direction_and_teardown_removes_everything() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let plan = Plan {
            k: K_RANGE.1,
            nodes: 3,
        };
        let net = Net::setup(plan.clone()).unwrap();
        assert!(udp_reaches(&plan, 0, 1, 9001));
        assert!(udp_reaches(&plan, 1, 0, 9002));
        net.cut(0, 1).unwrap();
        assert!(!udp_reaches(&plan, 0, 1, 9003), "0 -> 1 is cut");
        assert!(udp_reaches(&plan, 1, 0, 9004), "1 -> 0 passes");
        assert!(udp_reaches(&plan, 0, 2, 9005));
        assert_eq!(net.cuts_of(0).unwrap(), vec![plan.addr(1).to_string()]);
        // The harness in the host namespace still reaches node 0, both ways.
        let l = in_ns(&plan.ns(0), {
            let a = std::net::SocketAddr::from((plan.addr(0), 9006));
            move || std::net::TcpListener::bind(a).unwrap()
        });
        let c = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((plan.addr(0), 9006)),
            Duration::from_secs(2),
        );
        assert!(c.is_ok(), "harness -> node 0 during the cut");
        drop(l);
        net.uncut(0, 1).unwrap();
        assert!(udp_reaches(&plan, 0, 1, 9007), "healed");
        net.cut(2, 0).unwrap();
        net.uncut_all().unwrap();
        assert!(net.cuts_of(2).unwrap().is_empty());
        // tc netem: refused on a kernel without sch_netem, else in place.
        match net.netem_add(1, [10, 50], 1, 1) {
            Ok(()) => net.netem_del(1).unwrap(),
            Err(e) => assert!(e.to_string().contains("tc qdisc add"), "{e}"),
        }
        drop(net);
        let left = ip(&["netns", "list"]).unwrap();
        assert!(
            parse_netns_list(&left).iter().all(|n| !plan.owns(n)),
            "{left}"
        );
        let links = ip(&["-o", "link", "show"]).unwrap();
        assert!(parse_link_names(&links).iter().all(|n| !plan.owns(n)));
    }

    #[test]
    fn leftovers_of_a_crashed_run_are_removed_at_setup() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let plan = Plan {
            k: K_RANGE.1 - 1,
            nodes: 2,
        };
        // A crashed run: a namespace and a bridge of the prefix, no Net.
        ip(&["netns", "add", &plan.ns(0)]).unwrap();
        ip(&["link", "add", &plan.bridge(), "type", "bridge"]).unwrap();
        let net = Net::setup(plan.clone()).unwrap();
        let ns = parse_netns_list(&ip(&["netns", "list"]).unwrap());
        assert_eq!(ns.iter().filter(|n| plan.owns(n)).count(), 2);
        // A second run of the same K is refused while this one holds it.
        assert!(matches!(
            Net::setup(plan.clone()),
            Err(NetError::Locked { .. })
        ));
        drop(net);
        let ns = parse_netns_list(&ip(&["netns", "list"]).unwrap());
        assert!(ns.iter().all(|n| !plan.owns(n)));
    }

    #[test]
    fn a_failing_command_is_named_in_the_error() {
        let e = run("ip", &["link", "show", "pxc-no-such-link"]).unwrap_err();
        assert!(
            e.to_string().contains("ip link show pxc-no-such-link"),
            "{e}"
        );
    }
}
