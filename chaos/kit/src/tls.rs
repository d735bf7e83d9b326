//! Throw-away certificates for TLS tests.

use std::process::Command;

/// A throw-away CA with a server certificate for 127.0.0.1, a client certificate, and a `node`
/// certificate for 127.0.0.1 good for both (a cache node serves and dials its peers with it),
/// made with `openssl` in a temporary directory.
pub struct TlsFixture {
    dir: tempfile::TempDir,
}

/// Makes the CA and the certificates (`server`, `client`, `node`, and `operator`, which names
/// itself by a SPIFFE URI). The extensions make them X.509 v3, the only kind
/// rustls accepts.
const MAKE_CERTIFICATES: &str = "
set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=tokengate-test-ca
printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > node.ext
printf 'subjectAltName=URI:spiffe://tokengate.test/operator\\nextendedKeyUsage=clientAuth\\n' > operator.ext
for name in server client node operator; do
  openssl req -newkey rsa:2048 -nodes -keyout $name.key -out $name.csr -subj /CN=$name
  openssl x509 -req -in $name.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $name.crt -days 1 -extfile $name.ext
done
";

impl Default for TlsFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsFixture {
    /// Generates the CA and both certificates.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("sh")
            .args(["-c", MAKE_CERTIFICATES])
            .current_dir(dir.path())
            .output()
            .expect("sh and openssl are installed");
        assert!(
            out.status.success(),
            "making certificates: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// The path of one of its files (`ca.crt`, `client.key`, ...).
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
