//! The HTTP API, driven with curl: authentication, bad requests, metrics.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use holdfast_tests::Cluster;

/// `curl` a node; returns (HTTP status, body).
fn curl(
    c: &Cluster,
    i: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://{}{path}", c.nodes[i].api);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "20",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        &url,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    if let Some(b) = body {
        std::fs::write(file.path(), b).expect("write body");
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.path().display()));
    }
    let out = cmd.output().expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn proposals_total(c: &Cluster, i: usize) -> f64 {
    metric_sums(&c.metrics(i))
        .get("holdfast_proposals_total")
        .copied()
        .unwrap_or(0.0)
}

/// Sums each metric's samples over all label sets: name -> total.
fn metric_sums(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name_labels, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
        let name = name_labels
            .split('{')
            .next()
            .unwrap_or(name_labels)
            .to_string();
        *sums.entry(name).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    sums
}

#[test]
fn calls_without_the_admin_token_get_401_and_change_nothing() {
    let c = Cluster::start(2);
    c.wait_converged(0, 2);
    let before = proposals_total(&c, 0);
    let routes = [
        ("GET", "/api/v1/cluster", None),
        ("GET", "/metrics", None),
        ("POST", "/api/v1/tokens", Some("{}")),
        ("DELETE", "/api/v1/nodes/n2", None),
    ];
    for (method, path, body) in routes {
        for token in [None, Some("wrong-token"), Some("")] {
            let (code, text) = curl(&c, 0, method, path, token, body);
            assert_eq!(
                code, 401,
                "{method} {path} with {token:?} must be refused; got {code} {text}"
            );
            assert!(text.contains("\"error\""), "errors are JSON: {text}");
        }
    }
    // Nothing changed: n2 is still a member and no proposal was made.
    let s = c.wait_converged(0, 2);
    assert!(s.nodes.iter().any(|n| n.name == "n2"));
    assert_eq!(proposals_total(&c, 0), before);
    // Health needs no token.
    let (code, body) = curl(&c, 0, "GET", "/healthz", None, None);
    assert_eq!((code, body.trim()), (200, "ok"));
    // With the token the same calls work.
    let (code, body) = curl(&c, 0, "GET", "/api/v1/cluster", Some(&c.admin_token), None);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["cluster_id", "leader", "term", "nodes"] {
        assert!(v.get(key).is_some(), "status JSON lacks {key}: {body}");
    }
}

#[test]
fn malformed_requests_get_a_clear_error() {
    let c = Cluster::start(1);
    c.wait_converged(0, 1);
    let t = Some(c.admin_token.as_str());
    let check = |method: &str, path: &str, body: Option<&str>, want: u16, needle: &str| {
        let (code, text) = curl(&c, 0, method, path, t, body);
        assert_eq!(code, want, "{method} {path} {body:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("error body must be JSON: {text}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle) && !msg.contains('\n'),
            "{msg:?} should mention {needle:?} on one line"
        );
    };
    check(
        "POST",
        "/api/v1/tokens",
        Some("{not json"),
        400,
        "malformed",
    );
    check(
        "POST",
        "/api/v1/tokens",
        Some(r#"{"ttl_s": 0}"#),
        400,
        "ttl_s",
    );
    check(
        "POST",
        "/api/v1/tokens",
        Some(r#"{"uses": 0}"#),
        400,
        "uses",
    );
    check(
        "POST",
        "/api/v1/tokens",
        Some(r#"{"bogus": 1}"#),
        400,
        "unknown field",
    );
    check(
        "POST",
        "/api/v1/tokens",
        Some(r#"{"ttl_s": 99999999999}"#),
        400,
        "ttl_s",
    );
    check("DELETE", "/api/v1/nodes/UPPER", None, 400, "node name");
    check("DELETE", "/api/v1/nodes/ghost", None, 404, "no node named");
    check("DELETE", "/api/v1/nodes/n1", None, 409, "last voter");
    check("GET", "/api/v1/nope", None, 404, "no such API route");
    let huge = format!("{{\"ttl_s\": 60, \"pad\": \"{}\"}}", "x".repeat(200_000));
    let (code, _) = curl(&c, 0, "POST", "/api/v1/tokens", t, Some(&huge));
    assert_eq!(code, 413, "bodies over the limit are refused");
    // The node is still fine.
    c.wait_converged(0, 1);
}

#[test]
fn every_declared_metric_is_updated() {
    let mut c = Cluster::start(3);
    c.wait_converged(0, 3);
    // Exercise what the counters count: API calls, a refused connection,
    // and a dead peer (frames to it are dropped).
    let other = Cluster::start(1);
    let _ = holdfast_tests::holdfast(
        &[
            "debug",
            "probe",
            "--peer",
            &c.nodes[0].peer.to_string(),
            "--data",
            &other.nodes[0].data.display().to_string(),
        ],
        &[],
    );
    let _ = c.cli(0, &["token", "create"]);
    let _ = curl(&c, 0, "GET", "/api/v1/cluster", None, None);
    c.nodes[2].kill9();
    std::thread::sleep(Duration::from_secs(2));

    // A metric moved if any live node shows a sample above zero. Frames to
    // the dead node are dropped once its QUIC connection times out, so poll.
    let unmoved = || -> Vec<String> {
        let texts: Vec<String> = (0..2).map(|i| c.metrics(i)).collect();
        let declared: Vec<String> = texts[0]
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect();
        assert!(
            declared.len() >= 10,
            "too few metrics declared: {declared:?}"
        );
        let mut totals: BTreeMap<String, f64> = BTreeMap::new();
        for t in &texts {
            for (k, v) in metric_sums(t) {
                *totals.entry(k).or_insert(0.0) += v;
            }
        }
        let value = |name: &str| {
            totals
                .get(name)
                .or_else(|| totals.get(&format!("{name}_total")))
                .copied()
                .unwrap_or(0.0)
        };
        declared
            .into_iter()
            .filter(|name| {
                if name == "holdfast_raft_is_leader" {
                    value(name) != 1.0
                } else {
                    value(name) <= 0.0
                }
            })
            .collect()
    };
    let mut last = Vec::new();
    let ok = (0..150).any(|_| {
        last = unmoved();
        std::thread::sleep(Duration::from_millis(200));
        last.is_empty()
    });
    assert!(
        ok,
        "declared metrics that never moved (or not exactly one leader): {last:?}"
    );
}
