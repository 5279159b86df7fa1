//! The workspace's own binaries (`dmsguard-exporter`, `dmsguard-remediator`), run by tests as
//! the processes they are in production.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The path of workspace binary `name`: `DMSGUARD_BIN_DIR/<name>` when that is set, else the
/// one beside the test executable's profile directory (`target/<profile>/<name>`), which
/// `cargo test --workspace` builds (cargo builds a package's binaries for its integration
/// tests). A test cannot build it itself: cargo holds the target directory's lock while tests
/// run. When running one test alone, build the binaries first: `cargo build --bins`.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("DMSGUARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => profile_dir()?,
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} does not exist: build it first (`cargo test --workspace --no-run` or `cargo build --bins`), or set DMSGUARD_BIN_DIR",
        path.display()
    );
    Ok(path)
}

/// `target/<profile>`: test executables run from `target/<profile>/deps/`.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the test executable's path")?;
    let deps = exe.parent().context("the test executable's directory")?;
    let profile = if deps.ends_with("deps") {
        deps.parent().context("the profile directory")?
    } else {
        deps
    };
    Ok(Path::new(profile).to_path_buf())
}
