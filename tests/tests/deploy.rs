//! The installation artifacts of `deploy/`, checked by their real consumers without building a
//! release (that is `make dist`, too slow for CI): the systemd units pass `systemd-analyze
//! verify` and score as hardened in `systemd-analyze security`, the Dockerfile passes hadolint,
//! and the Kubernetes example's documents are what it promises, its config accepted by
//! dmsguard's own loader.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate lives in the workspace")
        .to_owned()
}

const UNITS: [&str; 2] = ["dmsguard-exporter", "dmsguard-remediator"];

/// The unit with its binary replaced by one that exists here (`verify` checks the path).
fn unit_copy(dir: &Path, unit: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(format!("deploy/systemd/{unit}.service")))
        .expect("unit file");
    assert!(
        text.contains(&format!("ExecStart=/usr/bin/{unit} ")),
        "{text}"
    );
    let path = dir.join(format!("{unit}.service"));
    std::fs::write(
        &path,
        text.replace(&format!("/usr/bin/{unit}"), "/bin/true"),
    )
    .unwrap();
    path
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let path = unit_copy(dir.path(), unit);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );

        let text = std::fs::read_to_string(&path).unwrap();
        for line in [
            "User=dmsguard",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "Restart=on-failure",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "EnvironmentFile=-/etc/dmsguard/",
            "--config /etc/dmsguard/dmsguard.toml",
        ] {
            assert!(text.contains(line), "{unit} lacks `{line}`");
        }

        // systemd's own exposure score: 0 (locked down) to 10 (unprotected); "OK" is below 4.
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in\n{text}"));
        assert!(score <= 2.0, "{unit}: exposure {score}\n{text}");
    }
}

fn hadolint() -> PathBuf {
    let venv = std::env::var("DMSGUARD_LAB_VENV").unwrap_or_else(|_| {
        let lab = std::env::var("DMSGUARD_LAB_DIR").unwrap_or_else(|_| "/tmp/dmsguard-lab".into());
        format!("{lab}/venv")
    });
    let path = std::env::var_os("DMSGUARD_HADOLINT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&venv).join("bin/hadolint"));
    assert!(
        path.is_file(),
        "{} is missing: tests/lab/up installs hadolint-bin into the lab venv",
        path.display()
    );
    path
}

#[test]
fn dockerfile_passes_hadolint_and_runs_as_non_root_without_a_shell() {
    let dockerfile = repo().join("deploy/Dockerfile");
    let out = Command::new(hadolint())
        .arg(&dockerfile)
        .output()
        .expect("running hadolint");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert!(stages[1].contains("distroless"), "{stages:?}");
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    // Exec form only: nothing at run time needs a shell.
    for line in text
        .lines()
        .filter(|l| l.starts_with("ENTRYPOINT") || l.starts_with("CMD"))
    {
        assert!(line.contains('['), "{line}");
    }
    assert!(text.contains("--profile dist"), "stripped binaries");
}

#[derive(Deserialize)]
struct Doc {
    kind: String,
    metadata: Yaml,
    #[serde(default)]
    spec: Yaml,
    #[serde(default)]
    data: Yaml,
    #[serde(default, rename = "stringData")]
    string_data: Yaml,
}

#[test]
fn kubernetes_example_has_a_deployment_per_binary_probed_on_healthz() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/dmsguard.yaml")).unwrap();
    let docs: Vec<Doc> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Doc::deserialize(d).expect("a Kubernetes object"))
        .collect();
    let of = |kind: &'static str| docs.iter().filter(move |d| d.kind == kind);
    let name = |d: &Doc| d.metadata["name"].as_str().unwrap_or_default().to_owned();

    let deployments: Vec<&Doc> = of("Deployment").collect();
    assert_eq!(
        deployments.iter().map(|d| name(d)).collect::<Vec<_>>(),
        UNITS,
        "a Deployment per binary"
    );
    for d in &deployments {
        let pod = &d.spec["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], Yaml::Bool(true));
        let container = &pod["containers"][0];
        let binary = container["command"][0].as_str().unwrap();
        assert_eq!(binary, format!("/usr/bin/{}", name(d)));
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["path"].as_str(),
                Some("/healthz"),
                "{} {probe}",
                name(d)
            );
        }
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"],
            Yaml::Bool(true)
        );
        // The pod's labels are the ones its Service selects and the ServiceMonitor follows.
        let labels = &d.spec["template"]["metadata"]["labels"];
        let service = of("Service")
            .find(|s| name(s) == name(d))
            .unwrap_or_else(|| panic!("no Service for {}", name(d)));
        for (k, v) in service.spec["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[k.as_str().unwrap()], v);
        }
        assert_eq!(service.spec["ports"][0]["name"].as_str(), Some("metrics"));
    }
    let monitor = of("ServiceMonitor").next().expect("a ServiceMonitor");
    assert_eq!(
        monitor.spec["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    let secret = of("Secret").next().expect("a Secret");
    assert!(secret.string_data["webhook-token"].is_string());

    // The ConfigMap's dmsguard.toml is a config the binaries accept, reading every secret from
    // the mounted Secret.
    let config_map = of("ConfigMap").next().expect("a ConfigMap");
    let toml = config_map.data["dmsguard.toml"].as_str().unwrap();
    let config = dmsguard_pipeline::config::Config::from_toml(toml, &|_| None)
        .unwrap_or_else(|e| panic!("the example config: {e}"));
    let token = config.remediator.token_file.clone().expect("token_file");
    let key = token.file_name().unwrap().to_str().unwrap();
    assert!(
        secret.string_data[key].is_string(),
        "{key} is in the Secret"
    );
    assert!(config.ledger_database().is_ok());
}
