//! A throw-away PostgreSQL cluster for the replica tests: Debian's `postgresql` package
//! (`.ci/run` installs it), `initdb` into a temporary folder, a server on a free loopback
//! port, stopped (`pg_ctl stop -m immediate`) when the value is dropped. As root, the
//! cluster runs as the `postgres` user, since PostgreSQL refuses to run as root.
//!
//! Without PostgreSQL the tests that need it pass with a SKIP line — unless
//! `GUESTGATE_REQUIRE_POSTGRES=1` (set by `.ci/run`), where that fails.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// `postgres://` URL of the cluster's `postgres` database, as its superuser.
    pub fn url(&self) -> String {
        format!("postgres://guestgate@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        command(&self.bin, self.run_as.as_deref(), program)
    }

    /// Stops the server (fast: connections are cut, as when a database goes away).
    pub fn stop(&self) {
        let status = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        assert!(
            status.as_ref().is_ok_and(|o| o.status.success()),
            "pg_ctl stop: {status:?}"
        );
    }

    /// Starts the (stopped) server again on the same port.
    pub fn start(&self) {
        let log = self.data.with_file_name("server.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
                self.port,
                self.data.parent().unwrap_or(Path::new("/tmp")).display()
            ))
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn command(bin: &Path, run_as: Option<&str>, program: &str) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(bin.join(program));
            c
        }
        None => Command::new(bin.join(program)),
    }
}

/// The folder of `initdb` and `pg_ctl`: `$GUESTGATE_PG_BIN`, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GUESTGATE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Starts a fresh cluster, or says why not: `None` after a SKIP line where PostgreSQL is
/// not installed (a failure under `GUESTGATE_REQUIRE_POSTGRES=1`).
pub fn start_postgres(test: &str) -> Option<Postgres> {
    let skip = |why: String| {
        super::skip("GUESTGATE_REQUIRE_POSTGRES", test, &why);
        None
    };
    let Some(bin) = bin_dir() else {
        return skip("PostgreSQL is not installed (apt-get install postgresql)".into());
    };
    let dir = tempfile::tempdir().unwrap();
    let run_as = if is_root() {
        let owner = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .output();
        if !owner.is_ok_and(|o| o.status.success()) {
            return skip(
                "running as root and there is no `postgres` user to run the cluster as".into(),
            );
        }
        Some("postgres".to_string())
    } else {
        None
    };
    let data = dir.path().join("data");
    let output = command(&bin, run_as.as_deref(), "initdb")
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "-U",
            "guestgate",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ])
        .output()
        .unwrap();
    if !output.status.success() {
        return skip(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg = Postgres {
        port,
        bin,
        run_as,
        data,
        _dir: dir,
    };
    pg.start();
    Some(pg)
}
