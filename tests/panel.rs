//! The web admin panel in a real headless Chromium, driven over WebDriver
//! (chromedriver; a small W3C client below on the blocking reqwest client),
//! against a real 3-node cluster whose nodes have `node.location`: sign in;
//! the Nodes tab lists 3 alive nodes; the Storage tab shows the API's
//! numbers; an object uploaded from the page is found by the page's object
//! browser; a rolling update to a second build is planned, executed and
//! watched to 100 % from the page, then rolled back from the page; a
//! SIGKILLed node turns dead and its alert appears without a reload; a read
//! token sees no action button; the page logged no error. Screenshots of
//! each tab go to `target/panel-artifacts/`.
//!
//! Without Chromium or chromedriver the test fails and says how to install
//! them; it never passes silently.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    build_version, release_keygen, release_publish, wait_for, NodeSpec, TestNode, ADMIN, FAST, READ,
};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// One WebDriver command (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the page may take to show a change the cluster already made.
const UI_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries at an element the live page re-rendered under the test.
const STALE_RETRIES: usize = 20;
/// A whole rolling update of two nodes (build, drain, restart, checks), and its rollback.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            assert!(
                Path::new(path).exists(),
                "{what} is missing at {path}: the panel's browser test needs a real Chromium. \
                 Install it with `apt-get install chromium chromium-driver` (Debian), then rerun."
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(20), || {
            let v: Value = reqwest::blocking::get(format!("{url}/status"))
                .ok()?
                .json()
                .ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        assert!(
            ready.is_some(),
            "chromedriver did not become ready on {url}"
        );
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session (W3C WebDriver over HTTP).
struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(driver: &Driver) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let http = reqwest::blocking::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1366,768",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let res: Value = http
            .post(format!("{}/session", driver.url))
            .json(&caps)
            .send()
            .expect("new session")
            .json()
            .unwrap();
        let id = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {res}"));
        Browser {
            http,
            base: format!("{}/session/{id}", driver.url),
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res: Value = req.send().expect("webdriver command").json().unwrap();
        if let Some(err) = res["value"]["error"].as_str() {
            panic!(
                "webdriver {path}: {err}: {}",
                res["value"]["message"].as_str().unwrap_or("")
            );
        }
        res["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    fn js(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
    }

    fn find(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Finds `css` and runs `act` on the element; when the page re-rendered
    /// it in between (it refreshes live), finds it again, a bounded number
    /// of times.
    fn on_element(&self, css: &str, act: impl Fn(&str) -> Result<(), String>) {
        let mut last = String::new();
        for _ in 0..STALE_RETRIES {
            let el = self.find(css);
            match act(&el) {
                Ok(()) => return,
                Err(e) if e.contains("stale element") => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css}: still re-rendered after {STALE_RETRIES} tries: {last}");
    }

    /// A WebDriver command; its error as text.
    fn try_post(&self, path: &str, body: Value) -> Result<Value, String> {
        let res: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .expect("webdriver command")
            .json()
            .unwrap();
        match res["value"]["error"].as_str() {
            Some(err) => Err(format!(
                "{err}: {}",
                res["value"]["message"].as_str().unwrap_or("")
            )),
            None => Ok(res["value"].clone()),
        }
    }

    fn click(&self, css: &str) {
        self.on_element(css, |el| {
            self.try_post(&format!("/element/{el}/click"), json!({}))
                .map(drop)
        });
    }

    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, |el| {
            self.try_post(&format!("/element/{el}/clear"), json!({}))?;
            self.try_post(&format!("/element/{el}/value"), json!({ "text": text }))
                .map(drop)
        });
    }

    fn count(&self, css: &str) -> usize {
        self.js(
            "return document.querySelectorAll(arguments[0]).length",
            json!([css]),
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    fn text(&self, css: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null",
            json!([css]),
        )
        .as_str()
        .map(str::to_string)
    }

    /// Waits until `css` matches at least one element.
    fn wait_for(&self, css: &str, timeout: Duration, what: &str) {
        let found = wait_for(timeout, || (self.count(css) > 0).then_some(()));
        assert!(found.is_some(), "{what}: no {css} within {timeout:?}");
    }

    fn accept_dialog(&self) {
        let done = wait_for(Duration::from_secs(10), || {
            let res: Value = self
                .http
                .post(format!("{}/alert/accept", self.base))
                .json(&json!({}))
                .send()
                .ok()?
                .json()
                .ok()?;
            res["value"]["error"].is_null().then_some(())
        });
        assert!(done.is_some(), "no confirmation dialog to accept");
    }

    /// The top of the page at 1366x768, as a user first sees the tab.
    fn screenshot(&self, name: &str) {
        self.js("window.scrollTo(0, 0)", json!([]));
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = base64_decode(b64.as_str().unwrap());
        let dir = artifacts();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Errors the page recorded (its own hooks) and SEVERE entries of
    /// Chromium's console log (failed loads included), when chromedriver
    /// serves that log.
    fn console_errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .js(
                "return window.__plexiErrors || ['no error hook: app.js did not run']",
                json!([]),
            )
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect();
        if let Ok(res) = self
            .http
            .post(format!("{}/se/log", self.base))
            .json(&json!({"type": "browser"}))
            .send()
        {
            let v: Value = res.json().unwrap_or_default();
            for entry in v["value"].as_array().into_iter().flatten() {
                if entry["level"] == "SEVERE" {
                    errors.push(format!("console: {}", entry["message"]));
                }
            }
        }
        errors
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/panel-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Three nodes in two regions, each at a city.
fn start_cluster(root: &Path, public_key: &str) -> Vec<TestNode> {
    let fast = FAST.replace("max_object_mib: 8", "max_object_mib: 128");
    let places = [
        ("s1", "eu", "eu-a", 48.86, 2.35),
        ("s2", "eu", "eu-b", 52.52, 13.40),
        ("s3", "us", "us-a", 40.71, -74.01),
    ];
    let mut nodes: Vec<TestNode> = Vec::new();
    for (name, region, zone, lat, lon) in places {
        let config = format!(
            "{fast}cluster_updates:\n  release_public_keys: [\"{public_key}\"]\n  rolling_update_delay_seconds: 1\n  health_check_timeout_seconds: 30\n  rollback_timeout_seconds: 120\nnode:\n  location: {{lat: {lat}, lon: {lon}}}\n"
        );
        let bootstrap = nodes
            .first()
            .map(|f| vec![f.p2p.clone()])
            .unwrap_or_default();
        nodes.push(TestNode::spawn(
            root,
            NodeSpec {
                name,
                bootstrap,
                region,
                zone,
                config: Some(&config),
            },
        ));
    }
    assert!(
        common::all_see(&nodes, 3, Duration::from_secs(20)),
        "cluster of 3 did not converge"
    );
    nodes
}

fn api_json(node: &TestNode, path: &str) -> Value {
    node.get_json(path)
}

fn sign_in(b: &Browser, api: &str, token: &str, role: &str) {
    b.goto(&format!("{api}/"));
    b.wait_for("#token", UI_TIMEOUT, "sign-in form");
    b.type_into("#token", token);
    b.click("#signin-form button[type=submit]");
    let shown = wait_for(UI_TIMEOUT, || {
        b.text("#whoami")
            .filter(|t| t.contains(&format!("({role})")))
    });
    assert!(shown.is_some(), "sign-in as {role} did not show the role");
}

fn select_tab(b: &Browser, tab: &str) {
    b.click(&format!("#tab-{tab}"));
    let on = wait_for(UI_TIMEOUT, || {
        (b.count(&format!("#view-{tab}:not([hidden])")) == 1).then_some(())
    });
    assert!(on.is_some(), "tab {tab} did not open");
}

#[test]
fn panel_in_a_real_browser() {
    let driver = Driver::start();
    // The second build compiles while the cluster starts.
    let second = std::thread::spawn(|| build_version("9.1.0", ""));
    let root = tempfile::tempdir().unwrap();
    let public_key = release_keygen(root.path());
    let mut nodes = start_cluster(root.path(), &public_key);
    let api = nodes[0].api.clone();

    // The page and its assets are public, with their security headers.
    let page = reqwest::blocking::get(format!("{api}/")).unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let js = reqwest::blocking::get(format!("{api}/panel/app.js")).unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        reqwest::blocking::get(format!("{api}/panel/nope.js"))
            .unwrap()
            .status(),
        404
    );

    let b = Browser::open(&driver);
    sign_in(&b, &api, ADMIN, "admin");
    // Set once: if the page reloads, the mark is gone.
    b.js("window.__noReload = 'kept'", json!([]));

    // Nodes: three alive, grouped by region and zone, with health checks.
    b.wait_for("#node-groups", UI_TIMEOUT, "nodes view");
    let three = wait_for(UI_TIMEOUT, || {
        (b.count("tr[data-node][data-status=alive]") == 3).then_some(())
    });
    assert!(three.is_some(), "the Nodes tab does not list 3 alive nodes");
    assert_eq!(
        b.count("#node-groups > .group"),
        3,
        "one group per region/zone"
    );
    b.wait_for(
        "tr[data-node=s2] ul.checks li",
        UI_TIMEOUT,
        "health checks of s2",
    );
    b.screenshot("nodes");

    // Storage: upload from the page, then find it with the object browser.
    select_tab(&b, "storage");
    let file = root.path().join("hello-panel.txt");
    std::fs::write(&file, b"hello from the panel test").unwrap();
    let el = b.find("#upload-file");
    b.post(
        &format!("/element/{el}/value"),
        json!({"text": file.display().to_string()}),
    );
    b.type_into("#upload-id", "panel-hello.txt");
    b.click("#upload-submit");
    b.wait_for(
        "[data-uploaded='panel-hello.txt']",
        UI_TIMEOUT,
        "upload from the page",
    );
    let stored = nodes[0].fetch("panel-hello.txt", "");
    assert_eq!(stored.status(), 200);
    assert_eq!(
        stored.bytes().unwrap().as_ref(),
        b"hello from the panel test"
    );
    // The overview cards show the API's numbers (polled: both may move).
    let same = wait_for(UI_TIMEOUT, || {
        b.js("refreshStorage()", json!([]));
        let ov = api_json(&nodes[0], "/api/v1/clustering/storage/overview");
        let card = |k: &str| b.text(&format!("[data-stat={k}] .v"));
        let objects =
            card("total_data_objects")?.parse::<u64>().ok() == ov["total_data_objects"].as_u64();
        let rf =
            card("replication_factor")?.parse::<u64>().ok() == ov["replication_factor"].as_u64();
        let healthy =
            card("healthy_nodes")? == format!("{} / {}", ov["healthy_nodes"], ov["total_nodes"]);
        let strategy = card("storage_strategy")? == ov["storage_strategy"].as_str()?;
        (objects && rf && healthy && strategy && ov["total_data_objects"].as_u64()? >= 1)
            .then_some(())
    });
    assert!(
        same.is_some(),
        "the Storage cards do not match the API overview"
    );
    assert_eq!(
        b.count("[data-chart=map] circle[data-node]"),
        3,
        "3 nodes on the map"
    );
    assert_eq!(b.count("tr[data-storage-node]"), 3);
    b.screenshot("storage");

    // Updates: publish the second build, plan a rolling update of s2 and s3
    // from the form (the node serving the page stays up), execute, watch.
    let second = second.join().expect("second build");
    release_publish(&api, root.path(), &second, "9.1.0", &[]);
    select_tab(&b, "updates");
    b.wait_for(
        "#plan-version option[value='9.1.0']",
        UI_TIMEOUT,
        "the release in the plan form",
    );
    b.wait_for("tr[data-release='9.1.0']", UI_TIMEOUT, "the release listed");
    assert!(b
        .text("tr[data-release='9.1.0']")
        .unwrap()
        .contains("trusted"));
    b.click("#plan-version option[value='9.1.0']");
    b.click("#plan-strategy option[value=rolling]");
    b.wait_for(
        "#plan-nodes option[value=s3]",
        UI_TIMEOUT,
        "nodes to choose",
    );
    // Ctrl-less multi-select through the DOM: select exactly s2 and s3.
    b.js(
        "for (const o of document.querySelectorAll('#plan-nodes option')) o.selected = ['s2','s3'].includes(o.value)",
        json!([]),
    );
    b.click("#plan-force");
    b.click("#plan-submit");
    b.wait_for("#plan-execute", UI_TIMEOUT, "the plan before Execute");
    let plan = b.text("#plan-result").unwrap();
    assert!(
        plan.contains("Batches") && plan.contains("s2") && plan.contains("s3"),
        "{plan}"
    );
    b.click("#plan-execute");
    let done = wait_for(UPDATE_TIMEOUT, || {
        let overall = b.text("#active-op [data-status=completed] .overall")?;
        (overall.trim() == "100 %").then_some(())
    });
    assert!(
        done.is_some(),
        "the page did not show the update at 100 %: {:?}",
        b.text("#active-op")
    );
    let versions = wait_for(UI_TIMEOUT, || {
        let nodes = api_json(&nodes[0], "/api/v1/clustering/nodes")["nodes"].clone();
        let updated = nodes
            .as_array()?
            .iter()
            .filter(|n| n["version"] == "9.1.0")
            .count();
        (updated == 2).then_some(())
    });
    assert!(versions.is_some(), "s2 and s3 do not run 9.1.0");
    b.screenshot("updates");

    // One-click rollback from the page.
    b.click("#active-op button[data-action=rollback]");
    b.accept_dialog();
    let back = wait_for(UPDATE_TIMEOUT, || {
        (b.count("#active-op [data-status=rolled_back], #history .s-rolled_back") > 0).then_some(())
    });
    assert!(
        back.is_some(),
        "rollback did not finish on the page: {:?}",
        b.text("#active-op")
    );
    b.screenshot("updates-rolled-back");

    // The update's alerts, the same on every node: started (resolved once
    // it ended) and rolled back (active), keyed by the operation. Each
    // node is asked on its own API (the updated ones restarted on new
    // ports: their addresses come from the membership).
    let op_id = api_json(&nodes[0], "/api/v1/clustering/updates/history?limit=1")["operations"][0]
        ["operation_id"]
        .as_str()
        .expect("the operation in the history")
        .to_string();
    let alerts_of_all = || -> Vec<Option<Value>> {
        let members = nodes[0].try_get_json("/api/v1/clustering/nodes");
        let addrs: Vec<String> = members
            .iter()
            .flat_map(|m| m["nodes"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n["api_address"].as_str().map(String::from))
            .collect();
        if addrs.len() != 3 {
            return vec![None];
        }
        addrs
            .iter()
            .map(|a| {
                let r = reqwest::blocking::Client::new()
                    .get(format!("http://{a}/api/v1/clustering/alerts"))
                    .bearer_auth(READ)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .ok()?;
                r.json().ok()
            })
            .collect()
    };
    let update_alerts = wait_for(UI_TIMEOUT, || {
        let ids: Vec<Option<String>> = alerts_of_all()
            .into_iter()
            .map(|list| {
                let list = list?;
                let rolled = list["active"].as_array()?.iter().find(|a| {
                    a["kind"] == "update_rolled_back" && a["subject"] == op_id.as_str()
                })?;
                let started_resolved = list["recent"].as_array()?.iter().any(|a| {
                    a["kind"] == "update_started"
                        && a["subject"] == op_id.as_str()
                        && a["state"] == "resolved"
                });
                started_resolved.then(|| rolled["alert_id"].as_str().map(String::from))?
            })
            .collect();
        (ids.len() == 3 && ids.iter().all(|i| i.is_some()) && ids.windows(2).all(|w| w[0] == w[1]))
            .then_some(ids)
    });
    assert!(
        update_alerts.is_some(),
        "the update's alerts differ between nodes or are missing: {:?}",
        alerts_of_all()
    );

    // The object browser finds the object uploaded from the page.
    select_tab(&b, "storage");
    b.type_into("#browse-prefix", "panel-");
    b.click("#browse-list");
    b.wait_for(
        "tr[data-object='panel-hello.txt']",
        UI_TIMEOUT,
        "the uploaded object in the browser",
    );
    b.click("tr[data-object='panel-hello.txt'] button");
    b.wait_for(
        "[data-info='panel-hello.txt'] tbody tr",
        UI_TIMEOUT,
        "the object's replica map",
    );

    b.screenshot("storage-objects");

    // A SIGKILLed node turns dead and raises an alert, without a reload.
    select_tab(&b, "nodes");
    nodes[2].kill();
    b.wait_for(
        "tr[data-node=s3][data-status=dead]",
        UI_TIMEOUT,
        "s3 dead on the page",
    );
    // The alert's subject names the node (by name or peer id).
    let peer3 = nodes[2].peer_id.clone();
    let alerted = wait_for(UI_TIMEOUT, || {
        b.js(
            "return [...document.querySelectorAll('#alerts tr[data-alert^=member_]')]
               .some((r) => [arguments[0], arguments[1]].some((n) => r.dataset.subject.includes(n)))",
            json!(["s3", peer3]),
        )
        .as_bool()
        .filter(|x| *x)
    });
    assert!(
        alerted.is_some(),
        "no member alert for s3 on the page: {:?}",
        b.text("#alerts")
    );
    assert_eq!(
        b.js("return window.__noReload", json!([])),
        "kept",
        "the page reloaded"
    );
    b.screenshot("nodes-alert");

    // Back: alive again on the page and its member alert no longer active.
    let seed = nodes[0].p2p.clone();
    nodes[2].restart(vec![seed]);
    b.wait_for(
        "tr[data-node=s3][data-status=alive]",
        UI_TIMEOUT,
        "s3 alive again on the page",
    );
    let peer3 = nodes[2].peer_id.clone();
    let cleared = wait_for(UI_TIMEOUT, || {
        b.js(
            "return ![...document.querySelectorAll('#alerts tr[data-alert^=member_]')]
               .some((r) => [arguments[0], arguments[1]].some((n) => r.dataset.subject.includes(n)))",
            json!(["s3", peer3]),
        )
        .as_bool()
        .filter(|x| *x)
    });
    assert!(
        cleared.is_some(),
        "s3's alert stayed active: {:?}",
        b.text("#alerts")
    );
    assert_eq!(
        b.js("return window.__noReload", json!([])),
        "kept",
        "the page reloaded"
    );

    let errors = b.console_errors();
    assert!(
        errors.is_empty(),
        "the admin's page logged errors: {errors:#?}"
    );
    drop(b);

    // A read token sees everything and no action button.
    let r = Browser::open(&driver);
    sign_in(&r, &api, READ, "read");
    for tab in ["nodes", "updates", "storage"] {
        select_tab(&r, tab);
        r.wait_for("tr", UI_TIMEOUT, "read view");
        assert_eq!(
            r.count("[data-action], .admin-only, #upload-form, #plan-form"),
            0,
            "a read token sees an action on {tab}"
        );
        r.screenshot(&format!("read-{tab}"));
    }
    let errors = r.console_errors();
    assert!(
        errors.is_empty(),
        "the reader's page logged errors: {errors:#?}"
    );

    // s1 alone: the page says it lost its majority and what it cannot do.
    select_tab(&r, "nodes");
    nodes[1].kill();
    nodes[2].kill();
    let banner = wait_for(UI_TIMEOUT, || {
        r.js(
            "const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : null",
            json!([]),
        )
        .as_str()
        .map(String::from)
    });
    let banner = banner.expect("no lost-majority banner with 1 of 3 nodes alive");
    assert!(
        banner.contains("lost its majority") && banner.contains("Updates"),
        "banner: {banner}"
    );
    r.screenshot("lost-majority");
}
