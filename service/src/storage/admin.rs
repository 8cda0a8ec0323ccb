//! The admin socket: how `oms backup` reaches a running node or hub. A Unix socket in the data directory
//! (`admin.sock`, mode 0600), so whoever may call it is whoever may read the data directory anyway: no key,
//! no network, no TLS. One request a connection, one connection at a time (a second backup waits).
//!
//! Request: one line, `backup`. Answer: `OK\n` and the backup (see [`super::archive`]), or `ERR <why>\n`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// How long a client may take to send its request, and a backup may wait for the client to read.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a request line.
const REQUEST_BYTES_MAX: u64 = 64;

/// The socket while it serves; removed when dropped.
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `data_dir/admin.sock` and serves it on a thread of its own. The process already holds the data
/// directory's databases (redb locks them), so a socket file left by a killed process is replaced.
pub fn serve(data_dir: &Path) -> std::io::Result<AdminSocket> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(ADMIN_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let dir = data_dir.to_owned();
    std::thread::Builder::new().name("oms-admin".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => handle(&dir, conn),
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(AdminSocket { path })
}

fn handle(dir: &Path, conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new(&conn).take(REQUEST_BYTES_MAX).read_line(&mut line);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, &conn);
    if read.is_err() || line.trim_end() != "backup" {
        let _ = writeln!(out, "ERR unknown request (the only one is `backup`)");
        return;
    }
    let started = std::time::Instant::now();
    let snaps = match super::format::snapshot(dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "ERR {e}");
            return;
        }
    };
    // The key file as it is now: `keys::read` validates it, and it is written whole by rename, so a read
    // never sees half a change. A process without one (no keys made yet) backs up its databases only.
    let keys = match crate::auth::keys::read(dir) {
        Ok(k) if k.keys.is_empty() && k.users.is_empty() => None,
        Ok(k) => match serde_json::to_vec_pretty(&k) {
            Ok(bytes) => Some(super::archive::PlainFile {
                name: crate::auth::keys::KEYS_FILE.into(),
                kind: "keys",
                version: u64::from(k.version),
                bytes,
            }),
            Err(e) => {
                let _ = writeln!(out, "ERR keys.json: {e}");
                return;
            }
        },
        Err(e) => {
            let _ = writeln!(out, "ERR {e}");
            return;
        }
    };
    if writeln!(out, "OK").is_err() {
        return;
    }
    match super::archive::write(&snaps, keys.as_slice(), &mut out) {
        Ok(m) => tracing::info!(
            files = m.files.len(),
            bytes = m.files.iter().map(|f| f.len).sum::<u64>(),
            ms = started.elapsed().as_millis() as u64,
            pause_ms_max = m.pause_ms_max,
            "backup taken"
        ),
        Err(e) => tracing::warn!(error = %e, "backup failed"),
    }
}

/// Asks the process serving `data_dir` for a backup and writes it to `out`. `Ok(false)`: no process serves
/// the directory (no socket, or nobody listening).
pub fn request_backup(data_dir: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    let conn = match UnixStream::connect(data_dir.join(ADMIN_SOCKET)) {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    (&conn).write_all(b"backup\n")?;
    let mut input = BufReader::with_capacity(1 << 20, &conn);
    let mut status = String::new();
    (&mut input).take(4096).read_line(&mut status)?;
    match status.trim_end() {
        "OK" => {
            std::io::copy(&mut input, out)?;
            Ok(true)
        }
        other => Err(std::io::Error::other(other.strip_prefix("ERR ").unwrap_or(other).to_owned())),
    }
}
