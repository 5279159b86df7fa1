//! TLS and basic auth fixtures for the binaries' web configuration: the lab's CA and server
//! certificate (made by `tests/lab/up` for PostgreSQL), client certificates signed by it and
//! by a stranger CA, bcrypt-hashed users, and HTTPS clients.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::LabEnv;

/// bcrypt cost of the test users: the minimum, so each check takes milliseconds.
const TEST_BCRYPT_COST: u32 = 4;

/// Certificates for one test, in a temporary directory.
pub struct WebFixture {
    dir: tempfile::TempDir,
    /// The lab CA (signs the server certificate and the good client certificate).
    pub ca: PathBuf,
    /// The lab's server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate and key the lab CA signed.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate and key signed by a CA nobody trusts.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (is the lab installed? tests/lab/up)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes `name.crt`/`name.key` in `dir`, a client certificate signed by `ca_cert`/`ca_key`.
fn client_certificate(dir: &Path, name: &str, ca_cert: &Path, ca_key: &Path) -> anyhow::Result<()> {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), "extendedKeyUsage=clientAuth\n")?;
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
        dir,
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert.display().to_string(),
            "-CAkey",
            &ca_key.display().to_string(),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
        dir,
    )
}

impl WebFixture {
    /// Signs a client certificate with the lab CA and one with a fresh stranger CA.
    pub fn create() -> anyhow::Result<Self> {
        let env = LabEnv::from_env();
        let tls = env.dir.join("tls");
        let (ca, ca_key) = (tls.join("ca.crt"), tls.join("ca.key"));
        anyhow::ensure!(
            ca.is_file() && ca_key.is_file(),
            "{} has no lab CA: run tests/lab/up",
            tls.display()
        );
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        // The CA serial file goes beside the copy, not into the lab's directory.
        std::fs::copy(&ca, d.join("lab-ca.crt"))?;
        std::fs::copy(&ca_key, d.join("lab-ca.key"))?;
        client_certificate(d, "client", &d.join("lab-ca.crt"), &d.join("lab-ca.key"))?;
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "stranger-ca.key",
                "-out",
                "stranger-ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=stranger CA",
            ],
            d,
        )?;
        client_certificate(
            d,
            "stranger",
            &d.join("stranger-ca.crt"),
            &d.join("stranger-ca.key"),
        )?;
        Ok(Self {
            ca,
            server_cert: tls.join("server.crt"),
            server_key: tls.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            stranger_cert: d.join("stranger.crt"),
            stranger_key: d.join("stranger.key"),
            dir,
        })
    }

    /// The fixture's directory (the web config files go there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an exporter-toolkit web config file: the lab server certificate, client
    /// certificates verified against the lab CA under `client_auth_type` (`None`: not asked
    /// for), and `users` (name, password) hashed with bcrypt.
    pub fn write_web_config(
        &self,
        name: &str,
        client_auth_type: Option<&str>,
        users: &[(&str, &str)],
    ) -> anyhow::Result<PathBuf> {
        let mut yaml = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            self.server_cert.display(),
            self.server_key.display()
        );
        if let Some(auth) = client_auth_type {
            yaml.push_str(&format!(
                "  client_auth_type: {auth}\n  client_ca_file: {}\n",
                self.ca.display()
            ));
        }
        yaml.push_str("http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n");
        if !users.is_empty() {
            yaml.push_str("basic_auth_users:\n");
            for (user, password) in users {
                let hash = bcrypt::hash(password, TEST_BCRYPT_COST)?;
                yaml.push_str(&format!("  {user}: '{hash}'\n"));
            }
        }
        let path = self.dir().join(name);
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// An HTTPS client trusting only the lab CA, presenting `identity` (a certificate and its
    /// key) when given.
    pub fn client(&self, identity: Option<(&Path, &Path)>) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?;
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(std::time::Duration::from_secs(10));
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert)?;
            pem.extend(std::fs::read(key)?);
            builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
        }
        Ok(builder.build()?)
    }

    /// A client presenting the lab-signed client certificate.
    pub fn trusted_client(&self) -> anyhow::Result<reqwest::Client> {
        self.client(Some((&self.client_cert, &self.client_key)))
    }
}

/// A workspace binary run as a child process, killed on drop; its stdout and stderr go to a
/// log file.
pub struct BinaryProcess {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl BinaryProcess {
    /// Starts `binary` with `args`, logging to `log`.
    pub fn start(binary: &Path, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = tokio::process::Command::new(binary)
            .args(args)
            .stdout(out)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child, log })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the process has exited, with its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!("the process exited ({status}):\n{}", self.log_text());
        }
        Ok(())
    }

    /// Sends `signal` (e.g. `HUP`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has exited")?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }
}
