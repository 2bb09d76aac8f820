//! Leader election on a `coordination.k8s.io` Lease, as client-go does it: the leader renews
//! the Lease; another replica takes it over once it has expired, or at once once the leader
//! released it (on SIGTERM). Writes use the Lease's resourceVersion (compare-and-swap), so
//! two replicas never both win. A leader that cannot renew in time stops leading, so that two
//! replicas never reconcile at once.
//!
//! Not `kube-lease-manager` (the maintained crate for this kube version): its standby sleeps
//! until the Lease it saw would expire, so a released Lease still waits out its duration.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// How long a Lease is valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews, and a candidate retries.
pub const RETRY: Duration = Duration::from_secs(4);

/// What a candidate should do with the Lease as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Someone else holds it.
    Wait { holder: String },
}

/// Decides from the Lease and the time (pure).
pub fn decide(lease: &Lease, me: &str, now: Timestamp) -> Decision {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let expired = match spec.renew_time {
        Some(MicroTime(renewed)) => renewed.as_second() + duration < now.as_second(),
        None => true,
    };
    if holder.is_empty() || expired {
        Decision::Take
    } else {
        Decision::Wait { holder }
    }
}

fn lease_spec(me: &str, now: Timestamp, previous: Option<&LeaseSpec>, taking: bool) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.into()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if taking {
            Some(MicroTime(now))
        } else {
            previous.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt to acquire or renew; `Ok(true)` when we hold the Lease afterwards.
pub async fn try_acquire(api: &Api<Lease>, name: &str, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let Some(lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(lease_spec(me, now, None, true)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let taking = match decide(&lease, me, now) {
        Decision::Wait { .. } => return Ok(false),
        Decision::Take => true,
        Decision::Renew => false,
    };
    let mut updated = lease.clone();
    updated.spec = Some(lease_spec(me, now, lease.spec.as_ref(), taking));
    match api.replace(name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// This replica's hold on the Lease, renewed in the background.
pub struct Leadership {
    api: Api<Lease>,
    name: String,
    me: String,
    /// Becomes true when the Lease is lost (taken over, or not renewed in time).
    lost: watch::Receiver<bool>,
    renewal: tokio::task::JoinHandle<()>,
}

/// Waits until this replica leads, then keeps renewing in the background.
pub async fn acquire(api: Api<Lease>, name: &str, me: &str) -> Leadership {
    loop {
        match try_acquire(&api, name, me).await {
            Ok(true) => break,
            Ok(false) => tracing::info!(lease = %name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(lease = %name, error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(lease = %name, identity = %me, "leading");
    let (lost_tx, lost) = watch::channel(false);
    let renewal = tokio::spawn({
        let (api, name, me) = (api.clone(), name.to_owned(), me.to_owned());
        async move {
            let mut last_renewal = std::time::Instant::now();
            loop {
                tokio::time::sleep(RETRY).await;
                match try_acquire(&api, &name, &me).await {
                    Ok(true) => last_renewal = std::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!(lease = %name, "lost the lease to another replica");
                        break;
                    }
                    Err(e) if last_renewal.elapsed() + RETRY >= LEASE_DURATION => {
                        tracing::error!(lease = %name, error = %e, "could not renew the lease in time");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(lease = %name, error = %e, "lease renewal failed; retrying")
                    }
                }
            }
            lost_tx.send_replace(true);
        }
    });
    Leadership {
        api,
        name: name.to_owned(),
        me: me.to_owned(),
        lost,
        renewal,
    }
}

impl Leadership {
    /// Resolves once this replica no longer leads.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing and gives the Lease up (if still ours), so that a standby leads at its
    /// next try instead of after the Lease expired.
    pub async fn release(self) {
        self.renewal.abort();
        let released = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(&self.me) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            // Conditional on the version read: a Lease someone else took is left alone.
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match released.await {
            Ok(true) => tracing::info!(lease = %self.name, "lease released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "could not release the lease; it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn only_an_expired_or_free_lease_is_taken() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(decide(&lease("me", 999, 15), "me", now), Decision::Renew);
        assert_eq!(
            decide(&lease("other", 990, 15), "me", now),
            Decision::Wait {
                holder: "other".into()
            }
        );
        assert_eq!(decide(&lease("other", 980, 15), "me", now), Decision::Take);
        assert_eq!(decide(&lease("", 999, 15), "me", now), Decision::Take);
        assert_eq!(decide(&Lease::default(), "me", now), Decision::Take);
        let spec = lease_spec("me", now, lease("other", 980, 15).spec.as_ref(), true);
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    }
}
