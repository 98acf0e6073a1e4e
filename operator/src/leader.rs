//! Leader election on a `coordination.k8s.io` Lease (through `kube-lease-manager`), so that
//! several replicas of the operator are safe: only the holder runs the controllers.

use std::future::Future;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

/// Which Lease, and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Holder identity (the pod name).
    pub identity: String,
    /// Seconds a lock stays valid without renewal.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

impl LeaseSettings {
    /// Defaults: 15 s leases renewed 5 s before they expire.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            duration_seconds: 15,
            grace_seconds: 5,
        }
    }
}

/// Waits for the lease, then runs `work()` until it ends, the lease is lost (an error: the
/// process should exit so that a standby takes over) or `shutdown` resolves. The lease is
/// released on the way out so that a standby takes over at once. `on_standby` runs once the
/// lease manager is up (this replica can take over from then on).
pub async fn run_as_leader<W, F, S>(
    client: Client,
    lease: LeaseSettings,
    on_standby: impl FnOnce(),
    work: W,
    shutdown: S,
) -> anyhow::Result<()>
where
    W: FnOnce() -> F,
    F: Future<Output = anyhow::Result<()>>,
    S: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await
        .with_context(|| format!("cannot use Lease {}/{}", lease.namespace, lease.name))?;
    let (mut leader, lease_task) = manager.watch().await;
    on_standby();
    info!(lease = %format!("{}/{}", lease.namespace, lease.name), identity = %lease.identity, "waiting for leadership");

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        acquired = async {
            while !*leader.borrow_and_update() {
                leader.changed().await.context("lease manager stopped")?;
            }
            anyhow::Ok(())
        } => match acquired {
            Err(e) => Err(e),
            Ok(()) => {
                info!("became leader");
                let lost = async {
                    loop {
                        if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    r = work() => r,
                    _ = lost => Err(anyhow::anyhow!("lost the leader lease; exiting so a standby takes over")),
                    _ = &mut shutdown => { info!("shutting down"); Ok(()) }
                }
            }
        },
        _ = &mut shutdown => { info!("shutting down before becoming leader"); Ok(()) }
    };

    // Closing the channel stops the lease task, which hands the manager back for the release.
    drop(leader);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "failed to release the lease");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "lease manager failed"),
        Err(e) => warn!(error = %e, "lease task failed"),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use super::*;
    use crate::fixtures::{ApiServerVerifier, NS};

    #[tokio::test]
    async fn work_runs_once_the_lease_is_held_and_the_lease_is_released_after() {
        let (client, verifier) = ApiServerVerifier::new();
        let state = verifier.state.clone();
        let server = verifier.run();
        let standby = Arc::new(AtomicBool::new(false));
        let ran = Arc::new(AtomicBool::new(false));
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kinfer-operator");
        let (state2, ran2, standby2) = (state.clone(), ran.clone(), standby.clone());
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            run_as_leader(
                client,
                LeaseSettings::new("kinfer-operator", NS, "pod-a"),
                move || standby2.store(true, Ordering::SeqCst),
                move || async move {
                    let holder = state2.lock().unwrap().objects[&path]["spec"]["holderIdentity"].clone();
                    assert_eq!(holder, "pod-a");
                    ran2.store(true, Ordering::SeqCst);
                    Ok(())
                },
                std::future::pending(),
            ),
        )
        .await
        .expect("leadership in time");
        result.unwrap();
        assert!(standby.load(Ordering::SeqCst) && ran.load(Ordering::SeqCst));
        let lease = state.lock().unwrap().objects
            [&format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kinfer-operator")]
            .clone();
        assert!(lease["spec"].get("holderIdentity").is_none(), "released: {lease}");
        server.abort();
    }

    #[tokio::test]
    async fn shutdown_before_leadership_returns_without_running_work() {
        let (client, verifier) = ApiServerVerifier::new();
        let state = verifier.state.clone();
        // someone else holds a fresh lease
        let now = k8s_openapi::jiff::Timestamp::now();
        state.lock().unwrap().put(
            &format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kinfer-operator"),
            serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "kinfer-operator", "namespace": NS, "uid": "l1"},
                "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 3600,
                    "acquireTime": now.to_string(), "renewTime": now.to_string()}}),
        );
        let server = verifier.run();
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            run_as_leader(
                client,
                LeaseSettings::new("kinfer-operator", NS, "pod-a"),
                || {},
                || async { panic!("work must not run without the lease") },
                tokio::time::sleep(Duration::from_millis(300)),
            ),
        )
        .await
        .expect("returned in time");
        result.unwrap();
        server.abort();
    }
}
