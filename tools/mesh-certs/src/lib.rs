//! A throwaway certificate authority and one certificate per service of the mesh, written as
//! cert-manager mounts a Certificate's Secret: `<dir>/<name>/tls.crt`, `tls.key` and `ca.crt`.
//!
//! Each certificate serves and calls (both `serverAuth` and `clientAuth`), names the service and
//! the local hosts, and lasts about two years. The CA's private key is never written: nobody
//! can sign another certificate for the mesh afterwards; a new set replaces the whole folder.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The services of the mesh, and `operator`: a client certificate for grpcurl and the tools.
pub const MESH_NAMES: [&str; 5] = [
    "gateway",
    "inference",
    "metrics-collector",
    "alert-manager",
    "operator",
];

/// Hosts every certificate names besides its service: the local machine.
pub const LOCAL_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// One certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The service it names.
    pub name: String,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// A CA and the certificates it signed.
#[derive(Debug, Clone)]
pub struct MeshCerts {
    /// The CA's certificate (PEM).
    pub ca_pem: String,
    /// One per name.
    pub leaves: Vec<Leaf>,
}

impl MeshCerts {
    /// The certificate named `name`.
    pub fn leaf(&self, name: &str) -> Option<&Leaf> {
        self.leaves.iter().find(|leaf| leaf.name == name)
    }

    /// Writes `<dir>/<name>/{tls.crt,tls.key,ca.crt}` for every leaf (keys readable by the
    /// owner only).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        for leaf in &self.leaves {
            let folder = dir.join(&leaf.name);
            std::fs::create_dir_all(&folder)?;
            std::fs::write(folder.join("tls.crt"), &leaf.cert_pem)?;
            std::fs::write(folder.join("ca.crt"), &self.ca_pem)?;
            write_private(&folder.join("tls.key"), &leaf.key_pem)?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// The current year, from the system clock (validity only needs the year).
fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

/// A new CA named `ca_name` and, for each of `names`, a certificate for that name and `hosts`.
pub fn generate(ca_name: &str, names: &[&str], hosts: &[&str]) -> Result<MeshCerts, rcgen::Error> {
    let year = this_year();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaves = Vec::with_capacity(names.len());
    for name in names {
        let mut sans = vec![(*name).to_owned()];
        sans.extend(hosts.iter().map(|h| (*h).to_owned()));
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, *name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        leaves.push(Leaf {
            name: (*name).to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        });
    }
    Ok(MeshCerts { ca_pem, leaves })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_gets_a_certificate_key_and_the_ca_in_cert_manager_s_layout() {
        let certs = generate("test CA", &["gateway", "operator"], &LOCAL_HOSTS).unwrap();
        let dir = tempfile::tempdir().unwrap();
        certs.write_to(dir.path()).unwrap();
        for name in ["gateway", "operator"] {
            let folder = dir.path().join(name);
            let cert = std::fs::read_to_string(folder.join("tls.crt")).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
            let key = std::fs::read_to_string(folder.join("tls.key")).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
            assert_eq!(
                std::fs::read_to_string(folder.join("ca.crt")).unwrap(),
                certs.ca_pem
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(folder.join("tls.key"))
                    .unwrap()
                    .permissions();
                assert_eq!(mode.mode() & 0o077, 0, "the key is private");
            }
        }
        assert_ne!(
            certs.leaf("gateway").unwrap().cert_pem,
            certs.leaf("operator").unwrap().cert_pem
        );
    }
}
