//! A PostgreSQL server of a test's own, which the test can stop and start.

/// A PostgreSQL cluster of the test's own (initdb in a temporary folder), which the test can
/// stop and start. It listens on a Unix socket in that folder only, so it needs no TCP port
/// (none to pick, none to race another test for).
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
}

/// A program of Debian's PostgreSQL package, newest version first.
pub fn pg_bin(name: &str) -> std::path::PathBuf {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql package (/usr/lib/postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .expect("initdb and pg_ctl of Debian's postgresql package")
}

/// Runs a PostgreSQL tool, as the `postgres` user when this process is root.
pub fn as_postgres(program: &std::path::Path, args: &[&str]) -> std::process::Output {
    // initdb and the server refuse to run as root: run them as the postgres user.
    let mut command = if is_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    command.args(args).output().expect("run a PostgreSQL tool")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl ThrowawayPostgres {
    /// Initialises and starts it.
    pub fn start() -> ThrowawayPostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let out = as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = ThrowawayPostgres { dir };
        pg.up();
        pg
    }

    /// Its URL (the socket folder as `host`).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-k {} -c listen_addresses= -c fsync=off",
            self.dir.path().display()
        );
        let out = as_postgres(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-l",
                data.join("log").to_str().unwrap(),
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn down(&self) {
        let data = self.dir.path().join("data");
        let out = as_postgres(
            &pg_bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            &pg_bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}
