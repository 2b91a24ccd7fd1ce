//! The deployment files under `deploy/` and the operator guide agree with the code: every
//! `FEISHU_GATE_*` name in them is a setting, the pod's environment is a valid configuration,
//! ports and probes point where the gateway listens, the secret files it names are keys of
//! mounted Secrets, the pod outlives the gateway's drain, and the dashboard and alerts query
//! only metrics and label values the gateway exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use feishu_gate::testing::config::{self, Config, SECRET_VARIABLES, VARIABLES};
use feishu_gate::testing::dedup::shared::FailureMode;
use feishu_gate::testing::observe::metrics::{LATENCY_BUCKETS, Metrics, NAMES};
use feishu_gate::testing::outcome::{AuthFailure, BodyError, JsonError, Refusal, UpstreamError};
use feishu_gate::testing::outcome::{BadRequest, Outcome, TryLater};
use serde::Deserialize;
use serde_json::Value;

const BASE: &str = "deploy/kubernetes/base";
const MONITORING: &str = "deploy/kubernetes/components/monitoring";
const REDIS: &str = "deploy/kubernetes/components/redis";
const OVERLAY: &str = "deploy/kubernetes/overlays/example";
const DASHBOARD: &str = "deploy/grafana/feishu-gate.json";
const GUIDE: &str = "docs/operations.md";
const GATEWAY: &str = "feishu-gate";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a YAML file, as JSON values.
fn yaml(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn one(path: &str) -> Value {
    let mut docs = yaml(path);
    assert_eq!(docs.len(), 1, "{path} should hold one object");
    docs.remove(0)
}

fn of_kind(path: &str, kind: &str) -> Vec<Value> {
    yaml(path)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {v}"))
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn deployment() -> Value {
    one(&format!("{BASE}/deployment.yaml"))
}

fn gateway_container(deployment: &Value) -> &Value {
    array(deployment, "/spec/template/spec/containers")
        .iter()
        .find(|c| c["name"] == GATEWAY)
        .expect("the Deployment has a feishu-gate container")
}

fn legacy_container(deployment: &Value) -> &Value {
    let others: Vec<&Value> = array(deployment, "/spec/template/spec/containers")
        .iter()
        .filter(|c| c["name"] != GATEWAY)
        .collect();
    assert_eq!(
        others.len(),
        1,
        "the example pod holds the legacy system and feishu-gate"
    );
    others[0]
}

/// A container port by name or number, as probes and Services refer to them.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("a port is a name or a number");
    array(container, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| u64_at(p, "/containerPort"))
        .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"]))
}

/// `KEY=VALUE` lines of a kustomize env file.
fn env_file(path: &str) -> Vec<(String, String)> {
    read(path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{path}: {l:?}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The gateway container's environment: the generated ConfigMap it takes with `envFrom`,
/// then its own `env`, which wins.
fn gateway_env(deployment: &Value) -> BTreeMap<String, String> {
    let container = gateway_container(deployment);
    let kustomization = one(&format!("{BASE}/kustomization.yaml"));
    let mut env = BTreeMap::new();
    let sources = array(container, "/envFrom");
    assert!(!sources.is_empty(), "configuration comes from a ConfigMap");
    for source in sources {
        let name = str_at(source, "/configMapRef/name");
        let generator = array(&kustomization, "/configMapGenerator")
            .iter()
            .find(|g| g["name"] == name)
            .unwrap_or_else(|| panic!("no configMapGenerator named {name}"));
        for file in array(generator, "/envs") {
            let file = file.as_str().expect("an env file name");
            env.extend(env_file(&format!("{BASE}/{file}")));
        }
    }
    for var in array(container, "/env") {
        env.insert(
            str_at(var, "/name").to_owned(),
            str_at(var, "/value").to_owned(),
        );
    }
    env
}

/// The example Secrets, by name: each key and its placeholder value.
fn example_secrets() -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    of_kind(&format!("{BASE}/secrets.example.yaml"), "Secret")
        .into_iter()
        .chain(of_kind(&format!("{REDIS}/secret.example.yaml"), "Secret"))
        .map(|s| {
            let keys = s["stringData"]
                .as_object()
                .expect("example Secrets use stringData")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let kind = s["type"].as_str().unwrap_or("Opaque").to_owned();
            (str_at(&s, "/metadata/name").to_owned(), (kind, keys))
        })
        .collect()
}

/// A Secret volume mounted into the gateway container.
struct SecretMount {
    path: String,
    secret: String,
}

fn secret_mounts(deployment: &Value) -> Vec<SecretMount> {
    let volumes = array(deployment, "/spec/template/spec/volumes");
    array(gateway_container(deployment), "/volumeMounts")
        .iter()
        .filter_map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume for mount {m}"));
            let secret = volume.pointer("/secret/secretName")?.as_str()?.to_owned();
            Some(SecretMount {
                path: str_at(m, "/mountPath").to_owned(),
                secret,
            })
        })
        .collect()
}

/// Variables whose value is a file path.
fn is_path_variable(name: &str) -> bool {
    name.ends_with("_FILE")
        || [
            config::TLS_CERT,
            config::TLS_KEY,
            config::UPSTREAM_CLIENT_CERT,
            config::UPSTREAM_CLIENT_KEY,
        ]
        .contains(&name)
}

/// The pod's configuration as the gateway parses it: each mounted Secret becomes a
/// directory holding the example Secret's keys, as the kubelet would mount it, and the
/// variables point into it.
struct Effective {
    config: Config,
    warnings: Vec<String>,
    _mounts: Vec<tempfile::TempDir>,
}

fn effective(deployment: &Value) -> Effective {
    effective_with(deployment, &[])
}

/// As [`effective`], with `literals` merged into the generated ConfigMap (as a component's
/// `configMapGenerator` with `behavior: merge` does).
fn effective_with(deployment: &Value, literals: &[(String, String)]) -> Effective {
    let secrets = example_secrets();
    let mut env = gateway_env(deployment);
    let own: BTreeSet<&str> = array(gateway_container(deployment), "/env")
        .iter()
        .map(|v| str_at(v, "/name"))
        .collect();
    for (k, v) in literals {
        // The container's own `env` still wins over the ConfigMap.
        if !own.contains(k.as_str()) {
            env.insert(k.clone(), v.clone());
        }
    }
    let mut mounts = Vec::new();
    for mount in secret_mounts(deployment) {
        let dir = tempfile::tempdir().unwrap();
        let (_, keys) = secrets
            .get(&mount.secret)
            .unwrap_or_else(|| panic!("no example for Secret {}", mount.secret));
        for (key, value) in keys {
            std::fs::write(dir.path().join(key), value).unwrap();
        }
        for value in env.values_mut() {
            if let Some(rest) = value.strip_prefix(&mount.path)
                && rest.starts_with('/')
            {
                *value = format!("{}{rest}", dir.path().display());
            }
        }
        mounts.push(dir);
    }
    let loaded = Config::from_vars(env)
        .unwrap_or_else(|e| panic!("the pod's environment is not a valid configuration:\n{e}"));
    Effective {
        config: loaded.config,
        warnings: loaded.warnings,
        _mounts: mounts,
    }
}

#[test]
fn every_feishu_gate_name_in_the_deploy_files_and_the_guide_is_a_setting() {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(&root().join("deploy"), &mut paths);
    paths.push(root().join(GUIDE));

    let known = |name: &str| {
        VARIABLES.contains(&name)
            || SECRET_VARIABLES
                .iter()
                .any(|s| name.strip_suffix("_FILE") == Some(s))
    };
    let mut seen = BTreeSet::new();
    let mut unknown = Vec::new();
    for path in &paths {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (at, _) in text.match_indices(config::PREFIX) {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // The bare prefix, as in "FEISHU_GATE_*".
            if name.len() == config::PREFIX.len() {
                continue;
            }
            if !known(&name) {
                unknown.push(format!("{}: {name}", path.display()));
            }
            seen.insert(name);
        }
    }
    assert!(unknown.is_empty(), "not settings: {unknown:#?}");
    for expected in [
        config::UPSTREAM_URL,
        "FEISHU_GATE_TOKEN_FILE",
        config::TLS_CERT,
    ] {
        assert!(seen.contains(expected), "{expected} is never mentioned");
    }
}

#[test]
fn the_pods_environment_is_a_valid_configuration_with_secrets_from_files() {
    let deployment = deployment();
    let env = gateway_env(&deployment);
    let effective = effective(&deployment);
    assert!(effective.warnings.is_empty(), "{:?}", effective.warnings);
    for secret in SECRET_VARIABLES {
        assert!(
            !env.contains_key(*secret),
            "{secret} must come from a mounted Secret file, not a plain value"
        );
    }
    for secret in [config::TOKEN, config::KEY] {
        assert!(env.contains_key(&format!("{secret}_FILE")), "{secret}_FILE");
    }
    let c = &effective.config;
    assert!(
        c.callback
            .tokens
            .accepts("replace-with-the-action_callback_token")
    );
    assert_eq!(c.callback.keys.len(), 1);
    assert!(c.server.tls.is_some(), "the callback port serves HTTPS");
}

#[test]
fn secret_files_are_keys_of_secrets_mounted_as_directories() {
    let deployment = deployment();
    let env = gateway_env(&deployment);
    let secrets = example_secrets();
    let mounts = secret_mounts(&deployment);
    for mount in array(gateway_container(&deployment), "/volumeMounts") {
        assert!(
            mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
            "{mount}: a subPath mount never sees the kubelet's ..data swap, so a renewed Secret would not arrive"
        );
        assert_eq!(mount["readOnly"], true, "{mount}");
    }
    let mut checked = 0;
    for (name, path) in env.iter().filter(|(n, _)| is_path_variable(n)) {
        let mount = mounts
            .iter()
            .find(|m| path.starts_with(&format!("{}/", m.path)))
            .unwrap_or_else(|| panic!("{name}={path} is not inside a mounted Secret"));
        let key = &path[mount.path.len() + 1..];
        let (_, keys) = &secrets[&mount.secret];
        assert!(
            keys.contains_key(key),
            "{name}={path}: Secret {} has no key {key:?} (it has {:?})",
            mount.secret,
            keys.keys().collect::<Vec<_>>()
        );
        checked += 1;
    }
    assert_eq!(checked, 4, "token, key, certificate and private key");
    // The TLS Secret has the standard shape cert-manager and `kubectl create secret tls` make.
    let tls = env[config::TLS_CERT].rsplit_once('/').unwrap().0;
    let tls = mounts.iter().find(|m| m.path == tls).unwrap();
    assert_eq!(secrets[&tls.secret].0, "kubernetes.io/tls");
    assert!(
        env[config::TLS_CERT].ends_with("/tls.crt") && env[config::TLS_KEY].ends_with("/tls.key")
    );
}

/// The base Deployment with the redis component's patch applied the way kustomize's
/// strategic merge does for these lists: containers by name, `env` by name, `volumeMounts`
/// by mount path, `volumes` by name.
fn deployment_with_redis() -> Value {
    let mut deployment = deployment();
    let patch = one(&format!("{REDIS}/deployment-patch.yaml"));
    assert_eq!(patch["kind"], "Deployment");
    assert_eq!(patch["metadata"]["name"], deployment["metadata"]["name"]);
    fn merge(into: &mut Value, from: &[Value], key: &str) {
        let list = into.as_array_mut().expect("a list");
        for item in from {
            list.retain(|old| old[key] != item[key]);
            list.push(item.clone());
        }
    }
    for container in array(&patch, "/spec/template/spec/containers") {
        let containers = deployment
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut)
            .unwrap();
        let target = containers
            .iter_mut()
            .find(|c| c["name"] == container["name"])
            .unwrap_or_else(|| panic!("the patch names a container the base lacks: {container}"));
        merge(&mut target["env"], array(container, "/env"), "name");
        merge(
            &mut target["volumeMounts"],
            array(container, "/volumeMounts"),
            "mountPath",
        );
    }
    let volumes = array(&patch, "/spec/template/spec/volumes").to_vec();
    merge(
        deployment
            .pointer_mut("/spec/template/spec/volumes")
            .unwrap(),
        &volumes,
        "name",
    );
    deployment
}

/// The literals the redis component merges into the generated ConfigMap.
fn redis_literals() -> Vec<(String, String)> {
    let component = one(&format!("{REDIS}/kustomization.yaml"));
    assert_eq!(component["kind"], "Component");
    let generators = array(&component, "/configMapGenerator");
    assert_eq!(generators.len(), 1);
    let generator = &generators[0];
    // Merged into the base's ConfigMap, not a second one the pod would not read.
    assert_eq!(generator["name"], "feishu-gate");
    assert_eq!(generator["behavior"], "merge");
    array(generator, "/literals")
        .iter()
        .map(|l| {
            let (k, v) = l.as_str().unwrap().split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn the_redis_component_shares_the_memory_with_the_url_from_a_mounted_secret() {
    let deployment = deployment_with_redis();
    let env = gateway_env(&deployment);
    assert!(
        !env.contains_key(config::REDIS_URL),
        "the URL carries a password: from a Secret file only"
    );
    let path = &env["FEISHU_GATE_REDIS_URL_FILE"];
    let mounts = secret_mounts(&deployment);
    let mount = mounts
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m.path)))
        .unwrap_or_else(|| panic!("{path} is not inside a mounted Secret"));
    assert_eq!(mount.secret, "feishu-gate-redis");
    for m in array(gateway_container(&deployment), "/volumeMounts") {
        assert!(m.get("subPath").is_none(), "{m}");
        assert_eq!(m["readOnly"], true, "{m}");
    }
    let effective = effective_with(&deployment, &redis_literals());
    assert!(effective.warnings.is_empty(), "{:?}", effective.warnings);
    let c = &effective.config;
    let redis = c.dedup.redis.as_ref().expect("the shared memory is on");
    assert_eq!(
        redis.url.shown(),
        "rediss://<redacted>@redis.approvals.svc:6379/0"
    );
    assert_eq!(redis.failure, FailureMode::Open);
    assert_eq!(
        c.dedup.ttl,
        Some(std::time::Duration::from_secs(7 * 24 * 3600))
    );
    // The rest of the pod is as without the component.
    assert!(
        c.callback
            .tokens
            .accepts("replace-with-the-action_callback_token")
    );
    assert!(c.server.tls.is_some());
    assert!(
        self::effective(&self::deployment())
            .config
            .dedup
            .redis
            .is_none()
    );
}

#[test]
fn ports_probes_services_and_network_policy_match_the_listen_addresses() {
    let deployment = deployment();
    let c = effective(&deployment).config;
    let gateway = gateway_container(&deployment);
    let (listen, admin) = (
        u64::from(c.server.listen.port()),
        u64::from(c.server.admin_listen.port()),
    );
    assert!(
        c.server.listen.ip().is_unspecified() && c.server.admin_listen.ip().is_unspecified(),
        "Services and kubelet probes connect to the pod's IP, not loopback"
    );
    let port_named = |name: &str| resolve_port(gateway, &Value::from(name));
    assert_eq!(port_named("https"), listen);
    assert_eq!(port_named("admin"), admin);

    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &gateway[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve_port(gateway, &get["port"]), admin, "{probe}");
        assert!(
            get.get("scheme").is_none() || get["scheme"] == "HTTP",
            "the admin port is plain HTTP"
        );
    }

    let services = of_kind(&format!("{BASE}/service.yaml"), "Service");
    let target = |component: &str| {
        let s = services
            .iter()
            .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == component)
            .unwrap_or_else(|| panic!("no {component} Service"));
        let ports = array(s, "/spec/ports");
        assert_eq!(ports.len(), 1, "{component}: one port, never both");
        resolve_port(gateway, &ports[0]["targetPort"])
    };
    assert_eq!(target("callbacks"), listen);
    assert_eq!(target("metrics"), admin);

    let policy = one(&format!("{BASE}/networkpolicy.yaml"));
    let allowed: BTreeSet<u64> = array(&policy, "/spec/ingress")
        .iter()
        .flat_map(|rule| array(rule, "/ports"))
        .map(|p| resolve_port(gateway, &p["port"]))
        .collect();
    assert_eq!(allowed, BTreeSet::from([listen, admin]));
    // The admin port only from the monitoring namespace, never from every namespace.
    let admin_from: Vec<&serde_json::Value> = array(&policy, "/spec/ingress")
        .iter()
        .filter(|rule| {
            array(rule, "/ports")
                .iter()
                .any(|p| resolve_port(gateway, &p["port"]) == admin)
        })
        .flat_map(|rule| array(rule, "/from"))
        .collect();
    assert_eq!(
        admin_from,
        [
            &serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}})
        ],
        "{policy}"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
}

#[test]
fn the_upstream_is_the_legacy_container_over_loopback() {
    let deployment = deployment();
    let legacy = legacy_container(&deployment);
    let legacy_ports: BTreeSet<u64> = array(legacy, "/ports")
        .iter()
        .map(|p| u64_at(p, "/containerPort"))
        .collect();
    let check = |url: &str, whence: &str| {
        let uri: http::Uri = url.parse().unwrap();
        assert_eq!(uri.scheme_str(), Some("http"), "{whence}: {url}");
        assert!(
            matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]")),
            "{whence}: {url} leaves the pod"
        );
        let port = u64::from(uri.port_u16().unwrap_or(80));
        assert!(
            legacy_ports.contains(&port),
            "{whence}: {url} is not a port of the legacy container ({legacy_ports:?})"
        );
    };
    check(&gateway_env(&deployment)[config::UPSTREAM_URL], BASE);

    let overlay = one(&format!("{OVERLAY}/kustomization.yaml"));
    let mut overridden = 0;
    for generator in array(&overlay, "/configMapGenerator") {
        for literal in array(generator, "/literals") {
            let (name, value) = literal.as_str().unwrap().split_once('=').unwrap();
            if name == config::UPSTREAM_URL {
                check(value, OVERLAY);
                overridden += 1;
            }
        }
    }
    assert_eq!(
        overridden, 1,
        "the example overlay sets its legacy system's URL"
    );
}

#[test]
fn the_pod_outlives_the_gateways_drain() {
    let deployment = deployment();
    let config = effective(&deployment).config;
    let (grace, answer_within) = (config.server.shutdown_grace, config.pipeline.answer_within);
    let pod = &deployment["spec"]["template"]["spec"];
    let termination_ms = u64_at(pod, "/terminationGracePeriodSeconds") * 1000;
    let pre_stop_ms = |c: &Value| u64_at(c, "/lifecycle/preStop/sleep/seconds") * 1000;
    let gateway_done = pre_stop_ms(gateway_container(&deployment)) + grace.as_millis() as u64;
    assert!(
        termination_ms > gateway_done,
        "terminationGracePeriodSeconds ({termination_ms} ms) must exceed the preStop sleep plus {} ({gateway_done} ms)",
        config::SHUTDOWN_GRACE_MS
    );
    assert!(
        grace >= answer_within,
        "every callback in flight at SIGTERM can finish: {grace:?} < {} ({answer_within:?})",
        config::ANSWER_WITHIN_MS
    );
    let legacy_stops = pre_stop_ms(legacy_container(&deployment));
    assert!(
        legacy_stops >= gateway_done && legacy_stops < termination_ms,
        "the legacy container gets SIGTERM ({legacy_stops} ms) after the gateway has drained ({gateway_done} ms) and before the kill ({termination_ms} ms)"
    );
}

#[test]
fn the_pod_is_locked_down_and_sized() {
    let deployment = deployment();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    // Service links would inject FEISHU_GATE_-prefixed variables named after the Services,
    // which the gateway reports as unknown settings.
    assert_eq!(pod["enableServiceLinks"], false);
    let fs_group = u64_at(pod, "/securityContext/fsGroup");

    for container in array(pod, "/containers") {
        let s = &container["securityContext"];
        let name = &container["name"];
        assert_eq!(s["runAsNonRoot"], true, "{name}");
        assert_eq!(s["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(s["allowPrivilegeEscalation"], false, "{name}");
        assert!(
            array(s, "/capabilities/drop").contains(&Value::from("ALL")),
            "{name}"
        );
        assert!(
            container.pointer("/resources/requests/memory").is_some()
                && container.pointer("/resources/limits/memory").is_some(),
            "{name}: memory request and limit"
        );
    }
    let gateway = gateway_container(&deployment);
    let (uid, gid) = image_user();
    assert_eq!(u64_at(gateway, "/securityContext/runAsUser"), uid);
    assert_eq!(u64_at(gateway, "/securityContext/runAsGroup"), gid);
    // The Secret files are 0440: readable through the pod's fsGroup only.
    assert_eq!(fs_group, gid);
    for volume in array(pod, "/volumes") {
        if volume.get("secret").is_some() {
            assert_eq!(
                u64_at(volume, "/secret/defaultMode"),
                0o440,
                "{}",
                volume["name"]
            );
        }
    }
    let mebibytes = |q: &str| -> u64 {
        q.strip_suffix("Mi")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{q}: write memory in Mi"))
    };
    let request = mebibytes(str_at(gateway, "/resources/requests/memory"));
    let limit = mebibytes(str_at(gateway, "/resources/limits/memory"));
    assert!(request <= limit);
}

#[test]
fn selectors_find_the_pods() {
    let deployment = deployment();
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
        .clone();
    let selects = |selector: &Value, whence: &str| {
        let selector = selector.as_object().unwrap();
        assert!(!selector.is_empty(), "{whence}: an empty selector");
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{whence}: {k}");
        }
    };
    selects(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
    for service in of_kind(&format!("{BASE}/service.yaml"), "Service") {
        selects(&service["spec"]["selector"], "Service");
    }
    let pdb = one(&format!("{BASE}/poddisruptionbudget.yaml"));
    selects(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    assert!(
        u64_at(&deployment, "/spec/replicas") > u64_at(&pdb, "/spec/maxUnavailable"),
        "a drain leaves a replica serving"
    );
    let policy = one(&format!("{BASE}/networkpolicy.yaml"));
    selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        "NetworkPolicy",
    );
}

/// The `USER uid:gid` of the image's final stage.
fn image_user() -> (u64, u64) {
    let user = final_stage()
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image names its user")
        .trim()
        .to_owned();
    let (uid, gid) = user.split_once(':').expect("USER uid:gid");
    (uid.parse().unwrap(), gid.parse().unwrap())
}

/// The instructions of the Dockerfile's last stage, one per line.
fn final_stage() -> Vec<String> {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let last = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last..].to_vec()
}

#[test]
fn the_image_is_the_static_binary_run_as_a_non_root_user() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("--target x86_64-unknown-linux-musl"));
    let stage = final_stage();
    assert!(
        matches!(
            stage[0].as_str(),
            "FROM scratch" | "FROM gcr.io/distroless/static-debian12:nonroot"
        ),
        "{}",
        stage[0]
    );
    assert!(stage.contains(&r#"ENTRYPOINT ["feishu-gate"]"#.to_owned()));
    let (uid, _) = image_user();
    assert_ne!(uid, 0);

    let defaults = Config::from_vars([
        (config::UPSTREAM_URL, "http://127.0.0.1:8080/"),
        (config::TOKEN, "t"),
    ])
    .unwrap()
    .config;
    let exposed: BTreeSet<u16> = stage
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([
            defaults.server.listen.port(),
            defaults.server.admin_listen.port()
        ])
    );
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    let monitor = one(&format!("{MONITORING}/servicemonitor.yaml"));
    let services = of_kind(&format!("{BASE}/service.yaml"), "Service");
    let matches = |s: &Value| {
        monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| s["metadata"]["labels"].get(k) == Some(v))
    };
    let selected: Vec<&Value> = services.iter().filter(|s| matches(s)).collect();
    assert_eq!(selected.len(), 1, "exactly the metrics Service");
    let service = selected[0];
    let endpoints = array(&monitor, "/spec/endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");

    // The rules select the job by the value the ServiceMonitor's jobLabel gives it.
    let job_label = str_at(&monitor, "/spec/jobLabel");
    let job = service["metadata"]["labels"][job_label].as_str().unwrap();
    for (_, expr) in alert_queries() {
        for (at, _) in expr.match_indices("job=\"") {
            let value = expr[at + 5..].split('"').next().unwrap();
            assert_eq!(value, job, "{expr}");
        }
    }
}

/// Every `(alert, expr)` of the PrometheusRule.
fn alert_queries() -> Vec<(String, String)> {
    let rule = one(&format!("{MONITORING}/prometheusrule.yaml"));
    array(&rule, "/spec/groups")
        .iter()
        .flat_map(|g| array(g, "/rules"))
        .map(|r| {
            (
                str_at(r, "/alert").to_owned(),
                str_at(r, "/expr").to_owned(),
            )
        })
        .collect()
}

/// Every `(panel title, expr)` of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let board: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    array(&board, "/panels")
        .iter()
        .flat_map(|p| {
            array(p, "/targets").iter().map(|t| {
                (
                    str_at(p, "/title").to_owned(),
                    str_at(t, "/expr").to_owned(),
                )
            })
        })
        .collect()
}

/// Every label `outcome` can take: one value per way a callback ends.
fn outcome_labels() -> BTreeSet<&'static str> {
    let refusal = |business_rule| {
        Outcome::UpstreamRefused(Refusal {
            upstream_status: http::StatusCode::CONFLICT,
            message: None,
            business_rule,
        })
    };
    let outcomes = [
        Outcome::Delivered,
        Outcome::Duplicate,
        Outcome::BadRequest(BadRequest::Unauthorized(AuthFailure::MissingToken)),
        Outcome::BadRequest(BadRequest::Invalid(BodyError::Json(JsonError::NotJson))),
        Outcome::BadRequest(BadRequest::TooLarge),
        Outcome::BadRequest(BadRequest::SlowBody),
        Outcome::BadRequest(BadRequest::Unreadable),
        Outcome::BadRequest(BadRequest::Fragmented),
        Outcome::TryLater(TryLater::RateLimited {
            retry_after_secs: 1,
        }),
        Outcome::BadRequest(BadRequest::NotFound),
        Outcome::BadRequest(BadRequest::MethodNotAllowed),
        Outcome::TryLater(TryLater::ShuttingDown),
        Outcome::TryLater(TryLater::MemoryUnavailable),
        Outcome::Internal,
        refusal(false),
        refusal(true),
        Outcome::UpstreamUnreachable(UpstreamError::Connect),
        Outcome::UpstreamUnreachable(UpstreamError::Dropped),
        Outcome::UpstreamTimedOut,
        Outcome::Uncertain,
    ];
    // A new way to end stops this from compiling: add it above, so that the dashboard and
    // the alerts are checked against its label.
    for outcome in &outcomes {
        match outcome {
            Outcome::Delivered
            | Outcome::Duplicate
            | Outcome::UpstreamRefused(_)
            | Outcome::UpstreamUnreachable(_)
            | Outcome::UpstreamTimedOut
            | Outcome::Uncertain
            | Outcome::Internal => {}
            Outcome::BadRequest(r) => match r {
                BadRequest::NotFound
                | BadRequest::MethodNotAllowed
                | BadRequest::TooLarge
                | BadRequest::SlowBody
                | BadRequest::Unreadable
                | BadRequest::Fragmented
                | BadRequest::Unauthorized(_)
                | BadRequest::Invalid(_) => {}
            },
            Outcome::TryLater(t) => match t {
                TryLater::ShuttingDown
                | TryLater::RateLimited { .. }
                | TryLater::MemoryUnavailable => {}
            },
        }
    }
    outcomes.iter().map(Outcome::label).collect()
}

/// Names in the exposition that are histograms (they also export `_bucket`, `_sum`, `_count`).
fn histograms(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect()
}

/// The quoted values a query gives a label (`label="a"`, `label=~"a|b.*"`, negations too).
fn label_values<'a>(expr: &'a str, label: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    for op in ["=\"", "!=\"", "=~\"", "!~\""] {
        let needle = format!("{label}{op}");
        for (at, _) in expr.match_indices(&needle) {
            // `outcome` inside another label's name (`my_outcome=`) is not this label.
            let before = expr[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &expr[at + needle.len()..];
            values.extend(rest[..rest.find('"').unwrap()].split('|'));
        }
    }
    values
}

/// Problems with the metric names, outcome labels and buckets a set of queries uses;
/// the base names it queries are added to `used`.
fn check_queries(queries: &[(String, String)], used: &mut BTreeSet<String>) -> Vec<String> {
    let metrics = Metrics::new();
    metrics.callback_duration.observe(0.001);
    let exposition = metrics.render();
    let histograms = histograms(&exposition);
    let outcomes = outcome_labels();
    let mut problems = Vec::new();
    for (whence, expr) in queries {
        for (at, _) in expr.match_indices("feishu_gate_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(*b)))
                .unwrap_or(&name);
            if NAMES.contains(&base) {
                used.insert(base.to_owned());
            } else {
                problems.push(format!("{whence}: {name} is not exported"));
            }
        }
        for value in label_values(expr, "outcome") {
            let known = match value.strip_suffix(".*") {
                Some(prefix) => outcomes.iter().any(|o| o.starts_with(prefix)),
                None => outcomes.contains(value),
            };
            if !known {
                problems.push(format!("{whence}: outcome {value:?} never happens"));
            }
        }
        for le in label_values(expr, "le") {
            let bucket = format!("_bucket{{le=\"{le}\"}}");
            let is_bucket = le
                .parse::<f64>()
                .is_ok_and(|v| LATENCY_BUCKETS.contains(&v));
            if !is_bucket || !exposition.contains(&bucket) {
                problems.push(format!("{whence}: le=\"{le}\" is not a bucket as exported"));
            }
        }
    }
    problems
}

#[test]
fn the_dashboard_shows_every_exported_metric_and_nothing_else() {
    let queries = dashboard_queries();
    assert!(queries.len() > 10);
    let mut used = BTreeSet::new();
    let problems = check_queries(&queries, &mut used);
    assert!(problems.is_empty(), "{problems:#?}");
    let missing: Vec<&&str> = NAMES.iter().filter(|n| !used.contains(**n)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");

    // Every variable a query uses is defined by the dashboard or by Grafana.
    let board: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut defined: BTreeSet<String> = array(&board, "/templating/list")
        .iter()
        .map(|v| str_at(v, "/name").to_owned())
        .collect();
    defined.extend(["__rate_interval", "__interval", "__range"].map(String::from));
    for (title, expr) in &queries {
        for (at, _) in expr.match_indices('$') {
            let name: String = expr[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(defined.contains(&name), "{title}: ${name} is not defined");
        }
    }
}

#[test]
fn the_alerts_query_exported_metrics_and_cover_what_approvers_feel() {
    let queries = alert_queries();
    let mut used = BTreeSet::new();
    let problems = check_queries(&queries, &mut used);
    assert!(problems.is_empty(), "{problems:#?}");
    for required in [
        "feishu_gate_callbacks_total",
        "feishu_gate_callback_duration_seconds",
        "feishu_gate_upstream_errors_total",
        "feishu_gate_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(required), "no alert on {required}");
    }
}
