//! The Debian packages, built and installed on this machine as an operator would: cargo-deb
//! (from the lab venv) packs the binaries `cargo test` built with the packaging metadata of
//! `exporter/Cargo.toml` and `remediator/Cargo.toml`, `dpkg -i` installs both, the test writes
//! `/etc/dmsguard/dmsguard.toml` and starts each unit (with `systemctl` when systemd runs,
//! else the unit's own `ExecStart` command line as its `User=`), scrapes both, reloads both as
//! `ExecReload` does, stops them and purges the packages.
//!
//! Needs root (CI and the lab run as root) and changes the machine: `/usr/bin/dmsguard-*`,
//! the units, `/etc/dmsguard` and the `dmsguard` system user exist while it runs; the packages
//! are purged afterwards, also when it fails. Packages left by an interrupted run are purged
//! first. Release packages are `make dist` (stripped optimised binaries, too slow for CI);
//! these are the same packages around the debug binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use dmsguard_lab::harness::{eventually, free_port, BinaryProcess, TestDatabases, Violation};

const PACKAGES: [&str; 2] = ["dmsguard-exporter", "dmsguard-remediator"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate lives in the workspace")
        .to_owned()
}

fn cargo_deb() -> PathBuf {
    let venv = std::env::var("DMSGUARD_LAB_VENV").unwrap_or_else(|_| {
        let lab = std::env::var("DMSGUARD_LAB_DIR").unwrap_or_else(|_| "/tmp/dmsguard-lab".into());
        format!("{lab}/venv")
    });
    Path::new(&venv).join("bin/cargo-deb")
}

/// Runs `program args`, failing with its output unless it succeeds; returns its stdout.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the packages (and the config this test wrote) when dropped, even on failure.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
        let _ = std::fs::remove_dir_all("/etc/dmsguard");
    }
}

/// The value of sample `name` (optionally with `labels` among its labels) in `body`.
fn sample(body: &str, name: &str, labels: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .find(|l| l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A unit's `key=` value from its file as installed.
fn unit_value(unit: &str, key: &str) -> anyhow::Result<String> {
    let path = format!("/usr/lib/systemd/system/{unit}.service");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .with_context(|| format!("{path} has no {key}="))
}

/// One installed unit running, by systemd or from its `ExecStart` as its `User=`.
enum Running {
    Systemd(&'static str),
    Process(BinaryProcess),
}

impl Running {
    fn start(unit: &'static str, dir: &Path) -> anyhow::Result<Self> {
        if Path::new("/run/systemd/system").is_dir() {
            run("systemctl", &["start", unit])?;
            return Ok(Running::Systemd(unit));
        }
        let exec = unit_value(unit, "ExecStart")?;
        let user = unit_value(unit, "User")?;
        let group = unit_value(unit, "Group")?;
        let (reuid, regid) = (format!("--reuid={user}"), format!("--regid={group}"));
        let mut args = vec![reuid.as_str(), regid.as_str(), "--init-groups", "--"];
        args.extend(exec.split_whitespace());
        Ok(Running::Process(BinaryProcess::start(
            Path::new("setpriv"),
            &args,
            dir.join(format!("{unit}.log")),
        )?))
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self {
            Running::Systemd(unit) => {
                run("systemctl", &["is-active", unit])?;
            }
            Running::Process(p) => p.ensure_running()?,
        }
        Ok(())
    }

    /// What the unit's `ExecReload=/bin/kill -HUP $MAINPID` does.
    fn reload(&self) -> anyhow::Result<()> {
        match self {
            Running::Systemd(unit) => run("systemctl", &["reload", unit]).map(drop),
            Running::Process(p) => p.signal("HUP"),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Running::Systemd(unit) => run("systemctl", &["stop", unit]).map(drop),
            Running::Process(mut p) => {
                p.signal("TERM")?;
                let status = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
                    .await
                    .context("the unit's process did not stop on SIGTERM")??;
                ensure!(status.success(), "{status}:\n{}", p.log_text());
                Ok(())
            }
        }
    }

    fn log(&self) -> String {
        match self {
            Running::Systemd(unit) => {
                run("journalctl", &["-u", unit, "--no-pager", "-n", "30"]).unwrap_or_default()
            }
            Running::Process(p) => p.log_text(),
        }
    }
}

#[tokio::test]
async fn debian_packages_install_start_serve_reload_and_purge() -> anyhow::Result<()> {
    let uid = run("id", &["-u"])?;
    ensure!(
        uid.trim() == "0",
        "installing the packages needs root (uid {})",
        uid.trim()
    );
    ensure!(
        cargo_deb().is_file(),
        "{} is missing: tests/lab/up installs cargo-deb into the lab venv",
        cargo_deb().display()
    );
    let dir = tempfile::tempdir()?;
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs)?;

    // Build: the debug binaries next to this test's profile, packed as `make dist` packs the
    // release ones (cargo-deb warns that dev profiles are for testing only: they are, here).
    let manifest = repo().join("Cargo.toml");
    for package in PACKAGES {
        run(
            &cargo_deb().display().to_string(),
            &[
                "--no-build",
                "--profile",
                "dev",
                "--fast",
                "--manifest-path",
                &manifest.display().to_string(),
                "-p",
                package,
                "-o",
                &debs.display().to_string(),
            ],
        )?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    ensure!(files.len() == 2, "{files:?}");

    // Install, after purging what an interrupted run may have left.
    let _purge = Installed;
    if PACKAGES.iter().any(|p| installed(p)) {
        eprintln!("purging dmsguard packages left by an earlier run");
        drop(Installed);
    }
    let mut install = vec!["-i"];
    install.extend(files.iter().map(|f| f.to_str().expect("utf-8 path")));
    run("dpkg", &install)?;
    for package in PACKAGES {
        ensure!(installed(package), "{package} is not installed");
        ensure!(
            Path::new(&format!("/usr/bin/{package}")).is_file(),
            "/usr/bin/{package}"
        );
        // The package enables its unit (started once configured).
        ensure!(
            Path::new(&format!(
                "/etc/systemd/system/multi-user.target.wants/{package}.service"
            ))
            .exists(),
            "{package}.service is not enabled"
        );
    }
    let group = run("getent", &["group", "dmsguard"])?;
    ensure!(group.starts_with("dmsguard:"), "{group}");
    let etc = run("stat", &["-c", "%a %U %G", "/etc/dmsguard"])?;
    assert_eq!(etc.trim(), "750 root dmsguard", "/etc/dmsguard");

    // Configure: the lab's databases as the remediator's least-privilege user, the ledger in
    // the pair's source database; no probe (this test is about the installation).
    let dbs = TestDatabases::create("deb").await?;
    let (exporter_port, remediator_port) = (free_port(), free_port());
    let pw = &dbs.env.pg_password;
    let disabled = |probe: &str| {
        format!("[exporter.{probe}]\nenabled = false\ninterval = \"1m\"\ntimeout = \"10s\"\n")
    };
    let config = format!(
        "[source]\nurl = \"{}\"\npassword = \"{pw}\"\n\n[redshift]\nurl = \"{}\"\npassword = \"{pw}\"\n\n\
         [aws]\nendpoint_url = \"http://127.0.0.1:1\"\n\n\
         [exporter]\nlisten = \"127.0.0.1:{exporter_port}\"\npreflight = false\n{}{}{}{}{}\n\
         [remediator]\nlisten = \"127.0.0.1:{remediator_port}\"\ntoken_file = \"/etc/dmsguard/webhook-token\"\npreflight = false\n{}",
        dbs.remediator_source().url,
        dbs.remediator_redshift().url,
        disabled("redshift_statements"),
        disabled("cloudwatch"),
        disabled("dms"),
        disabled("gaps"),
        disabled("maintenance"),
        dbs.ledger_section(),
    );
    for (path, text) in [
        ("/etc/dmsguard/dmsguard.toml", config.as_str()),
        ("/etc/dmsguard/webhook-token", "deb-test-token\n"),
    ] {
        std::fs::write(path, text)?;
        run("chgrp", &["dmsguard", path])?;
        run("chmod", &["0640", path])?;
    }

    // Start both units and scrape them.
    let mut units = Vec::new();
    for (unit, port) in [
        ("dmsguard-exporter", exporter_port),
        ("dmsguard-remediator", remediator_port),
    ] {
        let mut running = Running::start(unit, dir.path())?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let body = eventually(
            &format!("{unit} serves /metrics"),
            Duration::from_secs(30),
            || {
                // An exited unit fails the wait at once.
                let check = running
                    .check()
                    .map_err(|e| anyhow::Error::new(Violation(format!("{e:#}"))));
                let (client, url) = (&client, &url);
                async move {
                    check?;
                    client
                        .get(format!("{url}/healthz"))
                        .send()
                        .await?
                        .error_for_status()?;
                    Ok(Some(
                        client
                            .get(format!("{url}/metrics"))
                            .send()
                            .await?
                            .error_for_status()?
                            .text()
                            .await?,
                    ))
                }
            },
        )
        .await
        .with_context(|| running.log())?;
        if let Running::Process(p) = &running {
            // As the unit's own user, not root (checked once it serves: setpriv has switched).
            let pid = p.child.id().context("the unit's process exited")?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let uid = run("id", &["-u", "dmsguard"])?;
            let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
            assert_eq!(
                line.split_whitespace().nth(1),
                Some(uid.trim()),
                "{unit} runs as dmsguard: {line}"
            );
        }
        let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            sample(&body, "dmsguard_build_info", &version),
            Some(1.0),
            "{unit}: {body}"
        );
        assert!(
            sample(&body, "process_resident_memory_bytes", "").is_some_and(|v| v > 0.0),
            "{unit}: {body}"
        );
        assert!(
            running.log().contains("level=info"),
            "{unit} logs in logfmt, as its unit asks: {}",
            running.log()
        );
        // ExecReload re-reads the config.
        running.reload()?;
        eventually(
            &format!("{unit} reloads its config"),
            Duration::from_secs(20),
            || {
                let (client, url) = (&client, &url);
                async move {
                    let text = client
                        .get(format!("{url}/metrics"))
                        .send()
                        .await?
                        .text()
                        .await?;
                    Ok(
                        (sample(&text, "dmsguard_config_reloads_total", "result=\"applied\"")
                            == Some(1.0))
                        .then_some(()),
                    )
                }
            },
        )
        .await
        .with_context(|| running.log())?;
        units.push(running);
    }
    for running in units {
        running.stop().await?;
    }

    // Purge: the binaries and units are gone.
    drop(_purge);
    for package in PACKAGES {
        assert!(!installed(package), "{package} is still installed");
        assert!(!Path::new(&format!("/usr/bin/{package}")).exists());
    }
    dbs.drop().await
}
