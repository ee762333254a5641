//! The cluster's plugin store, through the real CLI against real node
//! processes: a plugin installed through one node runs on every node, hot
//! swaps and rollbacks reach every node, a node that was down catches up,
//! bad components are refused with one line and nothing stored, and an
//! install without a majority fails in bounded time.

use std::path::PathBuf;
use std::time::Duration;

use holdfast_tests::{assert_one_line_error, repo_root, stdout, wait_until, Cluster};
use serde_json::Value;

/// Where scripts/build-plugins.sh put the built plugins (`./test` runs it).
fn built(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let path = target.join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing; build the plugins first with scripts/build-plugins.sh",
        path.display()
    );
    path
}

fn input(world: &str) -> String {
    format!(
        "{}/plugins/examples/inputs/{world}.json",
        repo_root().display()
    )
}

fn list(c: &Cluster, i: usize) -> Vec<Value> {
    let o = c.cli(i, &["plugin", "list", "--json"]);
    assert!(
        o.status.success(),
        "plugin list: {}",
        holdfast_tests::stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).expect("plugin list --json is JSON")
}

/// Installs `wasm` as `name` through node `i`, with `extra` flags and a
/// deadline generous enough for a debug build on a busy machine (the
/// router default, 1 ms, is for release builds).
fn install(c: &Cluster, i: usize, wasm: &str, name: &str, extra: &[&str]) -> std::process::Output {
    let file = built(wasm);
    let mut args = vec![
        "plugin",
        "install",
        file.to_str().unwrap(),
        "--name",
        name,
        "--deadline-ms",
        "1000",
    ];
    args.extend_from_slice(extra);
    c.cli(i, &args)
}

/// The `x-tag` header the tagging plugin adds, and the version that
/// answered, from one `plugin test` call on node `i`.
fn tag_on(c: &Cluster, i: usize, name: &str) -> Option<(String, u64)> {
    let o = c.cli(i, &["plugin", "test", name, "--input", &input("router")]);
    if !o.status.success() {
        return None;
    }
    let answer: Value = serde_json::from_str(&stdout(&o)).ok()?;
    assert!(answer["failure"].is_null(), "the plugin failed: {answer}");
    let tag = answer["decision"]["Forward"]["add_headers"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == "x-tag")?["value"]
        .as_str()?
        .to_string();
    Some((tag, answer["version"].as_u64()?))
}

/// Waits until every running node answers with `tag` from `version`.
fn wait_everywhere(c: &Cluster, nodes: &[usize], name: &str, tag: &str, version: u64) {
    for &i in nodes {
        wait_until(
            &format!("{} to run {name} version {version}", c.nodes[i].name),
            Duration::from_secs(60),
            || (tag_on(c, i, name) == Some((tag.to_string(), version))).then_some(()),
        );
        let row = list(c, i)
            .into_iter()
            .find(|p| p["name"] == name)
            .expect("listed");
        assert_eq!(row["version"], version, "{row}");
        assert_eq!(row["state"], "active", "{row}");
    }
}

#[test]
fn a_plugin_installed_through_one_node_runs_on_every_node() {
    let mut c = Cluster::start(3);
    c.wait_converged(0, 3);
    let all = [0, 1, 2];

    // Install through n1; n2 and n3 run it too, the same bytes.
    let o = install(
        &c,
        0,
        "test-tag",
        "web",
        &["--config", "tag=v1", "--world", "router"],
    );
    assert!(
        o.status.success(),
        "install: {}",
        holdfast_tests::stderr(&o)
    );
    assert!(stdout(&o).contains("version 1"), "{}", stdout(&o));
    wait_everywhere(&c, &all, "web", "v1", 1);
    let hash = blake3::hash(&std::fs::read(built("test-tag")).unwrap())
        .to_hex()
        .to_string();
    for i in all {
        let rows = list(&c, i);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let p = &rows[0];
        assert_eq!(p["hash"], hash.as_str(), "{p}");
        assert_eq!(p["world"], "router");
        assert_eq!(p["grants"], serde_json::json!([]));
        assert!(p["calls"].as_u64().unwrap() >= 1, "{p}");
        for key in ["traps", "timeouts"] {
            assert_eq!(p[key], 0, "{p}");
        }
    }

    // Each node exports its own per-plugin metrics.
    let metrics = c.metrics(2);
    let calls: f64 = metrics
        .lines()
        .find(|l| l.starts_with("holdfast_plugin_calls_total{plugin=\"web\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no plugin call counter in:\n{metrics}"));
    assert!(calls >= 1.0, "{calls}");
    for needle in [
        "holdfast_plugin_call_seconds_bucket{le=\"+Inf\",plugin=\"web\"}",
        "holdfast_plugin_quarantined{plugin=\"web\"} 0",
        "holdfast_plugin_traps_total{plugin=\"web\"} 0",
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }

    // Hot swap through n2: every node moves to version 2.
    let o = install(&c, 1, "test-tag", "web", &["--config", "tag=v2"]);
    assert!(o.status.success(), "swap: {}", holdfast_tests::stderr(&o));
    wait_everywhere(&c, &all, "web", "v2", 2);
    assert_eq!(list(&c, 2)[0]["previous_version"], 1);

    // Rollback through n3: every node is back on version 1.
    let o = c.cli(2, &["plugin", "rollback", "web"]);
    assert!(
        o.status.success(),
        "rollback: {}",
        holdfast_tests::stderr(&o)
    );
    wait_everywhere(&c, &all, "web", "v1", 1);
    assert_eq!(list(&c, 0)[0]["previous_version"], 2);

    // A node that was down while version 3 went in fetches it when it
    // comes back, and reloads every plugin after its restart.
    c.nodes[2].kill9();
    let o = install(&c, 0, "test-tag", "web", &["--config", "tag=v3"]);
    assert!(
        o.status.success(),
        "install with n3 down: {}",
        holdfast_tests::stderr(&o)
    );
    wait_everywhere(&c, &[0, 1], "web", "v3", 3);
    c.nodes[2].restart();
    c.wait_api(2);
    wait_everywhere(&c, &all, "web", "v3", 3);

    // Removal through n3 reaches every node.
    let o = c.cli(2, &["plugin", "remove", "web"]);
    assert!(o.status.success(), "remove: {}", holdfast_tests::stderr(&o));
    for i in all {
        wait_until("the plugin to go", Duration::from_secs(30), || {
            list(&c, i).is_empty().then_some(())
        });
        let o = c.cli(i, &["plugin", "test", "web", "--input", &input("router")]);
        assert_one_line_error(&o, "no plugin named \"web\"");
    }
    let o = c.cli(0, &["plugin", "rollback", "web"]);
    assert_one_line_error(&o, "no plugin named \"web\"");

    // A name's numbers go on after a removal, so a number never names two
    // components.
    // (On a loaded machine the proposal may time out with its outcome
    // unknown; asking again may then make one more version.)
    let version = wait_until("the reinstall", Duration::from_secs(90), || {
        let o = install(&c, 0, "router", "web", &[]);
        let out = stdout(&o);
        if !o.status.success() {
            let err = holdfast_tests::stderr(&o);
            assert!(err.contains("outcome is unknown"), "reinstall: {err}");
            return None;
        }
        let n: u64 = out
            .split("version ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()?;
        Some(n)
    });
    assert!(version >= 4, "version {version} after 3 earlier ones");
    // The bundled router answers the sample input on every node.
    for i in all {
        wait_until(
            "the bundled router everywhere",
            Duration::from_secs(60),
            || {
                let o = c.cli(i, &["plugin", "test", "web", "--input", &input("router")]);
                let answer: Value = serde_json::from_str(&stdout(&o)).ok()?;
                (answer["version"] == version && answer["failure"].is_null())
                    .then_some(answer["decision"]["Forward"]["pool"].clone())
            },
        );
    }
}

#[test]
fn bad_components_are_refused_with_one_line_and_nothing_is_stored() {
    let c = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    let core = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1, no sections.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let router = built("router");
    let fs_plugin = built("test-fs");
    let sockets_plugin = built("test-sockets");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![path(&garbage)], "not a WebAssembly"),
        (vec![path(&core)], "core WebAssembly module"),
        (
            vec![path(&router), "--world".into(), "sql-router".into()],
            "sql-router",
        ),
        (
            vec![path(&fs_plugin), "--grant".into(), "clocks".into()],
            "import `wasi:filesystem/",
        ),
        (
            vec![
                path(&sockets_plugin),
                "--grant".into(),
                "clocks".into(),
                "--grant".into(),
                "filesystem".into(),
            ],
            "import `wasi:sockets/",
        ),
        (
            vec![path(&router), "--grant".into(), "time".into()],
            "unknown capability",
        ),
        (
            vec![path(&router), "--deadline-ms".into(), "999999".into()],
            "deadline",
        ),
        (
            vec![path(&router), "--config".into(), "novalue".into()],
            "KEY=VALUE",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["plugin", "install"];
        full.extend(args.iter().map(String::as_str));
        full.extend(["--name", "bad"]);
        let o = c.cli(0, &full);
        let line = assert_one_line_error(&o, needle);
        eprintln!("refused as expected: {line}");
        assert!(list(&c, 0).is_empty(), "a refused install stored something");
    }
    let o = c.cli(
        0,
        &[
            "plugin",
            "install",
            path(&router).as_str(),
            "--name",
            "Bad_Name",
        ],
    );
    assert_one_line_error(&o, "plugin name");
    // The same component with its grant is taken.
    let o = c.cli(
        0,
        &[
            "plugin",
            "install",
            path(&fs_plugin).as_str(),
            "--name",
            "reader",
            "--grant",
            "filesystem",
            "--grant",
            "clocks",
        ],
    );
    assert!(
        o.status.success(),
        "granted install: {}",
        holdfast_tests::stderr(&o)
    );
    // A name keeps its world.
    let o = c.cli(
        0,
        &[
            "plugin",
            "install",
            built("sql-router").to_str().unwrap(),
            "--name",
            "reader",
        ],
    );
    assert_one_line_error(&o, "remove it first");
    // A test input that does not fit the world is refused, not a crash.
    let o = c.cli(
        0,
        &["plugin", "test", "reader", "--input", &input("sql-router")],
    );
    assert_one_line_error(&o, "input");
    assert_eq!(list(&c, 0).len(), 1);
}

#[test]
fn an_install_without_a_majority_fails_in_bounded_time_and_stores_nothing() {
    let mut c = Cluster::start(3);
    c.wait_converged(0, 3);
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let started = std::time::Instant::now();
    let o = install(&c, 0, "router", "web", &[]);
    let took = started.elapsed();
    let line = assert_one_line_error(&o, "voting nodes");
    eprintln!("refused after {took:?}: {line}");
    assert!(list(&c, 0).is_empty());
}

#[test]
fn javascript_and_python_plugins_install_through_the_cli_on_every_node() {
    let c = Cluster::start(3);
    c.wait_converged(0, 3);
    // Interpreter-sized components: many pieces to copy, long to compile.
    for (wasm, name) in [("js-router", "js"), ("py-router", "py")] {
        let started = std::time::Instant::now();
        let o = install(&c, 0, wasm, name, &["--world", "router"]);
        assert!(
            o.status.success(),
            "install {wasm}: {}",
            holdfast_tests::stderr(&o)
        );
        eprintln!("{wasm}: installed through n1 in {:?}", started.elapsed());
        let hash = blake3::hash(&std::fs::read(built(wasm)).unwrap())
            .to_hex()
            .to_string();
        for i in [2, 1] {
            let answer = wait_until(
                &format!("{name} on {}", c.nodes[i].name),
                Duration::from_secs(300),
                || {
                    let o = c.cli(i, &["plugin", "test", name, "--input", &input("router")]);
                    serde_json::from_str::<Value>(&stdout(&o)).ok()
                },
            );
            assert!(
                answer["failure"].is_null(),
                "{wasm} failed on {}: {answer}",
                c.nodes[i].name
            );
            assert!(answer["decision"].get("Forward").is_some(), "{answer}");
            let row = list(&c, i).into_iter().find(|p| p["name"] == name).unwrap();
            assert_eq!(row["hash"], hash.as_str());
            eprintln!(
                "{wasm}: answering on {} after {:?}",
                c.nodes[i].name,
                started.elapsed()
            );
        }
    }
}
