//! API-key authentication and roles, shared by the services that take API keys (the gateway,
//! the alert manager's write API).
//!
//! Keys are kept only as SHA-256 digests; a principal is named in logs and metrics by its
//! tenant and a short key id (the digest's first 8 hex digits), never by the key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Task API and inference.
    Client,
    /// Everything, including canary changes and model loads.
    Admin,
}

/// The caller behind a valid key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Tenant the key belongs to.
    pub tenant: Arc<str>,
    /// The key's role.
    pub role: Role,
    /// First 8 hex digits of the key's digest: safe to log.
    pub key_id: Arc<str>,
}

/// Why a key store could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyStoreError(String);

/// The known keys, by digest.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Principal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    tenant: String,
    role: Role,
}

impl ApiKeys {
    /// Builds the store from a keys file and `key:tenant:role` entries.
    pub fn load(file: Option<&Path>, inline: &[String]) -> Result<ApiKeys, KeyStoreError> {
        let mut keys = ApiKeys::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| KeyStoreError(format!("cannot read {}: {err}", path.display())))?;
            let parsed: KeysFile = toml::from_str(&text)
                .map_err(|err| KeyStoreError(format!("invalid {}: {err}", path.display())))?;
            for (i, entry) in parsed.key.into_iter().enumerate() {
                let digest = parse_hex_digest(&entry.sha256).ok_or_else(|| {
                    KeyStoreError(format!(
                        "{}: key {} needs a 64-hex-digit sha256",
                        path.display(),
                        i + 1
                    ))
                })?;
                keys.insert(digest, &entry.tenant, entry.role);
            }
        }
        for (i, spec) in inline.iter().filter(|s| !s.is_empty()).enumerate() {
            let mut parts = spec.rsplitn(3, ':');
            let (role, tenant, key) = (parts.next(), parts.next(), parts.next());
            let (Some(role), Some(tenant), Some(key)) = (role, tenant, key) else {
                return Err(KeyStoreError(format!(
                    "API key entry {} is not key:tenant:role",
                    i + 1
                )));
            };
            let role = match role {
                "client" => Role::Client,
                "admin" => Role::Admin,
                other => {
                    return Err(KeyStoreError(format!(
                        "API key entry {} has role '{other}'; expected client or admin",
                        i + 1
                    )));
                }
            };
            if key.is_empty() || tenant.is_empty() {
                return Err(KeyStoreError(format!(
                    "API key entry {} has an empty key or tenant",
                    i + 1
                )));
            }
            keys.insert(Sha256::digest(key.as_bytes()).into(), tenant, role);
        }
        Ok(keys)
    }

    fn insert(&mut self, digest: [u8; 32], tenant: &str, role: Role) {
        let key_id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        self.by_digest.insert(
            digest,
            Principal {
                tenant: Arc::from(tenant),
                role,
                key_id: Arc::from(key_id),
            },
        );
    }

    /// Number of keys known.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no key is known (every protected call will be refused).
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The principal of an `authorization` header value (`Bearer <key>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<&Principal, &'static str> {
        let header = header.ok_or("missing `authorization: Bearer <api key>` metadata")?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or("the authorization metadata must be `Bearer <api key>`")?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest.get(&digest).ok_or("unknown API key")
    }
}

/// The `authorization` metadata value that presents `key` (`Bearer <key>`), or `None` when the
/// key holds characters a header cannot.
pub fn bearer(key: &str) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {key}").parse().ok()
}

/// Why a call was refused by [`ApiKeys::require`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential whose role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
}

impl crate::error::ServiceError for AuthError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            AuthError::Unauthenticated(_) => crate::error::ErrorKind::Unauthenticated,
            AuthError::PermissionDenied(_) => crate::error::ErrorKind::PermissionDenied,
        }
    }
}

impl ApiKeys {
    /// The principal of the call's `authorization: Bearer <key>` metadata when its role is at
    /// least `role`; `what` names the call in the refusal ("model loads and unloads").
    pub fn require(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        role: Role,
        what: &str,
    ) -> Result<&Principal, AuthError> {
        if self.is_empty() {
            return Err(AuthError::Unauthenticated(format!(
                "{what} need an API key, and this server has none configured"
            )));
        }
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        let principal = self
            .authenticate(header)
            .map_err(|why| AuthError::Unauthenticated(format!("{what}: {why}")))?;
        if principal.role < role {
            return Err(AuthError::PermissionDenied(format!(
                "{what} need a key with the {role:?} role; key {} of tenant '{}' is {:?}",
                principal.key_id, principal.tenant, principal.role
            )));
        }
        Ok(principal)
    }
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0_u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_by_digest_with_their_role() {
        let digest: String = Sha256::digest(b"file-key")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        std::fs::write(
            &file,
            format!("[[key]]\nsha256 = \"{digest}\"\ntenant = \"shop-eu\"\nrole = \"admin\"\n"),
        )
        .unwrap();
        let keys = ApiKeys::load(Some(&file), &["inline-key:shop-us:client".to_owned()]).unwrap();
        assert_eq!(keys.len(), 2);
        let admin = keys.authenticate(Some("Bearer file-key")).unwrap();
        assert_eq!((&*admin.tenant, admin.role), ("shop-eu", Role::Admin));
        let client = keys.authenticate(Some("Bearer inline-key")).unwrap();
        assert_eq!((&*client.tenant, client.role), ("shop-us", Role::Client));
        assert!(
            !format!("{client:?}").contains("inline-key"),
            "the key never appears"
        );
        assert_eq!(
            keys.authenticate(Some("Bearer nope")).unwrap_err(),
            "unknown API key"
        );
        assert!(keys.authenticate(None).unwrap_err().contains("missing"));
        assert!(
            keys.authenticate(Some("Basic abc"))
                .unwrap_err()
                .contains("Bearer")
        );
    }

    #[test]
    fn bad_entries_are_refused_with_their_position() {
        let err = ApiKeys::load(None, &["k:t:root".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 1") && err.contains("root"), "{err}");
        assert!(ApiKeys::load(None, &["justakey".to_owned()]).is_err());
    }
}
