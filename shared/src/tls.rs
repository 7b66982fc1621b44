//! TLS between the services of the mesh.
//!
//! Every service presents one certificate, read from files (cert-manager mounts them as
//! `tls.crt`, `tls.key` and `ca.crt`), both as a server and as a client of the others. The
//! internal services (inference, metrics collector, alert manager) ask their callers for a
//! certificate signed by the mesh's CA: mutual TLS. The gateway, which recommender services
//! call, asks for one but does not require it (its callers prove who they are with API keys).
//!
//! Plaintext is never the silent default: a service started with neither certificates nor
//! `--plaintext` refuses to start and says what to give it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a caller may take over its TLS handshake before the server drops the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS settings every service takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate (chain) this service presents to its callers and to the services it
    /// calls (cert-manager's `tls.crt`). Needs --tls-key and --tls-ca.
    #[arg(long, env = "TLS_CERT_FILE", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (cert-manager's `tls.key`).
    #[arg(long, env = "TLS_KEY_FILE", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate(s) of the mesh's CA (cert-manager's `ca.crt`): the services this one
    /// calls must present a certificate it signed, and so must its callers where it asks.
    #[arg(long, env = "TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve and call without TLS. For a trusted development machine only: anyone on the
    /// network can then read and forge the mesh's traffic.
    #[arg(long, env = "MESH_PLAINTEXT", conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    pub plaintext: bool,
    /// Also answer gRPC health checks (and nothing else) in plaintext on this address, for a
    /// prober that cannot speak TLS (the kubelet's gRPC probe).
    #[arg(long, env = "PLAINTEXT_HEALTH_LISTEN", value_name = "ADDR")]
    pub plaintext_health_listen: Option<std::net::SocketAddr>,
}

/// Why TLS could not be set up, or why an address does not fit it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// Whether a server asks its callers for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// Callers must present a certificate signed by the mesh's CA (internal services).
    MustPresentCertificate,
    /// Callers may present one (the gateway: its callers authenticate with API keys).
    MayPresentCertificate,
}

/// The PEM material of a TLS-speaking service.
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    /// For clients written on rustls directly (the gateway's hot-path HTTP/2 client).
    rustls_client: Arc<rustls::ClientConfig>,
}

/// TLS as this process speaks it: with the mesh's certificates, or plaintext when asked for.
#[derive(Clone)]
pub struct MeshTls {
    material: Option<Arc<Material>>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.material.is_some() {
            "MeshTls(tls)"
        } else {
            "MeshTls(plaintext)"
        })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|err| TlsError(format!("cannot read the {what} {}: {err}", path.display())))
}

impl MeshTls {
    /// Plaintext: no TLS at all.
    pub fn plaintext() -> MeshTls {
        MeshTls { material: None }
    }

    /// Reads a service's certificate, key and CA, checking that they parse and fit together.
    /// Without them, only an explicit `--plaintext` is accepted.
    pub fn load(args: &TlsArgs) -> Result<MeshTls, TlsError> {
        if args.plaintext {
            return Ok(MeshTls::plaintext());
        }
        let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca)
        else {
            return Err(TlsError(
                "no TLS certificate: give --tls-cert, --tls-key and --tls-ca (or TLS_CERT_FILE, \
                 TLS_KEY_FILE and TLS_CA_FILE; cert-manager's tls.crt, tls.key and ca.crt), or \
                 --plaintext (MESH_PLAINTEXT=true) to run without TLS on a trusted machine"
                    .into(),
            ));
        };
        let cert_pem = read(cert, "certificate --tls-cert")?;
        let key_pem = read(key, "private key --tls-key")?;
        let ca_pem = read(ca, "CA certificate --tls-ca")?;
        MeshTls::from_pem(cert_pem, key_pem, ca_pem).map_err(|TlsError(why)| {
            TlsError(format!(
                "{why} (--tls-cert {}, --tls-key {}, --tls-ca {})",
                cert.display(),
                key.display(),
                ca.display()
            ))
        })
    }

    /// A client's TLS: like [`MeshTls::load`], but without any setting it is plaintext (a
    /// tool's addresses then say `http://`; an `https://` one is refused by [`MeshTls::endpoint`]).
    pub fn load_client(args: &TlsArgs) -> Result<MeshTls, TlsError> {
        if args.tls_cert.is_none() && args.tls_ca.is_none() {
            return Ok(MeshTls::plaintext());
        }
        if args.tls_cert.is_none() {
            // A CA alone: enough to call the gateway, which does not require a certificate.
            let ca = args.tls_ca.as_deref().expect("checked above");
            let ca_pem = read(ca, "CA certificate --tls-ca")?;
            return MeshTls::from_ca_only(ca_pem);
        }
        MeshTls::load(args)
    }

    /// TLS from PEM text: the certificate chain, its private key, and the CA certificate(s).
    pub fn from_pem(cert: Vec<u8>, key: Vec<u8>, ca: Vec<u8>) -> Result<MeshTls, TlsError> {
        let chain = certificates(&cert, "certificate")?;
        let private = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|err| TlsError(format!("the private key is not a PEM private key: {err}")))?;
        let roots = roots(&ca)?;
        let rustls_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError(format!("TLS versions: {err}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|err| TlsError(format!("the certificate and key do not fit: {err}")))?;
        Ok(MeshTls::with(cert, key, ca, rustls_client))
    }

    fn from_ca_only(ca: Vec<u8>) -> Result<MeshTls, TlsError> {
        let roots = roots(&ca)?;
        let rustls_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError(format!("TLS versions: {err}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(MeshTls::with(Vec::new(), Vec::new(), ca, rustls_client))
    }

    fn with(
        cert: Vec<u8>,
        key: Vec<u8>,
        ca: Vec<u8>,
        mut rustls_client: rustls::ClientConfig,
    ) -> MeshTls {
        rustls_client.alpn_protocols = vec![b"h2".to_vec()];
        MeshTls {
            material: Some(Arc::new(Material {
                cert,
                key,
                ca,
                rustls_client: Arc::new(rustls_client),
            })),
        }
    }

    /// Whether this process speaks plaintext.
    pub fn is_plaintext(&self) -> bool {
        self.material.is_none()
    }

    /// The URL scheme of the mesh's addresses: `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.is_plaintext() { "http" } else { "https" }
    }

    /// The server side: this service's certificate, and whether callers must present one.
    /// `None` when plaintext.
    pub fn server(&self, callers: Callers) -> Option<ServerTlsConfig> {
        let material = self.material.as_ref()?;
        Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(&material.cert, &material.key))
                .client_ca_root(Certificate::from_pem(&material.ca))
                .client_auth_optional(callers == Callers::MayPresentCertificate)
                .timeout(HANDSHAKE_TIMEOUT),
        )
    }

    /// The client side for tonic channels: the mesh's CA and this service's certificate.
    /// `domain` overrides the name checked in the server's certificate (for an address that
    /// was resolved to an IP). `None` when plaintext.
    pub fn client(&self, domain: Option<&str>) -> Option<ClientTlsConfig> {
        let material = self.material.as_ref()?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&material.ca));
        if !material.cert.is_empty() {
            config = config.identity(Identity::from_pem(&material.cert, &material.key));
        }
        if let Some(domain) = domain {
            config = config.domain_name(domain);
        }
        Some(config)
    }

    /// The rustls client configuration (ALPN `h2`), for clients that are not tonic channels.
    pub fn rustls_client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.material.as_ref().map(|m| m.rustls_client.clone())
    }

    /// An endpoint for `url`, with TLS when this process speaks it. The scheme must agree:
    /// `https://` with TLS, `http://` without; `what` names the setting in the error.
    pub fn endpoint(&self, url: &str, what: &str) -> Result<Endpoint, TlsError> {
        self.endpoint_checking(url, what, None)
    }

    /// Like [`MeshTls::endpoint`], checking the server's certificate for `domain` instead of
    /// the URL's host.
    pub fn endpoint_checking(
        &self,
        url: &str,
        what: &str,
        domain: Option<&str>,
    ) -> Result<Endpoint, TlsError> {
        self.check_scheme(url, what)?;
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|err| TlsError(format!("{what}: {url:?} is not a valid URL: {err}")))?;
        match self.client(domain) {
            None => Ok(endpoint),
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|err| TlsError(format!("{what}: TLS for {url}: {err}"))),
        }
    }

    /// Checks that `url`'s scheme is the one this process speaks.
    pub fn check_scheme(&self, url: &str, what: &str) -> Result<(), TlsError> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match (scheme, self.is_plaintext()) {
            (Some("https"), false) | (Some("http"), true) => Ok(()),
            (Some("http"), false) => Err(TlsError(format!(
                "{what} is {url}, but this service speaks TLS: write https://, or start it with \
                 --plaintext to talk without TLS"
            ))),
            (Some("https"), true) => Err(TlsError(format!(
                "{what} is {url}, but this service runs with --plaintext: write http://, or give \
                 it --tls-cert, --tls-key and --tls-ca"
            ))),
            _ => Err(TlsError(format!(
                "{what} is {url:?}: it needs a scheme, {}://host:port",
                self.scheme()
            ))),
        }
    }
}

/// A server builder that speaks TLS when `tls` does, asking `callers` for a certificate.
pub fn server_builder(
    tls: &MeshTls,
    callers: Callers,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match tls.server(callers) {
        Some(config) => builder.tls_config(config),
        None => Ok(builder),
    }
}

/// Opens the plaintext health port when `args` asks for one (see [`TlsArgs`]).
pub async fn health_port(
    serving: &mut crate::serving::Serving,
    args: &TlsArgs,
    health_only: tonic::service::Routes,
) -> Result<(), TlsError> {
    match args.plaintext_health_listen {
        None => Ok(()),
        Some(addr) => serving
            .health_port(addr, health_only)
            .await
            .map_err(|err| TlsError(format!("plaintext health checks: {err}"))),
    }
}

/// The server name to check in a certificate: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned())
        .map_err(|err| TlsError(format!("{host:?} is not a DNS name or IP address: {err}")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError(format!("the {what} is not PEM: {err}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "the {what} file holds no PEM certificate"
        )));
    }
    Ok(certs)
}

fn roots(ca: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca, "CA certificate")? {
        roots
            .add(cert)
            .map_err(|err| TlsError(format!("the CA certificate is not usable: {err}")))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(plaintext: bool) -> TlsArgs {
        TlsArgs {
            plaintext,
            ..TlsArgs::default()
        }
    }

    #[test]
    fn a_service_without_certificates_must_ask_for_plaintext() {
        let err = MeshTls::load(&args(false)).unwrap_err().to_string();
        assert!(
            err.contains("--tls-cert") && err.contains("--plaintext"),
            "{err}"
        );
        assert!(MeshTls::load(&args(true)).unwrap().is_plaintext());
    }

    #[test]
    fn the_scheme_must_agree_with_the_transport() {
        let plain = MeshTls::plaintext();
        plain.check_scheme("http://a:1", "--x").unwrap();
        let err = plain.check_scheme("https://a:1", "--x").unwrap_err();
        assert!(err.to_string().contains("--plaintext"), "{err}");
        let err = plain.check_scheme("a:1", "--x").unwrap_err();
        assert!(err.to_string().contains("http://host:port"), "{err}");
    }

    #[test]
    fn unreadable_or_garbled_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let with = |cert: &Path, ca: &Path| TlsArgs {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(garbage.clone()),
            tls_ca: Some(ca.to_owned()),
            ..TlsArgs::default()
        };
        let err = MeshTls::load(&with(&missing, &garbage))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing.pem"),
            "{err}"
        );
        let err = MeshTls::load(&with(&garbage, &garbage))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no PEM certificate") && err.contains("garbage.pem"),
            "{err}"
        );
    }
}
