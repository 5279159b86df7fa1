//! The binary validates its config: 0 when valid, 64 naming the key when not.

use std::process::Command;

fn run(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dmsguard.toml");
    std::fs::write(&path, config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_dmsguard-exporter"))
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

#[test]
fn preflight_exits_1_with_a_checklist_naming_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dmsguard.toml");
    // Nothing listens on port 1; AWS is a closed local port, so no real AWS is called.
    std::fs::write(
        &path,
        format!(
            "{VALID}connect_timeout = \"2s\"\n[aws]\nendpoint_url = \"http://127.0.0.1:1\"\nmax_attempts = 1\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmsguard-exporter"))
        .arg("--preflight")
        .arg("--config")
        .arg(&path)
        .env("SRC_PW", "secret-value")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "[FAIL] source connection: cannot connect to 127.0.0.1:1/source (sslmode=prefer)",
        "[FAIL] redshift connection: ",
        "[FAIL] AWS identity: ",
        "fix: ",
        "3 checks, 3 failed",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("secret-value"), "{text}");
}
