#!/usr/bin/env bash
# Validates deploy/: JSON and YAML parse, the Grafana dashboard and Kubernetes manifests have what
# they must, Prometheus config (promtool), docker compose config (if the plugin is installed),
# the systemd unit (systemd-analyze verify, if available) and the sample configs
# (greenroom config check). Installs what it needs without prompting (PyYAML into a venv under
# target/, promtool from the Debian package `prometheus`); running it again reuses them.
#
#   scripts/validate-deploy.sh                      # uses target/debug/greenroom
#   GREENROOM_BIN=target/release/greenroom scripts/validate-deploy.sh
#
# Exits non-zero when any check fails. A Docker image build is not tested here (it needs an engine).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DEPLOY="deploy"
WORK="$ROOT/target/validate-deploy"
mkdir -p "$WORK"

GREENROOM_BIN="${GREENROOM_BIN:-target/debug/greenroom}"
case "$GREENROOM_BIN" in /*) ;; *) GREENROOM_BIN="$ROOT/$GREENROOM_BIN" ;; esac

failures=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*" >&2; failures=$((failures + 1)); }
skip() { printf '  skip  %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

# Runs a command quietly; on failure prints its output and counts a failure.
check() {
    local what="$1"
    shift
    local out
    if out="$("$@" 2>&1)"; then
        pass "$what"
    else
        fail "$what"
        printf '%s\n' "$out" | sed 's/^/        /' >&2
    fi
}

# The environment without GREENROOM_* and RUST_LOG, so the caller's settings do not leak in.
clean_env() {
    local unset_args=()
    local v
    for v in $(compgen -e); do
        case "$v" in GREENROOM_* | RUST_LOG) unset_args+=(-u "$v") ;; esac
    done
    env "${unset_args[@]}" "$@"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
section "JSON"
mapfile -t json_files < <(find "$DEPLOY" -name '*.json' -type f | sort)
if [ "${#json_files[@]}" -eq 0 ]; then
    fail "no JSON files under $DEPLOY"
fi
for f in "${json_files[@]}"; do
    check "$f parses" python3 -m json.tool "$f" /dev/null
done

# ---------------------------------------------------------------------------------------------
section "Python with PyYAML"
PY=python3
if python3 -c 'import yaml' 2>/dev/null; then
    pass "system python3 has PyYAML"
else
    VENV="$ROOT/target/deploy-venv"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
        echo "  installing PyYAML into $VENV"
        if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet --disable-pip-version-check pyyaml; }; then
            echo "cannot create a venv with PyYAML (python3-venv missing?); apt-get install python3-venv or python3-yaml" >&2
            exit 1
        fi
    fi
    PY="$VENV/bin/python"
    pass "PyYAML in $VENV"
fi

# ---------------------------------------------------------------------------------------------
section "YAML"
mapfile -t yaml_files < <(find "$DEPLOY" \( -name '*.yml' -o -name '*.yaml' \) -type f | sort)
for f in "${yaml_files[@]}"; do
    check "$f parses" "$PY" -c '
import sys, yaml
with open(sys.argv[1]) as fh:
    docs = [d for d in yaml.safe_load_all(fh) if d is not None]
if not docs:
    sys.exit("empty document")
' "$f"
done

# ---------------------------------------------------------------------------------------------
section "Content checks"
check "Grafana dashboard has every panel and metric" "$PY" - "$DEPLOY" <<'PYEOF'
import json, sys, yaml, os
d = sys.argv[1]
dash = json.load(open(os.path.join(d, "grafana/dashboards/greenroom.json")))
ds = yaml.safe_load(open(os.path.join(d, "grafana/provisioning/datasources/prometheus.yml")))
uids = {x["uid"] for x in ds["datasources"]}
errors = []
if not dash.get("uid") or not dash.get("title"):
    errors.append("dashboard needs uid and title")
panels = dash.get("panels", [])
exprs = " ".join(t.get("expr", "") for p in panels for t in p.get("targets", []))
for m in ["greenroom_calls", "greenroom_participants", "greenroom_packets_forwarded_total",
          "greenroom_packets_dropped_total", "greenroom_nacks_total", "greenroom_plis_total",
          "greenroom_rtt_seconds_bucket", "greenroom_join_seconds_bucket",
          "process_cpu_seconds_total", "process_resident_memory_bytes"]:
    if m not in exprs:
        errors.append(f"no panel queries {m}")
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)):
    errors.append("duplicate panel ids")
for p in panels:
    for t in p.get("targets", []) + [p]:
        uid = (t.get("datasource") or {}).get("uid")
        if uid not in uids:
            errors.append(f"panel {p.get('title')!r}: datasource uid {uid!r} not provisioned {sorted(uids)}")
prov = yaml.safe_load(open(os.path.join(d, "grafana/provisioning/dashboards/greenroom.yml")))
paths = [p["options"]["path"] for p in prov["providers"]]
compose = yaml.safe_load(open(os.path.join(d, "docker-compose.yml")))
mounts = compose["services"]["grafana"]["volumes"]
for path in paths:
    if not any(v.split(":")[0] == "./grafana/dashboards" and v.split(":")[1] == path for v in mounts):
        errors.append(f"dashboard provider path {path} is not where compose mounts grafana/dashboards")
if errors:
    sys.exit("\n".join(errors))
PYEOF

check "docker-compose.yml services, ports and mounted files" "$PY" - "$DEPLOY" <<'PYEOF'
import sys, yaml, os
d = sys.argv[1]
c = yaml.safe_load(open(os.path.join(d, "docker-compose.yml")))
s = c["services"]
errors = []
for name in ["greenroom", "prometheus", "grafana"]:
    if name not in s:
        errors.append(f"service {name} missing")
g = s.get("greenroom", {})
ports = [str(p) for p in g.get("ports", [])]
if not any(p.endswith("7882:7882/udp") for p in ports):
    errors.append("greenroom must publish 7882:7882/udp (same port inside and out)")
if not any("7880" in p for p in ports):
    errors.append("greenroom must publish 7880")
if not os.path.exists(os.path.join(d, g.get("build", {}).get("context", "."), g.get("build", {}).get("dockerfile", ""))):
    errors.append("greenroom build context/dockerfile does not exist")
for svc in s.values():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            if not os.path.exists(os.path.join(d, src)):
                errors.append(f"mounted path {src} does not exist")
prom = yaml.safe_load(open(os.path.join(d, "prometheus/prometheus.yml")))
targets = [t for j in prom["scrape_configs"] for sc in j.get("static_configs", []) for t in sc["targets"]]
if "greenroom:7880" not in targets:
    errors.append("prometheus does not scrape greenroom:7880")
if errors:
    sys.exit("\n".join(errors))
PYEOF

check "Kubernetes manifests" "$PY" - "$DEPLOY/k8s" "$WORK/k8s-greenroom.toml" <<'PYEOF'
import sys, yaml, os, glob
d, toml_out = sys.argv[1], sys.argv[2]
objs = []
for f in sorted(glob.glob(os.path.join(d, "*.yaml"))):
    if os.path.basename(f) == "kustomization.yaml":
        k = yaml.safe_load(open(f))
        for r in k["resources"]:
            if not os.path.exists(os.path.join(d, r)):
                sys.exit(f"kustomization lists missing {r}")
        continue
    objs += [o for o in yaml.safe_load_all(open(f)) if o]
by_kind = {}
errors = []
for o in objs:
    for key in ["apiVersion", "kind", "metadata"]:
        if key not in o:
            errors.append(f"object without {key}: {o}")
    by_kind.setdefault(o["kind"], []).append(o)
for kind in ["Namespace", "ConfigMap", "Secret", "Deployment", "Service"]:
    if kind not in by_kind:
        errors.append(f"no {kind}")
if errors:
    sys.exit("\n".join(errors))
ns = by_kind["Namespace"][0]["metadata"]["name"]
for o in objs:
    if o["kind"] != "Namespace" and o["metadata"].get("namespace") != ns:
        errors.append(f"{o['kind']} {o['metadata']['name']} not in namespace {ns}")
dep = by_kind["Deployment"][0]
pod = dep["spec"]["template"]["spec"]
labels = dep["spec"]["template"]["metadata"]["labels"]
if any(labels.get(k) != v for k, v in dep["spec"]["selector"]["matchLabels"].items()):
    errors.append("Deployment selector does not match its pod labels")
svc = by_kind["Service"][0]
if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
    errors.append("Service selector does not match the pod labels")
c = pod["containers"][0]
env = {e["name"]: e for e in c.get("env", [])}
if env.get("GREENROOM_NODE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "status.hostIP":
    errors.append("GREENROOM_NODE_IP must come from the downward API (status.hostIP)")
sec = env.get("GREENROOM_API_SECRET", {}).get("valueFrom", {}).get("secretKeyRef", {})
secret = by_kind["Secret"][0]
if sec.get("name") != secret["metadata"]["name"] or sec.get("key") not in secret.get("stringData", {}):
    errors.append("GREENROOM_API_SECRET must reference the Secret's key")
udp = [p for p in c["ports"] if p.get("protocol") == "UDP"]
if not pod.get("hostNetwork") and not any(p.get("hostPort") == 7882 and p.get("containerPort") == 7882 for p in udp):
    errors.append("UDP 7882 needs hostPort 7882 (or hostNetwork)")
# Readiness follows /healthz (503 while draining); liveness must not restart a draining pod, so
# it is a TCP check (or a GET of /healthz only where the pod never drains).
if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
    errors.append("readinessProbe must GET /healthz")
live = c.get("livenessProbe", {})
if not live.get("tcpSocket") and live.get("httpGet", {}).get("path") != "/healthz":
    errors.append("livenessProbe must be a TCP check of the HTTP port (or GET /healthz)")
if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
    errors.append("resources requests and limits required")
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
    errors.append("runAsNonRoot required")
if csc.get("allowPrivilegeEscalation") is not False:
    errors.append("allowPrivilegeEscalation: false required")
args = c.get("args", [])
drain = int(args[args.index("--drain-secs") + 1]) if "--drain-secs" in args else 5
if pod.get("terminationGracePeriodSeconds", 30) <= drain:
    errors.append(f"terminationGracePeriodSeconds must exceed the drain ({drain}s)")
cm = by_kind["ConfigMap"][0]
mount_paths = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
cm_vol = [v["name"] for v in pod.get("volumes", []) if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
if not cm_vol or "--config" not in args:
    errors.append("the ConfigMap must be mounted and passed with --config")
else:
    cfg = args[args.index("--config") + 1]
    key = os.path.basename(cfg)
    if os.path.dirname(cfg) != mount_paths.get(cm_vol[0]) or key not in cm["data"]:
        errors.append(f"--config {cfg} is not a key of the mounted ConfigMap")
    else:
        open(toml_out, "w").write(cm["data"][key])
if errors:
    sys.exit("\n".join(errors))
PYEOF

check "Dockerfile essentials" bash -c '
f=deploy/Dockerfile
grep -qE "^FROM rust:1[^ ]* AS builder" $f || { echo "no rust:1 builder stage"; exit 1; }
grep -q "cargo build --release" $f || { echo "no release build"; exit 1; }
grep -qE "^FROM (debian:bookworm-slim|gcr.io/distroless)" $f || { echo "runtime not slim/distroless"; exit 1; }
grep -qE "^USER " $f || { echo "no USER (non-root)"; exit 1; }
grep -qE "^USER (root|0)" $f && { echo "USER is root"; exit 1; }
grep -qE "^EXPOSE .*7880/tcp" $f && grep -qE "^EXPOSE .*7882/udp" $f || { echo "EXPOSE 7880/tcp 7882/udp missing"; exit 1; }
grep -qE "^HEALTHCHECK " $f || { echo "no HEALTHCHECK"; exit 1; }
grep -q "GREENROOM_HTTP_ADDR=0.0.0.0:7880" $f && grep -q "GREENROOM_UDP_ADDR=0.0.0.0:7882" $f || { echo "must bind 0.0.0.0"; exit 1; }
grep -q "GREENROOM_WEB_ROOT=" $f && grep -q "COPY control/web" $f || { echo "web app not copied / web_root not set"; exit 1; }
'

# ---------------------------------------------------------------------------------------------
section "promtool"
if ! command -v promtool >/dev/null; then
    echo "  promtool missing: installing the Debian package prometheus"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >"$WORK/apt.log" 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$WORK/apt.log" 2>&1 || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >>"$WORK/apt.log" 2>&1 || true
    fi
fi
if command -v promtool >/dev/null; then
    check "promtool check config $DEPLOY/prometheus/prometheus.yml" promtool check config "$DEPLOY/prometheus/prometheus.yml"
else
    fail "promtool is not installed and could not be installed (need root or passwordless sudo and apt-get; see $WORK/apt.log). Install it: apt-get install prometheus"
fi

# ---------------------------------------------------------------------------------------------
section "cluster: compose with Redis and three nodes, Kubernetes manifests with Redis"
check "cluster/docker-compose.yml and k8s-cluster/" "$PY" - "$DEPLOY" <<'PYEOF'
import sys, yaml, os
d = sys.argv[1]
errors = []
c = yaml.safe_load(open(os.path.join(d, "cluster/docker-compose.yml")))
s = c["services"]
if "redis" not in s:
    errors.append("cluster compose: no redis service")
nodes = {k: v for k, v in s.items() if k.startswith("greenroom-")}
if len(nodes) != 3:
    errors.append(f"cluster compose: {len(nodes)} greenroom nodes, want 3")
udp, ids, secrets = set(), set(), set()
for name, n in nodes.items():
    env = n.get("environment", {})
    for key in ["GREENROOM_CLUSTER__REDIS_URL", "GREENROOM_CLUSTER__NODE_ID", "GREENROOM_CLUSTER__ADVERTISE_URL", "GREENROOM_UDP_ADDR", "GREENROOM_API_SECRET"]:
        if key not in env:
            errors.append(f"{name}: {key} missing")
    port = env.get("GREENROOM_UDP_ADDR", ":").rsplit(":", 1)[1]
    if not any(str(p) == f"{port}:{port}/udp" for p in n.get("ports", [])):
        errors.append(f"{name}: must publish {port}:{port}/udp")
    udp.add(port); ids.add(env.get("GREENROOM_CLUSTER__NODE_ID")); secrets.add(env.get("GREENROOM_API_SECRET"))
    ctx = os.path.join(d, "cluster", n.get("build", {}).get("context", "."), n.get("build", {}).get("dockerfile", ""))
    if not os.path.exists(ctx):
        errors.append(f"{name}: build context/dockerfile {ctx} does not exist")
if len(udp) != len(nodes) or len(ids) != len(nodes):
    errors.append("cluster compose: nodes need distinct UDP ports and node ids")
if len(secrets) != 1:
    errors.append("cluster compose: every node must share the API secret")
k = os.path.join(d, "k8s-cluster")
kust = yaml.safe_load(open(os.path.join(k, "kustomization.yaml")))
objs = []
for r in kust["resources"]:
    if not os.path.exists(os.path.join(k, r)):
        errors.append(f"k8s-cluster kustomization lists missing {r}")
        continue
    objs += [o for o in yaml.safe_load_all(open(os.path.join(k, r))) if o]
kinds = {}
for o in objs:
    kinds.setdefault(o["kind"], []).append(o)
ns = kinds.get("Namespace", [{}])[0].get("metadata", {}).get("name")
for o in objs:
    if o["kind"] != "Namespace" and o["metadata"].get("namespace") != ns:
        errors.append(f"k8s-cluster: {o['kind']} {o['metadata']['name']} not in namespace {ns}")
names = {(o["kind"], o["metadata"]["name"]) for o in objs}
for want in [("Deployment", "redis"), ("Service", "redis"), ("StatefulSet", "greenroom"), ("Service", "greenroom")]:
    if want not in names:
        errors.append(f"k8s-cluster: no {want[0]} {want[1]}")
for o in kinds.get("StatefulSet", []):
    env = {e["name"] for e in o["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    for key in ["GREENROOM_CLUSTER__REDIS_URL", "GREENROOM_CLUSTER__NODE_ID", "GREENROOM_CLUSTER__ADVERTISE_URL", "GREENROOM_API_SECRET", "GREENROOM_NODE_IP"]:
        if key not in env:
            errors.append(f"k8s-cluster StatefulSet: {key} missing")
if errors:
    sys.exit("\n".join(errors))
PYEOF
if [ -x "$GREENROOM_BIN" ]; then
    check "greenroom config check with a cluster node's environment" \
        clean_env GREENROOM_HTTP_ADDR=0.0.0.0:7884 GREENROOM_UDP_ADDR=0.0.0.0:7886 \
        GREENROOM_CLUSTER__REDIS_URL=redis://redis:6379/0 GREENROOM_CLUSTER__NODE_ID=b \
        GREENROOM_CLUSTER__ADVERTISE_URL=http://greenroom-b:7884 \
        GREENROOM_SERVER__MAX_CONNS_PER_IP=4096 "$GREENROOM_BIN" config check
fi

# ---------------------------------------------------------------------------------------------
section "docker compose"
if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    check "docker compose -f $DEPLOY/docker-compose.yml config -q" docker compose -f "$DEPLOY/docker-compose.yml" config -q
    check "docker compose -f $DEPLOY/cluster/docker-compose.yml config -q" docker compose -f "$DEPLOY/cluster/docker-compose.yml" config -q
else
    skip "the docker compose plugin is not installed: docker compose config not run"
fi

# ---------------------------------------------------------------------------------------------
section "greenroom config check"
if [ ! -x "$GREENROOM_BIN" ]; then
    fail "$GREENROOM_BIN not found: build it (cargo build -p greenroom-control) or set GREENROOM_BIN"
else
    check "greenroom --config $DEPLOY/greenroom.toml config check" \
        clean_env "$GREENROOM_BIN" --config "$DEPLOY/greenroom.toml" config check
    # The sample documents the defaults: with it, the effective config equals the built-in one.
    if clean_env "$GREENROOM_BIN" --config "$DEPLOY/greenroom.toml" config check >"$WORK/sample.out" 2>/dev/null &&
        clean_env "$GREENROOM_BIN" config check >"$WORK/default.out" 2>/dev/null; then
        check "sample's [server] [rtc] [keys] [limits] equal the built-in defaults" \
            "$PY" - "$WORK/sample.out" "$WORK/default.out" <<'PYEOF'
import sys, tomllib
a = tomllib.load(open(sys.argv[1], "rb"))
b = tomllib.load(open(sys.argv[2], "rb"))
# web_root is commented out in the sample (its default is a build path).
diff = [k for k in ["server", "rtc", "keys", "limits"] if a.get(k) != b.get(k)]
if diff:
    sys.exit(f"differs from defaults in {diff}: {[(a.get(k), b.get(k)) for k in diff]}")
PYEOF
    fi
    if [ -f "$WORK/k8s-greenroom.toml" ]; then
        check "greenroom config check of the Kubernetes ConfigMap's greenroom.toml (with the pod's env)" \
            clean_env GREENROOM_API_SECRET=placeholder GREENROOM_NODE_IP=10.0.0.1 \
            "$GREENROOM_BIN" --config "$WORK/k8s-greenroom.toml" config check
    fi
    check "greenroom config check with the image's environment" \
        clean_env GREENROOM_HTTP_ADDR=0.0.0.0:7880 GREENROOM_UDP_ADDR=0.0.0.0:7882 \
        GREENROOM_NODE_IP=127.0.0.1 GREENROOM_WEB_ROOT=/usr/share/greenroom/web \
        GREENROOM_LOG_FORMAT=json RUST_LOG=info "$GREENROOM_BIN" config check
fi

# ---------------------------------------------------------------------------------------------
section "systemd"
if command -v systemd-analyze >/dev/null; then
    # verify needs ExecStart's binary to exist: check a copy that points at $GREENROOM_BIN.
    UNIT_DIR="$WORK/systemd"
    rm -rf "$UNIT_DIR"
    mkdir -p "$UNIT_DIR"
    sed "s#/usr/local/bin/greenroom#$GREENROOM_BIN#g" "$DEPLOY/systemd/greenroom.service" >"$UNIT_DIR/greenroom.service"
    if [ -x "$GREENROOM_BIN" ]; then
        check "systemd-analyze verify greenroom.service" \
            bash -c 'out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$1" 2>&1); rc=$?; printf "%s\n" "$out"; [ $rc -eq 0 ] && ! printf "%s\n" "$out" | grep -i "greenroom.service" | grep -qiE "unknown|invalid|failed|ignoring|error"' _ "$UNIT_DIR/greenroom.service"
    else
        skip "systemd-analyze verify (no greenroom binary at $GREENROOM_BIN)"
    fi
    for key in "ProtectSystem=strict" "StateDirectory=" "Restart=on-failure" "KillSignal=SIGTERM" "TimeoutStopSec=" "NoNewPrivileges=yes"; do
        grep -q "^$key" "$DEPLOY/systemd/greenroom.service" || fail "greenroom.service lacks $key"
    done
    grep -qE "^(DynamicUser=yes|User=greenroom)" "$DEPLOY/systemd/greenroom.service" || fail "greenroom.service runs as root"
else
    skip "systemd-analyze is not installed: the unit was not verified"
fi

# ---------------------------------------------------------------------------------------------
printf '\n'
if [ "$failures" -gt 0 ]; then
    echo "validate-deploy: $failures check(s) FAILED" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
