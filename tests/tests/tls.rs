//! TLS on the database connections against the lab's PostgreSQL, which `tests/lab/up` serves
//! with a certificate for 127.0.0.1/localhost signed by the lab CA (`$DMSGUARD_LAB_DIR/tls`).
//! A server without TLS is the same PostgreSQL behind a proxy that answers `N` to the
//! SSLRequest, exactly as a server with `ssl = off` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dmsguard_lab::harness::LabEnv;
use dmsguard_pipeline::config::DatabaseConfig;
use dmsguard_pipeline::db::{self, ConnectError};
use dmsguard_pipeline::tls::{SslMode, TlsState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The lab's `postgres` database at `host` (port and password from the lab) with `query`.
fn database(env: &LabEnv, host: &str, query: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: format!(
            "postgresql://{}@{host}:{}/postgres{query}",
            env.pg_user, env.pg_port
        ),
        ..env.database("postgres")
    }
}

fn lab_ca(env: &LabEnv) -> PathBuf {
    let ca = env.dir.join("tls").join("ca.crt");
    assert!(
        ca.is_file(),
        "{} is missing: run tests/lab/up (it creates the lab CA)",
        ca.display()
    );
    ca
}

/// Whether the server sees this session as TLS (`pg_stat_ssl`), and its protocol version.
async fn server_side_tls(client: &tokio_postgres::Client) -> (bool, Option<String>) {
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn connect_err(config: &DatabaseConfig) -> String {
    match db::connect(config).await {
        Ok(_) => panic!("connecting to {} unexpectedly worked", config.url),
        Err(e) => e.to_string(),
    }
}

/// A CA that signed nothing the lab serves, made with openssl in `dir`.
fn other_ca(dir: &Path) -> PathBuf {
    let cert = dir.join("other-ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt",
        ])
        .arg("ec_paramgen_curve:prime256v1")
        .arg("-keyout")
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=not the lab CA"])
        .output()
        .expect("openssl runs");
    assert!(
        status.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    cert
}

#[tokio::test]
async fn verify_full_with_the_lab_ca_connects_over_tls() {
    let env = LabEnv::from_env();
    let ca = lab_ca(&env);
    for host in ["127.0.0.1", "localhost"] {
        let config = database(
            &env,
            host,
            &format!("?sslmode=verify-full&sslrootcert={}", ca.display()),
        );
        let (client, state) = db::connect_with_tls_state(&config)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let TlsState::Tls {
            protocol,
            peer_certificate,
            ..
        } = &state
        else {
            panic!("{host}: not TLS: {state}");
        };
        assert!(protocol.starts_with("TLSv1."), "{protocol}");
        assert!(peer_certificate.as_ref().is_some_and(|c| !c.is_empty()));
        let (ssl, version) = server_side_tls(&client).await;
        assert!(ssl, "{host}: the server does not see TLS");
        assert_eq!(version.as_deref(), Some(protocol.as_str()));
    }

    // The same through the config keys instead of the URL.
    let config = DatabaseConfig {
        sslmode: Some(SslMode::VerifyFull),
        sslrootcert: Some(ca.display().to_string()),
        ..database(&env, "127.0.0.1", "")
    };
    let client = db::connect(&config).await.unwrap();
    assert!(server_side_tls(&client).await.0);
}

#[tokio::test]
async fn a_wrong_ca_fails_and_names_the_certificate_problem() {
    let env = LabEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let wrong = other_ca(dir.path());
    for mode in ["verify-full", "verify-ca", "require", "prefer"] {
        let config = database(
            &env,
            "127.0.0.1",
            &format!("?sslmode={mode}&sslrootcert={}", wrong.display()),
        );
        let err = connect_err(&config).await;
        println!("{mode}: {err}");
        assert!(
            err.contains("TLS handshake")
                && err.contains("invalid peer certificate")
                && err.contains("UnknownIssuer")
                && err.contains("not signed by a CA in sslrootcert"),
            "{mode}: {err}"
        );
        assert!(err.contains(&format!("sslmode={mode}")), "{err}");
        assert!(err.contains(&wrong.display().to_string()), "{err}");
    }
}

#[tokio::test]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let env = LabEnv::from_env();
    let ca = lab_ca(&env);
    // Connect to the lab's address but verify the certificate for another name.
    let url = |mode: &str| {
        DatabaseConfig {
        url: format!(
            "host=db.example.invalid hostaddr=127.0.0.1 port={} user={} dbname=postgres sslmode={mode} sslrootcert={}",
            env.pg_port,
            env.pg_user,
            ca.display()
        ),
        ..env.database("postgres")
    }
    };
    let err = connect_err(&url("verify-full")).await;
    assert!(
        err.contains("not valid for name \"db.example.invalid\"")
            && err.contains("sslmode=verify-full"),
        "{err}"
    );
    let client = db::connect(&url("verify-ca")).await.unwrap();
    assert!(server_side_tls(&client).await.0);
}

#[tokio::test]
async fn prefer_is_the_default_and_encrypts_without_verifying() {
    let env = LabEnv::from_env();
    let config = env.database("postgres");
    assert_eq!(
        db::tls_settings(&config).unwrap().mode,
        SslMode::Prefer,
        "the default"
    );
    let (client, state) = db::connect_with_tls_state(&config).await.unwrap();
    assert!(state.is_tls(), "{state}");
    assert!(server_side_tls(&client).await.0);

    let config = database(&env, "127.0.0.1", "?sslmode=disable");
    let (client, state) = db::connect_with_tls_state(&config).await.unwrap();
    assert_eq!(state, TlsState::Plaintext);
    assert!(!server_side_tls(&client).await.0);
}

/// Forwards to the lab's PostgreSQL but refuses TLS, as a server with `ssl = off`: answers `N`
/// to an SSLRequest, then relays the plaintext session.
async fn server_without_tls(env: &LabEnv) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("{}:{}", env.pg_host, env.pg_port);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // SSLRequest: length 8, code 80877103 (PostgreSQL protocol, "Message Formats").
                let mut first = [0u8; 8];
                if client.read_exact(&mut first).await.is_err() {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    if client.write_all(b"N").await.is_err() {
                        return;
                    }
                } else if server.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn require_fails_clearly_and_prefer_falls_back_without_server_tls() {
    let env = LabEnv::from_env();
    let port = server_without_tls(&env).await;
    let at = |query: &str| DatabaseConfig {
        url: format!(
            "postgresql://{}@127.0.0.1:{port}/postgres{query}",
            env.pg_user
        ),
        connect_timeout: Duration::from_secs(5),
        ..env.database("postgres")
    };

    for query in [
        "?sslmode=require".to_owned(),
        format!(
            "?sslmode=verify-full&sslrootcert={}",
            lab_ca(&env).display()
        ),
    ] {
        let config = at(&query);
        let err = match db::connect(&config).await {
            Ok(_) => panic!("{query}: connected without TLS"),
            Err(e) => e,
        };
        assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        println!("{query}: {text}");
        assert!(
            text.contains("server does not support TLS")
                && text.contains(&format!("127.0.0.1:{port}/postgres")),
            "{query}: {text}"
        );
    }

    let (client, state) = db::connect_with_tls_state(&at("")).await.unwrap();
    assert_eq!(state, TlsState::Plaintext, "prefer falls back to plaintext");
    assert!(!server_side_tls(&client).await.0);
}
