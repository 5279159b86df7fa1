//! The binary validates its config: 0 when valid, 64 naming the key when not.

use std::process::Command;

fn run(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dmsguard-remediator"))
        .arg("--check-config")
        .arg("--config")
        .arg(&path)
        .env("SRC_PW", "secret-value")
        .output()
        .unwrap()
}

const VALID: &str = r#"
[source]
url = "postgresql://u@127.0.0.1:1/source"
password = "${SRC_PW}"
[redshift]
url = "postgresql://u@127.0.0.1:1/redshift"
[remediator.ledger]
url = "postgresql://u@127.0.0.1:1/dmsguard"
"#;

#[test]
fn valid_config_passes() {
    let out = run(VALID);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_ledger_exits_64_naming_the_key() {
    let without = VALID.replace(
        "[remediator.ledger]\nurl = \"postgresql://u@127.0.0.1:1/dmsguard\"\n",
        "",
    );
    assert_ne!(without, VALID);
    let out = run(&without);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("remediator.ledger") && err.contains("[source]"),
        "{err}"
    );
}

#[test]
fn unknown_key_exits_64_naming_it() {
    let out = run(&format!("{VALID}\n[exporter]\nlisten_addr = \"x\"\n"));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn bad_value_exits_64_and_never_prints_secrets() {
    let out = run(&format!(
        "{VALID}\n[exporter.gaps]\ninterval = \"soon\"\ntimeout = \"1m\"\n"
    ));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exporter.gaps.interval"), "{err}");
    assert!(!err.contains("secret-value"), "{err}");
}
