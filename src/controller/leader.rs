//! Leader election on a `coordination.k8s.io` Lease, as client-go does it: the leader renews
//! the Lease; another replica takes it over only once it has expired. Writes use the Lease's
//! resourceVersion (compare-and-swap), so two replicas never both win. A leader that cannot
//! renew in time exits, so that two replicas never reconcile at once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

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

/// Waits until this replica leads, then keeps renewing in the background; exits the process
/// when leadership is lost.
pub async fn lead(api: Api<Lease>, name: String, me: String) {
    loop {
        match try_acquire(&api, &name, &me).await {
            Ok(true) => break,
            Ok(false) => tracing::info!(lease = %name, "another replica leads; waiting"),
            Err(e) => tracing::warn!(lease = %name, error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(lease = %name, identity = %me, "leading");
    tokio::spawn(async move {
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match try_acquire(&api, &name, &me).await {
                Ok(true) => last_renewal = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %name, "lost the lease to another replica; exiting");
                    std::process::exit(1);
                }
                Err(e) if last_renewal.elapsed() + RETRY >= LEASE_DURATION => {
                    tracing::error!(lease = %name, error = %e, "could not renew the lease in time; exiting");
                    std::process::exit(1);
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "lease renewal failed; retrying")
                }
            }
        }
    });
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
