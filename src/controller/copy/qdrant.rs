//! `copyMethod: QdrantAPI`: each Qdrant pod makes its own snapshot through its REST API, at
//! its stable address behind the StatefulSet's service; the mover mounts no volume.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;
use kube::api::Api;

use super::method::{Endpoint, Method, ReadFrom};
use crate::api::qdrant::QdrantApi;
use crate::api::snapshot::{ArchiveStatus, Snapshot};
use crate::controller::{Context, Error};

/// `copyMethod: QdrantAPI`.
pub struct ThroughApi;

#[async_trait]
impl Method for ThroughApi {
    async fn source_claim(
        &self,
        ctx: &Context,
        snap: &Snapshot,
        archive: &ArchiveStatus,
    ) -> Result<ReadFrom, Error> {
        let ns = snap.namespace().unwrap_or_default();
        let Some(sts) = &snap.spec.source.stateful_set else {
            return Ok(ReadFrom::Nothing(
                "copyMethod QdrantAPI needs a StatefulSet of Qdrant".into(),
            ));
        };
        Ok(match service_of(ctx, &ns, &sts.name).await? {
            Ok(service) => {
                let api = snap.spec.qdrant.as_ref();
                ReadFrom::Api(endpoint(api, &archive.node, &service, &ns))
            }
            Err(why) => ReadFrom::Nothing(why),
        })
    }
}

/// The service of the StatefulSet `name`, which gives its pods their stable names; or why
/// there is none.
pub async fn service_of(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Result<String, String>, Error> {
    let found = Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await?;
    let service = found.and_then(|s| s.spec.service_name);
    Ok(service.filter(|s| !s.is_empty()).ok_or_else(|| {
        format!(
            "StatefulSet {name} names no serviceName: its pods have no stable address to reach \
             Qdrant's API at"
        )
    }))
}

/// Pod `pod`'s API as `api` says (default: Qdrant's chart's), behind the StatefulSet's
/// service `service` (pure).
pub fn endpoint(api: Option<&QdrantApi>, pod: &str, service: &str, namespace: &str) -> Endpoint {
    let api = api.cloned().unwrap_or_default();
    Endpoint {
        url: api.url(pod, service, namespace),
        api_key: api.api_key_secret.clone(),
        ca: api.ca_secret.clone(),
        timeout_seconds: api.timeout_seconds(),
    }
}
