//! How the operator reaches the REST API of each Qdrant pod (`copyMethod: QdrantAPI`), with
//! the defaults of Qdrant's Helm chart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The REST API of each pod of the StatefulSet, at
/// `<scheme>://<pod>.<the StatefulSet's serviceName>.<namespace>.svc:<port>` (the stable name
/// of each pod of a StatefulSet; Qdrant's chart names its headless service so).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QdrantApi {
    /// The REST port (default 6333, as Qdrant's chart sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// `http` (default) or `https` (with `config.service.enable_tls` in Qdrant's chart; the
    /// pods' certificate must name their address above and be signed by a CA of `caSecret`
    /// or of the mover image).
    #[serde(default)]
    pub scheme: ApiScheme,
    /// With `https`: the Secret key holding the PEM certificates of the CAs that sign the
    /// pods' certificate (default key `ca.crt`, as cert-manager names it), trusted besides the
    /// mover image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecret>,
    /// The Secret key holding the api-key (Qdrant's chart with `apiKey` set: the Secret
    /// `<release>-apikey`, key `api-key`). It reaches movers as an environment variable, never
    /// in arguments, logs, events or status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<SecretKey>,
    /// How long one call to Qdrant may take, in seconds (making the snapshot of a large
    /// collection takes minutes; default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u64>,
}

/// Default REST port of Qdrant.
pub const DEFAULT_PORT: u16 = 6333;
/// Default timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 3600;

/// The scheme of Qdrant's REST API.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiScheme {
    #[default]
    Http,
    Https,
}

/// A key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key (default `api-key`, as Qdrant's chart names it).
    #[serde(default = "api_key_key")]
    pub key: String,
}

fn api_key_key() -> String {
    "api-key".into()
}

/// A key of a Secret in the resource's namespace holding PEM certificates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key (default `ca.crt`).
    #[serde(default = "ca_key")]
    pub key: String,
}

fn ca_key() -> String {
    "ca.crt".into()
}

impl QdrantApi {
    /// The URL of pod `pod`'s API, behind the StatefulSet's service `service` in `namespace`.
    pub fn url(&self, pod: &str, service: &str, namespace: &str) -> String {
        let scheme = match self.scheme {
            ApiScheme::Http => "http",
            ApiScheme::Https => "https",
        };
        let port = self.port.unwrap_or(DEFAULT_PORT);
        format!("{scheme}://{pod}.{service}.{namespace}.svc:{port}")
    }

    /// How long one call may take, in seconds.
    pub fn timeout_seconds(&self) -> u64 {
        self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS)
    }
}
