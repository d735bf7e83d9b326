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
        let fixture = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        fixture.run(MAKE_CERTIFICATES, "making certificates");
        fixture
    }

    /// Runs the shell `script` in the fixture's directory; it must succeed (`what` it does
    /// names the failure).
    fn run(&self, script: &str, what: &str) {
        let out = Command::new("sh")
            .args(["-c", script])
            .current_dir(self.dir.path())
            .output()
            .expect("sh and openssl are installed");
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The path of one of its files (`ca.crt`, `client.key`, ...).
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl TlsFixture {
    /// Issues another certificate from the fixture's CA: `name.crt` and `name.key` (P-256), with
    /// the X.509 v3 extensions in `extensions` (`openssl x509 -extfile` syntax, e.g.
    /// `subjectAltName=DNS:a.test`), and the subject `/CN=name` unless `subject` says otherwise.
    /// Returns the certificate's and the key's paths.
    pub fn issue(&self, name: &str, subject: Option<&str>, extensions: &str) -> (String, String) {
        let script = format!(
            "set -e
printf '{extensions}\\n' > {name}.ext
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.csr -subj '{subject}'
openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1 -extfile {name}.ext",
            subject = subject.map_or_else(|| format!("/CN={name}"), str::to_owned),
        );
        self.run(&script, &format!("issuing {name}"));
        (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        )
    }

    /// A server configuration presenting `name`'s certificate, offering `alpn` (e.g. `h2`,
    /// `http/1.1`), and asking for a client certificate from the fixture's CA when
    /// `client_auth`.
    pub fn server_config(
        &self,
        name: &str,
        alpn: &[&str],
        client_auth: bool,
    ) -> std::sync::Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path(&format!("{name}.crt")))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.der("ca.crt")).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        std::sync::Arc::new(config)
    }

    /// The first certificate of one of its PEM files, as DER.
    pub fn der(&self, file: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(self.path(file)).unwrap()
    }
}

/// `openssl ca`'s settings for the fixture's CA: a database of issued certificates to revoke
/// from, and lists good for a day.
const CA_CONFIG: &str = "[ ca ]
default_ca = fixture
[ fixture ]
database = index.txt
crlnumber = crlnumber
default_md = sha256
default_crl_days = 1
";

impl TlsFixture {
    /// A certificate revocation list of the fixture's CA revoking the certificates `revoked`
    /// (`client`, `node`, ...), written to `name`; its path.
    pub fn crl(&self, name: &str, revoked: &[&str]) -> String {
        let mut script = format!(
            "set -e\nprintf '{}' > ca.cnf\n: > index.txt\necho 01 > crlnumber\n",
            CA_CONFIG.replace('\n', "\\n")
        );
        for r in revoked {
            script.push_str(&format!(
                "openssl ca -config ca.cnf -keyfile ca.key -cert ca.crt -revoke {r}.crt\n"
            ));
        }
        script.push_str(&format!(
            "openssl ca -config ca.cnf -keyfile ca.key -cert ca.crt -gencrl -out {name}\n"
        ));
        self.run(&script, "making a CRL");
        self.path(name)
    }
}
