//! Writes to the API server that every reconciler makes the same way.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;
use super::error::Error;

/// Writes a resource's status (server-side apply, with `apiVersion` and `kind`), on
/// condition that the object is still the version read: a pass that worked from an older one
/// fails with [`Error::Stale`] and changes nothing.
pub async fn patch_status<K>(api: &Api<K>, object: &K, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": meta.resource_version},
        "status": status,
    });
    let name = meta.name.clone().unwrap_or_default();
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Stale),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object `name`; one that is not there is fine. Tells whether it deleted one.
pub async fn delete_if_there<K>(
    api: &Api<K>,
    name: &str,
    params: &kube::api::DeleteParams,
) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Deletes the object `name` of `namespace` (with its dependents in the background); one
/// that is not there is fine.
pub async fn delete_named<K>(client: &Client, namespace: &str, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    delete_if_there(&api, name, &DeleteParams::default()).await?;
    Ok(())
}

/// Creates `object` (as the operator's field manager); one of that name that is already
/// there is fine (made by an earlier pass, or by someone else). The object created, or
/// `None` when one was there.
pub async fn create_if_absent<K>(api: &Api<K>, object: &K) -> Result<Option<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, object).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}
