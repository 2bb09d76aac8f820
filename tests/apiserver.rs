//! The controller against a real Kubernetes API server (the one `KUBECONFIG` names; skipped
//! without it). No kubelet or Job controller is needed: the test plays their part, creating
//! the mover's pod and writing the pod's and the Job's status, so it also runs against a bare
//! kube-apiserver + etcd. Against a full cluster use tests/e2e instead.

mod common;
#[path = "apiserver/load.rs"]
mod load;
#[path = "apiserver/progress.rs"]
mod progress;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use snapshot_operator::api::{Snapshot, SnapshotRestore};
use snapshot_operator::controller::config::OperatorConfig;
use snapshot_operator::controller::kernel::patch_status;
use snapshot_operator::controller::metrics::Metrics;
use snapshot_operator::controller::{Error, controllers, leader, mover};
use tokio_util::sync::CancellationToken;

/// The API server's client; `None` (the tier skipped, and said so) without one, unless the
/// test script started one (`SNAPSHOT_OPERATOR_TEST_APISERVER=required`): then its absence
/// fails the test.
async fn client_or_skip() -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        assert!(
            std::env::var("SNAPSHOT_OPERATOR_TEST_APISERVER").as_deref() != Ok("required"),
            "this tier needs the API server the test script started, and KUBECONFIG is not set"
        );
        eprintln!(
            "SKIPPED: KUBECONFIG is not set (`make test` starts a real kube-apiserver for this \
             tier; or point KUBECONFIG at one)"
        );
        return None;
    }
    snapshot_operator::tls::install_crypto_provider();
    Some(
        Client::try_default()
            .await
            .expect("the API server in KUBECONFIG answers"),
    )
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..120 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Plays the Job controller and the kubelet: the Job's pod ran and wrote `message`.
async fn finish_job(client: &Client, ns: &str, job: &Job, message: &str, succeeded: bool) {
    run_pod(client, ns, job, "pod", message, succeeded, true).await;
    complete_job(client, ns, job, succeeded).await;
}

/// Plays the kubelet: a pod named `<job>-<suffix>` carrying the Job's labels ran and ended
/// with `message`; `owned`: the Job controls it (as the Job controller makes its pods).
async fn run_pod(
    client: &Client,
    ns: &str,
    job: &Job,
    suffix: &str,
    message: &str,
    succeeded: bool,
    owned: bool,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = format!("{}-{suffix}", job.name_any());
    let mut labels = job.labels().clone();
    labels.insert("job-name".into(), job.name_any());
    let mut meta = json!({"name": name, "labels": labels});
    if owned {
        meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
            "name": job.name_any(), "uid": job.uid().unwrap(), "controller": true}]);
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": meta,
        "spec": {"restartPolicy": "Never", "containers": [{"name": "mover", "image": "mover"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {"phase": if succeeded { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "mover", "image": "mover", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 }, "message": message,
                "startedAt": now, "finishedAt": now}}}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Plays the Job controller: the Job finished. The operator may have deleted it already,
/// its result taken from the pod.
async fn complete_job(client: &Client, ns: &str, job: &Job, succeeded: bool) {
    match try_complete_job(client, ns, job, succeeded).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("completing {}: {e}", job.name_any()),
    }
}

/// [`complete_job`], which fails when the Job is gone.
async fn try_complete_job(
    client: &Client,
    ns: &str,
    job: &Job,
    succeeded: bool,
) -> kube::Result<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now().to_string();
    let conditions = if succeeded {
        json!([{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
               {"type": "Complete", "status": "True", "lastTransitionTime": now}])
    } else {
        json!([{"type": "FailureTarget", "status": "True", "lastTransitionTime": now},
               {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now}])
    };
    let mut status = json!({"status": {"startTime": now, "conditions": conditions}});
    if succeeded {
        status["status"]["completionTime"] = json!(now);
        status["status"]["succeeded"] = json!(1);
    } else {
        status["status"]["failed"] = json!(1);
    }
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
}

/// One test at a time: each runs a controller (or the operator binary) that reconciles
/// every namespace, and one must not act on another's resources.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A controller running against the API server (as one operator replica would), with a
/// clock that runs ahead by what a test sets.
struct Running {
    client: Client,
    ahead: Arc<std::sync::atomic::AtomicI64>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    controller: tokio::task::JoinHandle<()>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Running {
    /// `None` without an API server (the tier is skipped, and says so).
    async fn start() -> Option<Self> {
        Self::start_with(json!({})).await
    }

    /// With these settings over the tests' own.
    async fn start_with(settings: serde_json::Value) -> Option<Self> {
        let client = client_or_skip().await?;
        let serial = serial().await;
        install_crds(&client).await;
        // Movers never finish here unless a test finishes them: no cap from earlier runs'
        // Jobs.
        let mut config = json!({
            "defaultStorage": {"local": {"persistentVolumeClaim": {"claimName": "backups"}}},
            "maxConcurrentMovers": 1000,
            "maxConcurrentMoversPerNamespace": 2,
        });
        for (key, value) in settings.as_object().expect("settings are an object") {
            config[key] = value.clone();
        }
        let config: OperatorConfig = serde_json::from_value(config).unwrap();
        if let Ok(filter) = std::env::var("RUST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let operator = operator_client(&client).await;
        served::<Snapshot>(&operator).await;
        served::<SnapshotRestore>(&operator).await;
        served::<snapshot_operator::api::SnapshotSchedule>(&operator).await;
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let ahead = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let clock = {
            let ahead = ahead.clone();
            Arc::new(move || {
                let seconds = ahead.load(std::sync::atomic::Ordering::SeqCst);
                jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)
            })
        };
        let controller = tokio::spawn(controllers(
            operator,
            config,
            metrics.clone(),
            "it",
            clock,
            shutdown.clone(),
        ));
        Some(Self {
            client,
            ahead,
            metrics,
            shutdown,
            controller,
            _serial: serial,
        })
    }

    /// Every list and watch the controller needed was allowed (a missing verb in the
    /// chart's RBAC shows here: lists alone would keep it working, slowly); asked to stop,
    /// it stops.
    async fn stop(self) {
        let text = self.metrics.render();
        assert!(
            !text.contains("snapshot_operator_watch_errors_total{"),
            "{text}"
        );
        self.shutdown.cancel();
        let asked = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(100), self.controller)
            .await
            .expect("the controller stops when asked")
            .unwrap();
        eprintln!("stopped {:?} after being asked", asked.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_runs_its_movers_reports_ready_and_cleans_up() {
    let Some(run) = Running::start().await else {
        return;
    };
    snapshot_scenario(&run.client).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_stops_the_workload_runs_movers_and_starts_it_again() {
    let Some(run) = Running::start().await else {
        return;
    };
    restore_scenario(&run.client).await;
    // Each mover counted once, whatever passes saw it finish (one restored 100 bytes, the
    // other skipped).
    let text = run.metrics.render();
    let movers = r#"snapshot_operator_mover_duration_seconds_count{operation="restore"} 2"#;
    assert!(text.contains(movers), "{text}");
    assert!(
        text.contains("snapshot_operator_restored_bytes_total 100\n"),
        "{text}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_snapshot_stops_the_workload_for_its_movers() {
    let Some(run) = Running::start().await else {
        return;
    };
    stop_scenario(&run.client).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_snapshot_reads_a_clone_of_the_claim() {
    let Some(run) = Running::start().await else {
        return;
    };
    clone_scenario(&run.client).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_snapshot_snapshot_reads_a_claim_made_from_it() {
    let Some(run) = Running::start().await else {
        return;
    };
    volume_snapshot_scenario(&run.client).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compete_for_the_slots() {
    let Some(run) = Running::start().await else {
        return;
    };
    slots_scenario(&run.client).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_takes_its_snapshots_and_prunes_them() {
    let Some(run) = Running::start().await else {
        return;
    };
    schedule_scenario(&run.client, &run.ahead, &run.metrics).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_deleted_once_its_ttl_has_passed_on_the_controller_s_clock() {
    let Some(run) = Running::start().await else {
        return;
    };
    let client = &run.client;
    let ns = format!("ttl-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let retain = json!({"ttl": "1h", "deletionPolicy": "Retain"});
    let short = create_snapshot_with(&snapshots, "short", retain).await;
    let longer = json!({"ttl": "3h", "deletionPolicy": "Retain"});
    let kept = create_snapshot_with(&snapshots, "kept", longer).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for snap in [&short, &kept] {
        let job = made_for(&jobs, &snap.uid().unwrap(), "its mover").await;
        let report = json!({"name": "a.snapshot", "key": "products/a.snapshot", "size": 1,
            "checksum": "ab".repeat(32)});
        finish_job(client, &ns, &job, &report.to_string(), true).await;
    }
    let done = eventually("short Succeeded, with its expiry", || async {
        let status = snapshots.get("short").await.unwrap().status?;
        (status.phase == Some(snapshot_operator::api::snapshot::Phase::Succeeded)).then_some(status)
    })
    .await;
    let created = short.metadata.creation_timestamp.clone().unwrap().0;
    assert_eq!(
        done.expires_at.map(|t| t.0),
        Some(created + jiff::SignedDuration::from_hours(1))
    );

    // Two hours on, on the controller's clock: the next look at each deletes the one kept
    // for an hour, not the one kept for three; four hours on, that one too.
    let look_again = |n: &'static str, names: &'static [&'static str]| {
        let snapshots = snapshots.clone();
        async move {
            let poke = json!({"metadata": {"annotations": {"test/poke": n}}});
            for name in names {
                let params = PatchParams::default();
                snapshots
                    .patch(name, &params, &Patch::Merge(&poke))
                    .await
                    .unwrap();
            }
        }
    };
    run.ahead.store(7200, std::sync::atomic::Ordering::SeqCst);
    look_again("1", &["short", "kept"]).await;
    gone(&snapshots, "short").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(snapshots.get_opt("kept").await.unwrap().is_some());
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let said = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        said.iter().any(|e| e.reason.as_deref() == Some("Expired")),
        "{said:?}"
    );
    run.ahead
        .store(4 * 3600, std::sync::atomic::Ordering::SeqCst);
    look_again("2", &["kept"]).await;
    gone(&snapshots, "kept").await;
    namespace.delete().await;
    run.stop().await;
}

/// The operator binary is the only one running for the import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_import_brings_back_snapshots_node_by_node() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let _serial = serial().await;
    install_crds(&client).await;
    import_scenario(&client).await;
}

/// The operator binary under load: what a mover slot costs beyond its mover, and deleting
/// with delete movers against deleting through the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_snapshots_share_four_slots_and_are_deleted_both_ways() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let _serial = serial().await;
    install_crds(&client).await;
    load::load_scenario(&client).await;
}

/// Two replicas: one leads, the other waits; when the leader releases the Lease (as it does
/// on SIGTERM), the other leads at its next try, not after the Lease expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_passes_to_the_standby_at_once() {
    let Some(admin) = client_or_skip().await else {
        return;
    };
    let _serial = serial().await;
    let leases: Api<Lease> = Api::namespaced(operator_client(&admin).await, "snapshot-system");
    let name = format!("lease-it-{}", std::process::id());
    let first = leader::acquire(leases.clone(), &name, "replica-a").await;
    let standby = tokio::spawn({
        let (leases, name) = (leases.clone(), name.clone());
        async move { leader::acquire(leases, &name, "replica-b").await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!standby.is_finished(), "one leader at a time");
    let released = std::time::Instant::now();
    first.release().await;
    // The Lease was renewed at most 4 s before: it would expire 11 s or more later.
    let second = tokio::time::timeout(Duration::from_secs(8), standby)
        .await
        .expect("the standby leads well before the Lease would have expired")
        .unwrap();
    eprintln!("the standby led {:?} after the release", released.elapsed());
    let holder = leases
        .get(&name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("replica-b"));
    second.release().await;
}

/// The operator binary: it leads, and on SIGTERM it stops with status 0 and leaves the
/// Lease free for the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_operator_cleanly_and_frees_the_lease() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    let _serial = serial().await;
    install_crds(&client).await;
    let ns = format!("sigterm-it-{}", std::process::id());
    let namespace = TestNamespace::create(&client, &ns).await;
    let operator = std::process::Command::new(env!("CARGO_BIN_EXE_snapshot-operator"))
        .args([
            "controller",
            "--metrics-address",
            "127.0.0.1:0",
            "--lease-namespace",
            &ns,
        ])
        .env_remove("POD_NAME")
        .spawn()
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = eventually("the operator to lead", || async {
        leases
            .get_opt("snapshot-operator")
            .await
            .unwrap()?
            .spec?
            .holder_identity
    })
    .await;
    assert!(holder.starts_with("snapshot-operator-"), "{holder}");
    stops_cleanly_on_sigterm(operator).await;
    let lease = leases.get("snapshot-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "released");
    namespace.delete().await;
}

/// The chart's service account, with the chart's RBAC applied (rendered by the test script
/// into `SNAPSHOT_OPERATOR_TEST_RBAC`), as a user and groups to impersonate; `None` without
/// it (the admin's rights are used, and the RBAC goes unchecked, as printed).
async fn chart_account(admin: &Client) -> Option<(String, Vec<String>)> {
    let Some(path) = std::env::var_os("SNAPSHOT_OPERATOR_TEST_RBAC") else {
        eprintln!("RBAC not checked: SNAPSHOT_OPERATOR_TEST_RBAC is not set (`make test` sets it)");
        return None;
    };
    let docs: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(path).expect("the rendered RBAC")).unwrap();
    let ns = "snapshot-system";
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    if namespaces.get_opt(ns).await.unwrap().is_none() {
        TestNamespace::create(admin, ns).await;
    }
    let apply = PatchParams::apply("snapshot-operator-test").force();
    let mut account = None;
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" => {
                let api: Api<ClusterRole> = Api::all(admin.clone());
                api.patch(&name, &apply, &Patch::Apply(&doc)).await.unwrap();
            }
            "ClusterRoleBinding" => {
                account = doc["subjects"][0]["name"].as_str().map(str::to_owned);
                let api: Api<ClusterRoleBinding> = Api::all(admin.clone());
                api.patch(&name, &apply, &Patch::Apply(&doc)).await.unwrap();
            }
            "Role" => {
                let api: Api<Role> = Api::namespaced(admin.clone(), ns);
                api.patch(&name, &apply, &Patch::Apply(&doc)).await.unwrap();
            }
            "RoleBinding" => {
                let api: Api<RoleBinding> = Api::namespaced(admin.clone(), ns);
                api.patch(&name, &apply, &Patch::Apply(&doc)).await.unwrap();
            }
            other => panic!("unexpected {other} in the chart's RBAC"),
        }
    }
    let account = account.expect("the chart binds its ClusterRole to a service account");
    eprintln!("the controller runs as the chart's service account {ns}/{account}");
    Some((
        format!("system:serviceaccount:{ns}:{account}"),
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    ))
}

/// The operator binary with `settings`, as the chart's service account, its own S3
/// credentials those of the test S3 server (written below `work`).
async fn operator_binary(
    client: &Client,
    work: &Path,
    s3: &common::S3Env,
    settings: &serde_json::Value,
) -> std::process::Child {
    let config = work.join("operator.json");
    std::fs::write(&config, settings.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_snapshot-operator"))
        .args(["controller", "--metrics-address", "127.0.0.1:0"])
        .args(["--leader-election", "false", "--operator-config"])
        .arg(&config)
        .env("KUBECONFIG", operator_kubeconfig(client, work).await)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("SNAPSHOT_OPERATOR_LOG", "warn")
        .spawn()
        .unwrap()
}

/// Sends SIGTERM to the operator binary; it must exit with status 0.
async fn stops_cleanly_on_sigterm(mut operator: std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&operator),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || operator.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// A client acting as the chart's service account (see [`chart_account`]): a permission the
/// chart lacks fails here.
async fn operator_client(admin: &Client) -> Client {
    let Some((user, groups)) = chart_account(admin).await else {
        return admin.clone();
    };
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user);
    config.auth_info.impersonate_groups = Some(groups);
    Client::try_from(config).unwrap()
}

/// A kubeconfig for the operator binary acting as the chart's service account, in `dir`.
async fn operator_kubeconfig(admin: &Client, dir: &std::path::Path) -> std::path::PathBuf {
    let mut kubeconfig = kube::config::Kubeconfig::read().unwrap();
    if let Some((user, groups)) = chart_account(admin).await {
        for named in &mut kubeconfig.auth_infos {
            let auth = named.auth_info.get_or_insert_with(Default::default);
            auth.impersonate = Some(user.clone());
            auth.impersonate_groups = Some(groups.clone());
        }
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    path
}

/// The few fields of the CSI type the operator uses (the test plays its controller), in its
/// group: a Kubernetes group, which needs the approval annotation the real CRD carries.
fn volume_snapshot_crd() -> CustomResourceDefinition {
    let mut crd = snapshot_operator::controller::copy::snapshot::VolumeSnapshot::crd();
    crd.annotations_mut().insert(
        "api-approved.kubernetes.io".into(),
        "https://github.com/kubernetes-csi/external-snapshotter/pull/419".into(),
    );
    crd
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        Snapshot::crd(),
        SnapshotRestore::crd(),
        snapshot_operator::api::SnapshotSchedule::crd(),
        volume_snapshot_crd(),
    ] {
        // Create, not server-side apply: an old API server drops the CEL rules it does not
        // know on create, but refuses them in an apply patch.
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let mut replacement = crd.clone();
                replacement.metadata.resource_version = crds
                    .get(&crd.name_any())
                    .await
                    .unwrap()
                    .metadata
                    .resource_version;
                crds.replace(&crd.name_any(), &PostParams::default(), &replacement)
                    .await
                    .unwrap();
            }
            Err(e) => panic!("installing the CRD: {e}"),
        }
    }
    served::<Snapshot>(client).await;
    served::<SnapshotRestore>(client).await;
    served::<snapshot_operator::api::SnapshotSchedule>(client).await;
}

/// Waits until the API server serves `K` to `client` (a CRD just created is Established a
/// moment before its list answers, and a role just bound a moment before it is enforced: a
/// controller started in between counts a failed watch).
async fn served<K>(client: &Client)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    for _ in 0..100 {
        if api.list(&ListParams::default().limit(1)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} is not served 10 s after its CRD was installed",
        K::plural(&())
    );
}

/// A StatefulSet `name` of two replicas with the claim template `data` (no pods: there is
/// no kubelet); its API.
async fn create_statefulset(
    client: &Client,
    ns: &str,
    name: &str,
) -> Api<k8s_openapi::api::apps::v1::StatefulSet> {
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), ns);
    let sts = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "replicas": 2, "serviceName": name, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app"}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
    .unwrap();
    sets.create(&PostParams::default(), &sts).await.unwrap();
    sets
}

/// A namespace of one scenario.
struct TestNamespace {
    api: Api<Namespace>,
    name: String,
}

impl TestNamespace {
    async fn create(client: &Client, name: &str) -> Self {
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
        Self {
            api,
            name: name.to_owned(),
        }
    }

    /// A namespace holding these claims.
    async fn with_claims(client: &Client, name: &str, claims: &[&str]) -> Self {
        let namespace = Self::create(client, name).await;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), name);
        for claim in claims {
            let pvc = serde_json::from_value(json!({"metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap();
            api.create(&PostParams::default(), &pvc).await.unwrap();
        }
        namespace
    }

    async fn delete(self) {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// A Snapshot `name` of the collection `products` on the claim `data`.
async fn create_snapshot(snapshots: &Api<Snapshot>, name: &str) -> Snapshot {
    create_snapshot_with(snapshots, name, json!({})).await
}

/// A Snapshot `name` of the collection `products` on the claim `data`, with the spec fields
/// of `more`.
async fn create_snapshot_with(
    snapshots: &Api<Snapshot>,
    name: &str,
    more: serde_json::Value,
) -> Snapshot {
    let mut spec = json!({"source": {"persistentVolumeClaim": {"claimName": "data"}}, "collection": "products"});
    for (field, value) in more.as_object().unwrap() {
        spec[field] = value.clone();
    }
    let snap: Snapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    snapshots
        .create(&PostParams::default(), &snap)
        .await
        .unwrap()
}

/// Waits until the Snapshot `name` is gone.
async fn gone(snapshots: &Api<Snapshot>, name: &str) {
    let what = format!("Snapshot {name} to be gone");
    eventually(&what, || async {
        let left = snapshots.get_opt(name).await.unwrap();
        left.is_none().then_some(())
    })
    .await;
}

/// The only mover of the resource `uid` reads the claim `claim`, read-only; it is finished
/// here with a report.
async fn the_mover_reads(client: &Client, ns: &str, uid: &str, claim: &str) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = &movers_of(&jobs, uid, 1).await[0];
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let volume = pod.volumes.unwrap()[0]
        .persistent_volume_claim
        .clone()
        .unwrap();
    assert_eq!(
        (volume.claim_name.as_str(), volume.read_only),
        (claim, Some(true))
    );
    let report = json!({"name": "x.snapshot", "key": "products/x.snapshot", "size": 1});
    finish_job(client, ns, job, &report.to_string(), true).await;
}

/// The first object labelled as made for the resource `uid`, once there is one.
async fn made_for<K>(api: &Api<K>, uid: &str, what: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let by_owner = format!("{}={uid}", mover::OWNER_UID);
    eventually(what, || async {
        let found = api
            .list(&ListParams::default().labels(&by_owner))
            .await
            .unwrap();
        found.items.into_iter().next()
    })
    .await
}

/// The claim `name` is deleted: gone, or held only by Kubernetes' protection (no controller
/// runs here to lift it).
async fn claim_deleted(claims: &Api<PersistentVolumeClaim>, name: &str) {
    let left = claims.get_opt(name).await.unwrap();
    assert!(
        left.as_ref()
            .is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        "{left:?}"
    );
}

async fn snapshot_scenario(client: &Client) {
    let ns = format!("snapshot-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;

    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    create_snapshot(&snapshots, "data-1").await;

    // Invalid specs are refused by the API server's schema.
    let invalid: Snapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "bad"},
        "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}}, "collection": "a/b"},
    }))
    .unwrap();
    assert!(
        snapshots
            .create(&PostParams::default(), &invalid)
            .await
            .is_err()
    );

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = eventually("the mover Job", || async {
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    let pod_spec = job.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    assert_eq!(
        pod_spec.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap()
            .claim_name,
        "data"
    );
    let running = snapshots.get("data-1").await.unwrap();
    assert_eq!(running.finalizers(), ["snapshot-operator.dev/cleanup"]);

    let report = json!({"name": "products-data-2026-11-25-10-00-00.snapshot",
        "key": "products/products-data-2026-11-25-10-00-00.snapshot", "size": 4096, "checksum": "ab".repeat(32)});
    // Any pod can carry the Job's labels and a forged report; only the Job's own pods speak.
    let forged = json!({"name": "x.snapshot", "key": "other/x.snapshot", "size": 1});
    run_pod(
        client,
        &ns,
        &job,
        "impostor",
        &forged.to_string(),
        true,
        false,
    )
    .await;
    // The retry succeeded; the failed first attempt is created and finishes after it, in
    // the same second: the retry's report counts, whatever the order.
    run_pod(client, &ns, &job, "retry", &report.to_string(), true, true).await;
    run_pod(client, &ns, &job, "first", "connection reset", false, true).await;
    complete_job(client, &ns, &job, true).await;
    let ready = eventually("Ready=True", || async {
        let s = snapshots.get("data-1").await.unwrap();
        let status = s.status.clone()?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(status)
    })
    .await;
    assert_eq!(
        ready.archives[0].location.as_deref(),
        Some(format!(
            "pvc://backups/{ns}/products/products-data-2026-11-25-10-00-00.snapshot"
        ))
        .as_deref(),
        "in the namespace's part of the default storage"
    );
    assert_eq!(ready.archives[0].size, Some(4096));
    assert_eq!(
        ready.archives[0].key.as_deref(),
        Some("products/products-data-2026-11-25-10-00-00.snapshot")
    );
    // Its result recorded, the finished mover Job goes.
    eventually("the finished mover Job to be removed", || async {
        jobs.get_opt(&job.name_any())
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // Deleting: a delete mover runs before the finalizer goes.
    snapshots
        .delete("data-1", &DeleteParams::default())
        .await
        .unwrap();
    let delete_job = eventually("the delete Job", || async {
        jobs.list(&ListParams::default().labels(&format!("{}=delete", mover::OPERATION)))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    let args = delete_job
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(
        args,
        [
            "mover",
            "delete",
            "--",
            "products/products-data-2026-11-25-10-00-00.snapshot"
        ]
    );
    assert!(
        snapshots.get_opt("data-1").await.unwrap().is_some(),
        "the finalizer holds it"
    );
    finish_job(client, &ns, &delete_job, "{}", true).await;
    gone(&snapshots, "data-1").await;

    namespace.delete().await;
}

async fn restore_scenario(client: &Client) {
    let ns = format!("restore-it-{}", std::process::id());
    let namespace = TestNamespace::create(client, &ns).await;
    let sets = create_statefulset(client, &ns, "db").await;

    let restores: Api<SnapshotRestore> = Api::namespaced(client.clone(), &ns);
    let restore: SnapshotRestore = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
        "metadata": {"name": "r"},
        "spec": {"source": {"location": "s3://snapshots/products/products-a.snapshot"},
                 "target": {"statefulSet": {"name": "db", "volumeClaimTemplate": "data"}},
                 "collection": "products", "priority": "snapshot", "stopWorkload": true,
                 "storage": {"s3": {"bucket": "snapshots", "credentialsSecret": {"name": "creds"}}}},
    }))
    .unwrap();
    let created = restores
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();

    // Replicas recorded, then scaled to zero.
    eventually("the workload to be stopped", || async {
        let recorded = restores.get("r").await.unwrap().status?.stopped_replicas;
        // A zero count is left out of the answer (omitempty).
        let replicas = sets
            .get_scale("db")
            .await
            .unwrap()
            .spec?
            .replicas
            .unwrap_or(0);
        (recorded == Some(2) && replicas == 0).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let movers = eventually("two restore movers", || async {
        let items = jobs.list(&ListParams::default()).await.unwrap().items;
        (items.len() == 2).then_some(items)
    })
    .await;
    for job in &movers {
        let pod = job.spec.clone().unwrap().template.spec.unwrap();
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_ne!(claim.read_only, Some(true), "restore movers write");
        let args = pod.containers[0].args.clone().unwrap();
        assert!(
            args.contains(&"s3://snapshots/products/products-a.snapshot".to_string()),
            "{args:?}"
        );
    }
    let outcome = |job: &Job| {
        if job.labels()[mover::NODE] == "db-0" {
            json!({"outcome": "Restored", "size": 100}).to_string()
        } else {
            json!({"outcome": "Skipped", "reason": "collection \"products\" already exists on this node", "size": 100}).to_string()
        }
    };
    for job in &movers {
        finish_job(client, &ns, job, &outcome(job), true).await;
    }
    let status = eventually("Succeeded", || async {
        let status = restores.get("r").await.unwrap().status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(status)
    })
    .await;
    let phases: Vec<String> = status
        .nodes
        .iter()
        .map(|n| format!("{}={:?}", n.node, n.phase))
        .collect();
    assert_eq!(phases, ["db-0=Restored", "db-1=Skipped"]);
    assert_eq!(
        sets.get_scale("db").await.unwrap().spec.unwrap().replicas,
        Some(2),
        "started again"
    );
    // What a pass that read the restore before the movers finished would write is refused:
    // the API server holds status writes to the version read, so no pass counts a mover
    // whose result another pass wrote.
    let stale = patch_status(&restores, &created, &status).await;
    assert!(matches!(stale, Err(Error::Stale)), "{stale:?}");

    namespace.delete().await;
}

/// Five Snapshots in a namespace capped at two movers: never more than two run, a Job that
/// only carries the operator's labels takes no slot, a slot that frees goes to a waiting
/// node at once (not at its next periodic look, 10 s later), and delete movers keep to the
/// cap too.
async fn slots_scenario(client: &Client) {
    let ns = format!("slots-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // A Job anyone could create, with the operator's labels: it must not hold a slot.
    let labels = mover::labels("no-such-owner", "snapshot", "x");
    let foreign: Job =
        serde_json::from_value(json!({"metadata": {"name": "foreign", "labels": labels},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox"}]}}}}))
        .unwrap();
    jobs.create(&PostParams::default(), &foreign).await.unwrap();

    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    for i in 0..5 {
        create_snapshot(&snapshots, &format!("s{i}")).await;
    }
    let movers = |jobs: Api<Job>| async move {
        jobs.list(&ListParams::default().labels(mover::OWNER_UID))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.name_any() != "foreign")
            .collect::<Vec<Job>>()
    };
    let unfinished = |all: &[Job]| -> Vec<Job> {
        all.iter()
            .filter(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_none()
            })
            .cloned()
            .collect()
    };
    let mut finished = 0;
    let mut waits = Vec::new();
    while finished < 5 {
        let running = eventually("two movers running (or the last ones)", || async {
            let running = unfinished(&movers(jobs.clone()).await);
            (running.len() == 2.min(5 - finished)).then_some(running)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = unfinished(&movers(jobs.clone()).await);
        assert!(again.len() <= 2, "the cap holds: {} running", again.len());
        let job = &running[0];
        let snapshot = job.owner_references()[0].name.clone();
        let report = json!({"name": format!("{snapshot}.snapshot"), "key": format!("products/{snapshot}.snapshot"), "size": 1});
        let freed = std::time::Instant::now();
        finish_job(client, &ns, job, &report.to_string(), true).await;
        finished += 1;
        if finished <= 3 {
            // A node was waiting: it gets the slot without waiting for its next look.
            eventually("the next mover", || async {
                let all = movers(jobs.clone()).await;
                (unfinished(&all).len() == 2).then_some(())
            })
            .await;
            waits.push(freed.elapsed());
        }
    }
    eprintln!("freed slots went to waiting nodes after {waits:?}");
    for wait in &waits {
        assert!(
            *wait < Duration::from_secs(5),
            "a freed slot went to a waiting node after {wait:?} (periodic look: 10 s)"
        );
    }
    eventually("all five Ready", || async {
        let all = snapshots.list(&ListParams::default()).await.unwrap().items;
        all.iter()
            .all(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.conditions.iter().any(|c| c.status == "True"))
            })
            .then_some(())
    })
    .await;

    // Deleting all five: their delete movers keep to the cap as well, and one deletes the
    // archives of every Snapshot deleted by then.
    snapshots
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    let delete_movers = || async {
        jobs.list(&ListParams::default().labels(&format!("{}=delete", mover::OPERATION)))
            .await
            .unwrap()
            .items
    };
    loop {
        let running = eventually("a delete mover, or all Snapshots gone", || async {
            let gone = snapshots
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty();
            let running = unfinished(&delete_movers().await);
            (gone || !running.is_empty()).then_some(running)
        })
        .await;
        let Some(first) = running.first() else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = unfinished(&delete_movers().await).len();
        assert!(now <= 2, "{now} delete movers at once, the cap is 2");
        finish_job(client, &ns, first, "{}", true).await;
    }
    let made = delete_movers().await.len();
    assert!(
        (1..5).contains(&made),
        "{made} delete movers for 5 Snapshots"
    );
    namespace.delete().await;
}

/// Plays the kubelet for real: runs the mover command of `job` here, as a non-root user, its
/// volume `/data` at `data`, with the Job's environment plus the S3 credentials a Secret would
/// give it; returns its report (its termination message).
fn run_mover_here(job: &Job, data: &Path, s3: &common::S3Env, work: &Path) -> String {
    let (cmd, log) = mover_here(job, data, s3, work);
    common::ok(&mut common::as_nobody(cmd, work));
    std::fs::read_to_string(&log).unwrap()
}

/// The command [`run_mover_here`] runs, and where it writes its report.
fn mover_here(
    job: &Job,
    data: &Path,
    s3: &common::S3Env,
    work: &Path,
) -> (Command, std::path::PathBuf) {
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let mut args: Vec<String> = container.args.clone().unwrap();
    for arg in &mut args {
        if arg == "/data" || arg.starts_with("/data/") {
            *arg = format!("{}{}", data.display(), &arg["/data".len()..]);
        }
    }
    let log = work.join(format!("{}.log", job.name_any()));
    args.insert(2, "--termination-log".into());
    args.insert(3, log.display().to_string());
    let mut cmd = common::bin(work);
    cmd.args(&args);
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            cmd.env(&var.name, value);
        }
    }
    cmd.env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
    (cmd, log)
}

/// The mover Jobs of `owner` (by its UID), once there are `count`.
async fn movers_of(jobs: &Api<Job>, owner: &str, count: usize) -> Vec<Job> {
    eventually("the mover Jobs", || async {
        let all = jobs
            .list(&ListParams::default().labels(&format!("{}={owner}", mover::OWNER_UID)))
            .await
            .unwrap()
            .items;
        (all.len() == count).then_some(all)
    })
    .await
}

/// A Snapshot's status once `Ready` is True.
async fn ready(
    snapshots: &Api<Snapshot>,
    name: &str,
) -> snapshot_operator::api::snapshot::SnapshotStatus {
    eventually("Ready=True", || async {
        let status = snapshots.get_opt(name).await.unwrap()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(status)
    })
    .await
}

/// One bucket shared by two namespaces, and a third namespace that does not exist here. The
/// operator binary runs as the chart deploys it: the default storage's credentials in its
/// environment, as the chart's service account. Snapshots taken through the operator (their
/// movers run here for real, into the real S3 server) are not touched by the import; an
/// archive set with no Snapshot is imported into its own namespace only, a missing node said;
/// a deleted `Retain` Snapshot comes back imported, and a restore by `snapshotRef` of it
/// gives each pod its own archive's data.
async fn import_scenario(client: &Client) {
    let Some(s3) = common::s3_env() else {
        eprintln!("SKIPPED: the catalog import scenario needs the test S3 server");
        return;
    };
    let pid = std::process::id();
    let (a, b, gone) = (
        format!("import-a-{pid}"),
        format!("import-b-{pid}"),
        format!("import-gone-{pid}"),
    );
    let ns_a = TestNamespace::create(client, &a).await;
    create_statefulset(client, &a, "qdrant").await;
    let ns_b = TestNamespace::with_claims(client, &b, &["data"]).await;

    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let prefix = common::unique_prefix("import-it");
    let settings = json!({
        "defaultStorage": {"s3": {"bucket": s3.bucket, "endpointUrl": s3.endpoint,
            "prefix": prefix, "forcePathStyle": true}},
        "catalogImport": {"intervalSeconds": 1},
        "deleteThroughOperator": true,
    });
    let operator = operator_binary(client, work, &s3, &settings).await;

    // Taken through the operator, Retain, in both namespaces under one name.
    let take = |ns: &str, source: serde_json::Value| {
        serde_json::from_value::<Snapshot>(json!({
            "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
            "metadata": {"name": "nightly", "namespace": ns},
            "spec": {"source": source, "path": "/qdrant/storage", "collection": "products",
                     "deletionPolicy": "Retain"}}))
        .unwrap()
    };
    let (snaps_a, snaps_b): (Api<Snapshot>, Api<Snapshot>) = (
        Api::namespaced(client.clone(), &a),
        Api::namespaced(client.clone(), &b),
    );
    let sts_source = json!({"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}});
    let pvc_source = json!({"persistentVolumeClaim": {"claimName": "data"}});
    for (api, ns, source, count) in [(&snaps_a, &a, sts_source, 2), (&snaps_b, &b, pvc_source, 1)] {
        let created = api
            .create(&PostParams::default(), &take(ns, source))
            .await
            .unwrap();
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        for job in movers_of(&jobs, &created.uid().unwrap(), count).await {
            let node = job.labels()[mover::NODE].clone();
            let data = work.join(ns).join(&node);
            common::make_collection(&data.join("qdrant/storage"), "products", &node);
            let report = run_mover_here(&job, &data, &s3, work);
            finish_job(client, ns, &job, &report, true).await;
        }
    }
    let taken = ready(&snaps_a, "nightly").await;
    ready(&snaps_b, "nightly").await;
    let old_uid = snaps_a.get("nightly").await.unwrap().uid().unwrap();

    // Archives with no Snapshot: node 0 of 2 in b; one in a namespace that does not exist.
    for (ns, name) in [(&b, "partial"), (&gone, "lost")] {
        let identity = json!({"namespace": ns, "name": name, "uid": format!("{name}-uid"),
            "index": 0, "nodes": 2, "source": "persistentVolumeClaim/data", "claim": "data",
            "path": "/"});
        let data = work.join(format!("{ns}-{name}"));
        common::make_collection(&data, "products", name);
        let log = work.join(format!("{name}.log"));
        let mut cmd = common::bin(work);
        cmd.args([
            "mover",
            "snapshot",
            "--node",
            "data",
            "--collection",
            "products",
        ])
        .arg("--identity")
        .arg(identity.to_string())
        .arg("--termination-log")
        .arg(&log)
        .arg("--storage-path")
        .arg(&data);
        let storage = snapshot_operator::protocol::MoverStorage::S3 {
            bucket: s3.bucket.clone(),
            prefix: format!("{prefix}/{ns}"),
            region: None,
            endpoint_url: Some(s3.endpoint.clone()),
            force_path_style: Some(true),
            credentials: None,
            sse: Default::default(),
        };
        for (name, value) in storage.env() {
            if let snapshot_operator::protocol::EnvValue::Value(value) = value {
                cmd.env(name, value);
            }
        }
        cmd.env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
        common::ok(&mut cmd);
    }
    let partial = eventually("the partial set imported into b", || async {
        let snap = snaps_b.get_opt("partial").await.unwrap()?;
        snap.status.clone()?.phase?;
        Some(snap)
    })
    .await;
    assert_eq!(partial.labels()["snapshot-operator.dev/imported"], "true");
    assert_eq!(
        partial.spec.deletion_policy,
        snapshot_operator::api::snapshot::DeletionPolicy::Retain
    );
    let status = partial.status.unwrap();
    assert_eq!(format!("{:?}", status.phase), "Some(Failed)");
    assert_eq!(format!("{:?}", status.archives[0].phase), "Succeeded");
    assert_eq!(
        status.archives[1].message.as_deref(),
        Some("no archive of node 1 in the storage")
    );
    // Each namespace sees only its own; Snapshots taken here are left alone; no namespace
    // is created for archives of one that does not exist.
    assert!(snaps_a.get_opt("partial").await.unwrap().is_none());
    for api in [&snaps_a, &snaps_b] {
        let nightly = api.get("nightly").await.unwrap();
        assert!(
            !nightly
                .labels()
                .contains_key("snapshot-operator.dev/imported")
        );
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(namespaces.get_opt(&gone).await.unwrap().is_none());

    // Deleted (Retain: the archives stay), it comes back imported with the same archives.
    snaps_a
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    let back = eventually("nightly imported back", || async {
        let snap = snaps_a.get_opt("nightly").await.unwrap()?;
        (snap.uid().as_deref() != Some(&old_uid) && snap.status.as_ref()?.phase.is_some())
            .then_some(snap)
    })
    .await;
    assert_eq!(
        back.annotations()["snapshot-operator.dev/imported-uid"],
        old_uid
    );
    let status = ready(&snaps_a, "nightly").await;
    let archive = |s: &snapshot_operator::api::snapshot::SnapshotStatus| -> Vec<_> {
        s.archives
            .iter()
            .map(|x| {
                (
                    x.node.clone(),
                    x.claim.clone(),
                    x.key.clone(),
                    x.size,
                    x.checksum.clone(),
                )
            })
            .collect()
    };
    assert_eq!(archive(&status), archive(&taken));
    assert!(
        status.archives[0]
            .location
            .as_deref()
            .unwrap()
            .contains(&format!("/{prefix}/{a}/products/")),
        "{:?}",
        status.archives[0].location
    );

    // A restore by snapshotRef of the imported Snapshot: each pod gets its own node's data.
    let restores: Api<SnapshotRestore> = Api::namespaced(client.clone(), &a);
    let restore: SnapshotRestore = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotRestore",
        "metadata": {"name": "back"},
        "spec": {"source": {"snapshotRef": {"name": "nightly"}}, "path": "/qdrant/storage",
                 "target": {"statefulSet": {"name": "qdrant", "volumeClaimTemplate": "data"}},
                 "collection": "products"}}))
    .unwrap();
    let restore = restores
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &a);
    for job in movers_of(&jobs, &restore.uid().unwrap(), 2).await {
        let node = job.labels()[mover::NODE].clone();
        let target = work.join("restored").join(&node);
        std::fs::create_dir_all(target.join("qdrant/storage")).unwrap();
        let report = run_mover_here(&job, &target, &s3, work);
        finish_job(client, &a, &job, &report, true).await;
        let collection =
            |root: &Path| common::fingerprint(&root.join("qdrant/storage/collections/products"));
        assert_eq!(
            collection(&target),
            collection(&work.join(&a).join(&node)),
            "{node} got its own archive's data"
        );
    }
    eventually("the restore to succeed", || async {
        let status = restores.get("back").await.unwrap().status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;

    deleted_through_the_operator(client, &b, (&s3, &prefix), work).await;
    stops_cleanly_on_sigterm(operator).await;
    ns_a.delete().await;
    ns_b.delete().await;
}

/// With `deleteThroughOperator`, a deleted Snapshot's archive in the default storage is
/// deleted by the operator itself (with its own credentials): no delete mover is made.
async fn deleted_through_the_operator(
    client: &Client,
    ns: &str,
    (s3, prefix): (&common::S3Env, &str),
    work: &Path,
) {
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), ns);
    let brief: Snapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "brief"},
        "spec": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                 "path": "/qdrant/storage", "collection": "products", "deletionPolicy": "Delete"}}))
    .unwrap();
    let uid = snapshots
        .create(&PostParams::default(), &brief)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let data = work.join("brief");
    common::make_collection(&data.join("qdrant/storage"), "products", "brief");
    for job in movers_of(&jobs, &uid, 1).await {
        let report = run_mover_here(&job, &data, s3, work);
        finish_job(client, ns, &job, &report, true).await;
    }
    let key = ready(&snapshots, "brief").await.archives[0]
        .key
        .clone()
        .unwrap();
    let stored = || {
        let mut list = common::bin(work);
        s3.apply(&mut list, &format!("{prefix}/{ns}"));
        let listed = common::ok(list.args(["snapshot", "list", "-o", "json"]));
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        listed.iter().any(|a| a["key"] == key.as_str())
    };
    assert!(stored(), "{key} is stored");
    snapshots
        .delete("brief", &DeleteParams::default())
        .await
        .unwrap();
    gone(&snapshots, "brief").await;
    assert!(!stored(), "{key} was deleted");
    let made = jobs
        .list(&ListParams::default().labels(&format!("{}={uid}", mover::OWNER_UID)))
        .await
        .unwrap()
        .items;
    let names: Vec<String> = made.iter().map(ResourceExt::name_any).collect();
    assert!(names.iter().all(|n| !n.starts_with("del-")), "{names:?}");
}

/// A nightly schedule keeping the last two: three nights pass on the controller's clock
/// (each night a Snapshot named after its run, its mover finished here), then the oldest is
/// pruned; deleting the schedule keeps its Snapshots.
async fn schedule_scenario(
    client: &Client,
    ahead: &std::sync::atomic::AtomicI64,
    metrics: &Metrics,
) {
    use snapshot_operator::api::SnapshotSchedule;
    let ns = format!("schedule-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;
    // The controller's time: five seconds after the next 02:00 UTC.
    let real = jiff::Timestamp::now();
    let today = real.to_zoned(jiff::tz::TimeZone::UTC).date();
    let mut first = today
        .at(2, 0, 0, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    if first <= real {
        first += jiff::SignedDuration::from_hours(24);
    }
    let night = |n: i64| first + jiff::SignedDuration::from_hours(24 * n);
    let set_night = |n: i64| {
        let at = night(n) + jiff::SignedDuration::from_secs(5);
        ahead.store(
            at.duration_since(jiff::Timestamp::now()).as_secs(),
            std::sync::atomic::Ordering::SeqCst,
        );
    };
    set_night(0);
    let schedules: Api<SnapshotSchedule> = Api::namespaced(client.clone(), &ns);
    let sched: SnapshotSchedule = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "SnapshotSchedule",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 2 * * *",
                 "template": {"source": {"persistentVolumeClaim": {"claimName": "data"}},
                              "collection": "products", "deletionPolicy": "Retain"},
                 "retention": {"keepLast": 2}}}))
    .unwrap();
    schedules
        .create(&PostParams::default(), &sched)
        .await
        .unwrap();
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let name_of = |n: i64| format!("nightly-{}", night(n).strftime("%Y%m%d-%H%M%S"));
    for n in 0..3 {
        if n > 0 {
            // The schedule has seen the last night's Snapshot finish: a pass that listed it
            // still running and then read the moved clock would count the night missed
            // (Forbid).
            let last = name_of(n - 1);
            eventually("the schedule's last successful Snapshot", || async {
                let status = schedules.get("nightly").await.unwrap().status?;
                (status.last_successful_snapshot.as_deref() == Some(last.as_str())).then_some(())
            })
            .await;
            set_night(n);
            // The controller would look at the next run's time; its clock jumped: a change
            // of the schedule makes it look now.
            let poke = json!({"metadata": {"annotations": {"test/night": n.to_string()}}});
            schedules
                .patch("nightly", &PatchParams::default(), &Patch::Merge(&poke))
                .await
                .unwrap();
        }
        let taken = eventually("the night's Snapshot", || async {
            snapshots.get_opt(&name_of(n)).await.unwrap()
        })
        .await;
        assert_eq!(taken.labels()["snapshot-operator.dev/schedule"], "nightly");
        assert!(
            taken.owner_references().is_empty(),
            "not owned by the schedule"
        );
        let job = &movers_of(&jobs, &taken.uid().unwrap(), 1).await[0];
        let report = json!({"name": format!("{}.snapshot", name_of(n)),
            "key": format!("products/{}.snapshot", name_of(n)), "size": 10});
        finish_job(client, &ns, job, &report.to_string(), true).await;
        ready(&snapshots, &name_of(n)).await;
    }
    // Three nights, the last two kept.
    eventually("the first night's Snapshot pruned", || async {
        snapshots
            .get_opt(&name_of(0))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let status = eventually("the schedule's status", || async {
        let status = schedules.get("nightly").await.unwrap().status?;
        (status.last_successful_snapshot.as_deref() == Some(name_of(2).as_str())).then_some(status)
    })
    .await;
    assert_eq!(status.last_schedule_time.map(|t| t.0), Some(night(2)));
    assert_eq!(status.next_schedule_time.map(|t| t.0), Some(night(3)));
    assert_eq!(status.missed_runs, 0);
    for n in [1, 2] {
        assert!(snapshots.get_opt(&name_of(n)).await.unwrap().is_some());
    }
    let text = metrics.render();
    assert!(
        text.contains(&format!("snapshot_operator_schedule_last_success_timestamp_seconds{{namespace=\"{ns}\",schedule=\"nightly\"}}")),
        "{text}"
    );
    // Deleting the schedule keeps its Snapshots.
    schedules
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        snapshots
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    ahead.store(0, std::sync::atomic::Ordering::SeqCst);
    namespace.delete().await;
}

/// `copyMethod: Stop`: the StatefulSet's replicas recorded, scaled to zero, the movers run,
/// then the StatefulSet is scaled back to the recorded count.
async fn stop_scenario(client: &Client) {
    let ns = format!("stop-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["backups"]).await;
    let sets = create_statefulset(client, &ns, "db").await;
    // Three nodes, two mover slots in the namespace.
    let three = json!({"spec": {"replicas": 3}});
    sets.patch_scale("db", &PatchParams::default(), &Patch::Merge(&three))
        .await
        .unwrap();
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let snap: Snapshot = serde_json::from_value(json!({
        "apiVersion": "snapshot-operator.dev/v1alpha1", "kind": "Snapshot",
        "metadata": {"name": "still"},
        "spec": {"source": {"statefulSet": {"name": "db", "volumeClaimTemplate": "data"}},
                 "collection": "products", "copyMethod": "Stop"}}))
    .unwrap();
    let snap = snapshots
        .create(&PostParams::default(), &snap)
        .await
        .unwrap();
    let replicas = || async {
        let scale = sets.get_scale("db").await.unwrap();
        scale.spec.and_then(|s| s.replicas).unwrap_or(0)
    };
    eventually("the workload to be stopped", || async {
        let recorded = snapshots
            .get("still")
            .await
            .unwrap()
            .status?
            .stopped_replicas;
        (recorded == Some(3) && replicas().await == 0).then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let uid = snap.uid().unwrap();
    let first = movers_of(&jobs, &uid, 2).await;
    for job in &first {
        let pod = job.spec.clone().unwrap().template.spec.unwrap();
        assert!(pod.affinity.is_none(), "no pod holds the claim: not pinned");
    }
    // One mover still reading its claim, the other done: the third node's mover starts
    // (the first mover's pod is the Snapshot's own, not the workload's).
    let reading = mover_running(client, &ns, &first[0]).await;
    finish_mover(client, &ns, &first[1]).await;
    let third = eventually("the third node's mover", || async {
        let owned = ListParams::default().labels(&format!("{}={uid}", mover::OWNER_UID));
        let all = jobs.list(&owned).await.unwrap().items;
        all.into_iter()
            .find(|j| !first.iter().any(|f| f.name_any() == j.name_any()))
    })
    .await;
    assert_eq!(replicas().await, 0, "still stopped while movers run");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete(&reading, &DeleteParams::default())
        .await
        .unwrap();
    finish_mover(client, &ns, &first[0]).await;
    finish_mover(client, &ns, &third).await;
    ready(&snapshots, "still").await;
    assert_eq!(replicas().await, 3, "started again");
    namespace.delete().await;
}

/// Plays the kubelet: a running pod of the mover `job`, mounting the claim of its node; its
/// name.
async fn mover_running(client: &Client, ns: &str, job: &Job) -> String {
    let claim = format!("data-{}", job.labels()[mover::NODE]);
    let volumes = json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
    pod_running(client, (ns, job, "running"), json!({"volumes": volumes})).await
}

/// Plays the kubelet: the running pod `<job>-<suffix>` of the mover `job`, its spec's
/// container and `spec` (more fields); its name.
async fn pod_running(
    client: &Client,
    (ns, job, suffix): (&str, &Job, &str),
    mut spec: serde_json::Value,
) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = format!("{}-{suffix}", job.name_any());
    spec["restartPolicy"] = json!("Never");
    spec["containers"] = json!([{"name": "mover", "image": "mover"}]);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": job.labels(),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": job.name_any(), "uid": job.uid().unwrap(), "controller": true}]},
        "spec": spec,
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = json!({"status": {"phase": "Running"}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&running))
        .await
        .unwrap();
    name
}

/// The snapshot mover `job` of a collection ended well, its archive named after its node.
async fn finish_mover(client: &Client, ns: &str, job: &Job) {
    let node = job.labels()[mover::NODE].clone();
    let report = json!({"name": format!("{node}.snapshot"), "key": format!("products/{node}.snapshot"), "size": 1});
    finish_job(client, ns, job, &report.to_string(), true).await;
}

/// `copyMethod: Clone`: the mover reads a clone of the claim (a claim whose dataSource is the
/// source claim), which goes once the archive is done.
async fn clone_scenario(client: &Client) {
    let ns = format!("clone-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let more = json!({"copyMethod": "Clone"});
    let uid = create_snapshot_with(&snapshots, "cloned", more)
        .await
        .uid()
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let clone = made_for(&claims, &uid, "the clone").await;
    let source = clone.spec.clone().unwrap().data_source.unwrap();
    assert_eq!(
        (source.kind.as_str(), source.name.as_str()),
        ("PersistentVolumeClaim", "data")
    );
    the_mover_reads(client, &ns, &uid, &clone.name_any()).await;
    let status = ready(&snapshots, "cloned").await;
    assert_eq!(
        status.archives[0].read_from.as_deref(),
        Some(clone.name_any().as_str())
    );
    claim_deleted(&claims, &clone.name_any()).await;
    namespace.delete().await;
}

/// `copyMethod: Snapshot`: a VolumeSnapshot of the claim first (the test plays the snapshot
/// controller), no mover until it is ready, then a claim made from it that the mover reads;
/// both go once the archive is done.
async fn volume_snapshot_scenario(client: &Client) {
    use snapshot_operator::controller::copy::snapshot::VolumeSnapshot;
    let ns = format!("csi-it-{}", std::process::id());
    let namespace = TestNamespace::with_claims(client, &ns, &["data", "backups"]).await;
    let snapshots: Api<Snapshot> = Api::namespaced(client.clone(), &ns);
    let more =
        json!({"copyMethod": "Snapshot", "volumeSnapshotClassName": "csi-hostpath-snapclass"});
    let uid = create_snapshot_with(&snapshots, "pit", more)
        .await
        .uid()
        .unwrap();
    let volume_snapshots: Api<VolumeSnapshot> = Api::namespaced(client.clone(), &ns);
    let vs = made_for(&volume_snapshots, &uid, "the VolumeSnapshot").await;
    assert_eq!(
        vs.spec.source.persistent_volume_claim_name.as_deref(),
        Some("data")
    );
    assert_eq!(
        vs.spec.volume_snapshot_class_name.as_deref(),
        Some("csi-hostpath-snapclass")
    );
    // Not ready: no claim, no mover.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let by_owner = format!("{}={uid}", mover::OWNER_UID);
    let owned = ListParams::default().labels(&by_owner);
    assert!(claims.list(&owned).await.unwrap().items.is_empty());
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert!(jobs.list(&owned).await.unwrap().items.is_empty());
    // The snapshot controller's part: ready. Then the Snapshot is looked at again.
    let ready_status = json!({"status": {"readyToUse": true, "restoreSize": "1Gi"}});
    volume_snapshots
        .patch_status(
            &vs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&ready_status),
        )
        .await
        .unwrap();
    let poke = json!({"metadata": {"annotations": {"test/poke": "1"}}});
    snapshots
        .patch("pit", &PatchParams::default(), &Patch::Merge(&poke))
        .await
        .unwrap();
    let made = made_for(&claims, &uid, "the claim made from it").await;
    let source = made.spec.clone().unwrap().data_source.unwrap();
    assert_eq!(
        (
            source.kind.as_str(),
            source.name.as_str(),
            source.api_group.as_deref()
        ),
        (
            "VolumeSnapshot",
            vs.name_any().as_str(),
            Some("snapshot.storage.k8s.io")
        )
    );
    the_mover_reads(client, &ns, &uid, &made.name_any()).await;
    let status = ready(&snapshots, "pit").await;
    assert_eq!(
        status.archives[0].volume_snapshot.as_deref(),
        Some(vs.name_any().as_str())
    );
    let left = volume_snapshots.get_opt(&vs.name_any()).await.unwrap();
    assert!(left.is_none(), "the VolumeSnapshot went: {left:?}");
    claim_deleted(&claims, &made.name_any()).await;
    namespace.delete().await;
}
