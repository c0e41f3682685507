//! The HTTP contract: /version, /publish, /healthz.

use sha2::{Digest, Sha256};

use crate::helper::AppBuilder;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn version_reports_config_version_digest_and_pid() {
    let app = AppBuilder::new()
        .config("version = \"1.4.2\"\nmessage_prefix = \"x\"\n")
        .spawn();
    app.wait_healthy();
    let v = app.get("/version").unwrap();
    assert_eq!(v.status, 200);
    let bytes = std::fs::read(app.config_path()).unwrap();
    assert_eq!(
        v.json(),
        serde_json::json!({
            "version": "1.4.2",
            "config_digest": format!("sha256:{}", sha256_hex(&bytes)),
            "pid": app.pid(),
        })
    );
    let h = app.get("/healthz").unwrap();
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    // The startup log line carries the same facts.
    let log = app.stderr();
    assert!(log.contains("demo-app started version=1.4.2"), "{log}");
    assert!(log.contains(&format!("pid={}", app.pid())), "{log}");
    assert!(
        log.contains(&format!("listen=127.0.0.1:{}", app.port)),
        "{log}"
    );
}

#[test]
fn version_falls_back_to_the_environment() {
    let app = AppBuilder::new()
        .config("")
        .env("LOCKSTEP_RELEASE_VERSION", "9.9.9")
        .spawn();
    app.wait_healthy();
    assert_eq!(app.get("/version").unwrap().json()["version"], "9.9.9");
}

#[test]
fn publish_echoes_body_or_query_with_prefix() {
    let app = AppBuilder::new()
        .config("version = \"2\"\nmessage_prefix = \"[v2] \"\n")
        .spawn();
    app.wait_healthy();

    let r = app.post("/publish", "hello world").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"published": "[v2] hello world", "by_pid": app.pid(), "version": "2"})
    );

    let r = app.post("/publish?message=from-query", "").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["published"], "[v2] from-query");

    let r = app.post("/publish", "").unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("no message")
    );

    let r = app.get("/publish?message=x").unwrap();
    assert_eq!(r.status, 405, "publish is POST only: {r:?}");
}
