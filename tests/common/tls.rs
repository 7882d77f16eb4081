//! Certificates made at test time with `openssl` (a private CA, server and client
//! certificates), for the TLS tests on one server (`tests/hardening.rs`) and on a cluster
//! (`tests/cluster.rs`).

use std::path::Path;
use std::process::Command;

/// Under `CI=true` a missing tool fails the test; elsewhere it is skipped with a note.
pub fn require(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required under CI=true (apt-get install {tool})"
        );
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// Runs `openssl args` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (`name.pem`, `name.key`) and a certificate it signs for `cn`
/// (`<cn_file>.pem`, `<cn_file>.key`) with the given extensions.
pub fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

pub fn signed(dir: &Path, ca: &str, file: &str, ext: &str) {
    std::fs::write(dir.join(format!("{file}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{file}.key"),
            "-out",
            &format!("{file}.csr"),
            "-subj",
            &format!("/CN={file}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{file}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{file}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{file}.ext"),
        ],
    );
}

/// `[redis]` TLS lines for a worker file.
pub fn tls_lines(dir: &Path, ca: &str, client: Option<&str>) -> String {
    let p = |f: String| dir.join(f).display().to_string();
    let mut s = format!("tls_ca_file = \"{}\"\n", p(format!("{ca}.pem")));
    if let Some(c) = client {
        s.push_str(&format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            p(format!("{c}.pem")),
            p(format!("{c}.key"))
        ));
    }
    s
}

/// The certificates the TLS tests use, in `dir`: the CAs `ca` and `other-ca`; `server`
/// (for 127.0.0.1 and localhost) and `client` signed by `ca`; `stranger`, a client
/// certificate signed by `other-ca`.
pub fn certificates(dir: &Path) {
    ca(dir, "ca");
    ca(dir, "other-ca");
    signed(
        dir,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    signed(dir, "ca", "client", "extendedKeyUsage=clientAuth\n");
    signed(dir, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
}
