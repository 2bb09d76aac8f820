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
        let found = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&sts.name)
            .await?;
        let service = found.and_then(|s| s.spec.service_name);
        Ok(match service.filter(|s| !s.is_empty()) {
            Some(service) => ReadFrom::Api(endpoint(snap, &archive.node, &service, &ns)),
            None => ReadFrom::Nothing(format!(
                "StatefulSet {} names no serviceName: its pods have no stable address to reach \
                 Qdrant's API at",
                sts.name
            )),
        })
    }
}

/// Pod `pod`'s API, behind the StatefulSet's service `service` (pure).
pub fn endpoint(snap: &Snapshot, pod: &str, service: &str, namespace: &str) -> Endpoint {
    let api = snap.spec.qdrant.clone().unwrap_or_default();
    Endpoint {
        url: api.url(pod, service, namespace),
        api_key: api.api_key_secret.clone(),
        timeout_seconds: QdrantApi::timeout_seconds(&api),
    }
}
