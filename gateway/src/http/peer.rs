//! A caller's verified client certificate, read once per connection: the subject for the access
//! log, and a claims document for the `clientCertificate` middleware's expressions and headers.

use serde_json::{Map, Value, json};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

/// What the gateway knows of a caller's certificate after the handshake verified it.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The subject's distinguished name (`CN=payments,O=Example`), for the access log.
    pub subject: std::sync::Arc<str>,
    /// The claims document the `clientCertificate` middleware reads:
    ///
    /// ```json
    /// { "subject": { "dn": "CN=payments,O=Example", "commonName": "payments",
    ///                "organization": ["Example"], "organizationalUnit": [], "country": [] },
    ///   "issuer":  { "dn": "CN=Example CA", "commonName": "Example CA", ... },
    ///   "sans": { "dns": ["payments.internal"], "uri": ["spiffe://example/payments"],
    ///             "email": [], "ip": [] },
    ///   "serialNumber": "0a1b…", "notBefore": 1760000000, "notAfter": 1790000000 }
    /// ```
    pub claims: Value,
}

impl PeerCertificate {
    /// Reads a DER certificate; `None` if it does not parse (the handshake verified it, so
    /// that does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = dn(cert.subject());
        let mut sans = Sans::default();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.dns.push((*d).to_owned()),
                    GeneralName::URI(u) => sans.uri.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => sans.email.push((*e).to_owned()),
                    GeneralName::IPAddress(ip) => sans.ip.extend(ip_text(ip)),
                    _ => {}
                }
            }
        }
        let claims = json!({
            "subject": name_claims(cert.subject()),
            "issuer": name_claims(cert.issuer()),
            "sans": { "dns": sans.dns, "uri": sans.uri, "email": sans.email, "ip": sans.ip },
            "serialNumber": cert.raw_serial_as_string().replace(':', ""),
            "notBefore": cert.validity().not_before.timestamp(),
            "notAfter": cert.validity().not_after.timestamp(),
        });
        Some(Self {
            subject: subject.into(),
            claims,
        })
    }
}

#[derive(Default)]
struct Sans {
    dns: Vec<String>,
    uri: Vec<String>,
    email: Vec<String>,
    ip: Vec<String>,
}

/// RFC 4514's string form, without spaces after the commas.
fn dn(name: &X509Name<'_>) -> String {
    name.to_string().replace(", ", ",")
}

fn name_claims(name: &X509Name<'_>) -> Value {
    let texts = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(|s| Value::from(s.to_owned())))
            .collect::<Vec<_>>()
    };
    let mut m = Map::new();
    m.insert("dn".into(), dn(name).into());
    let cn = texts(&mut name.iter_common_name());
    m.insert(
        "commonName".into(),
        cn.into_iter().next().unwrap_or(Value::Null),
    );
    m.insert(
        "organization".into(),
        texts(&mut name.iter_organization()).into(),
    );
    m.insert(
        "organizationalUnit".into(),
        texts(&mut name.iter_organizational_unit()).into(),
    );
    m.insert("country".into(), texts(&mut name.iter_country()).into());
    Value::Object(m)
}

fn ip_text(raw: &[u8]) -> Option<String> {
    match raw.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(raw).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_and_sans_become_claims() {
        let mut params = rcgen::CertificateParams::new(vec!["pay.internal".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "payments");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/payments".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 7].into()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let peer = PeerCertificate::from_der(cert.der()).unwrap();
        assert_eq!(&*peer.subject, "CN=payments,O=Example");
        assert_eq!(peer.claims["subject"]["commonName"], "payments");
        assert_eq!(peer.claims["subject"]["organization"], json!(["Example"]));
        assert_eq!(peer.claims["sans"]["dns"], json!(["pay.internal"]));
        assert_eq!(
            peer.claims["sans"]["uri"],
            json!(["spiffe://example/payments"])
        );
        assert_eq!(peer.claims["sans"]["ip"], json!(["10.0.0.7"]));
        assert!(peer.claims["notAfter"].as_i64().unwrap() > 0);
    }
}
