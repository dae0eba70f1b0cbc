"""Containerfile and deploy/ manifests: syntax, the security design, and env vars the config knows."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from pmtud_relay import config as cfg

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def final_stage(text: str) -> list[tuple[str, str]]:
    ins = instructions(text)
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def test_containerfile_base_is_one_arg_pinned_by_digest():
    """Both stages build FROM ${BASE}, an ARG declared before the first FROM (so FROM can use it)
    whose default names the image by a sha256 digest: a tag alone can move under the build."""
    ins = instructions(CONTAINERFILE.read_text())
    first_from = min(i for i, (k, _) in enumerate(ins) if k == "FROM")
    args = dict(v.partition("=")[::2] for k, v in ins[:first_from] if k == "ARG")
    assert "BASE" in args, "no ARG BASE=... before the first FROM"
    assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+:[\w.-]+@sha256:[0-9a-f]{64}", args["BASE"]), args["BASE"]
    froms = [v.split() for k, v in ins if k == "FROM"]
    assert froms == [["${BASE}", "AS", "build"], ["${BASE}"]], froms


def test_containerfile_base_user_entrypoint_and_capabilities():
    stage = final_stage(CONTAINERFILE.read_text())
    assert stage[0] == ("FROM", "${BASE}")
    users = [v for k, v in stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    entry = json.loads([v for k, v in stage if k == "ENTRYPOINT"][-1])
    assert entry[-3:] == ["-m", "pmtud_relay", "run"] and "-I" in entry
    interpreter = entry[0]
    setcap = [v for k, v in stage if k == "RUN" and "setcap" in v]
    assert setcap and f"setcap cap_net_raw,cap_net_admin=ep {interpreter}" in setcap[0]
    assert "--copies" in CONTAINERFILE.read_text()  # the interpreter with capabilities is a private copy


def test_containerfile_env_is_known_to_the_config():
    env = {}
    for k, v in final_stage(CONTAINERFILE.read_text()):
        if k == "ENV":
            name, _, value = v.partition("=")
            env[name] = value
    assert cfg.read_env(env)  # raises ConfigError on an unknown or invalid PMTUD_RELAY_* variable


@pytest.fixture(scope="module")
def docs():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed: YAML syntax not checked")
    out = {}
    for path in MANIFESTS:
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def containers(doc) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def relay_container(doc) -> dict:
    (c,) = [c for c in containers(doc) if "pmtud-relay" in c["image"]]
    return c


def test_manifests_parse(docs):
    assert set(docs) == {"daemonset.yaml", "sidecar.yaml", "podmonitor.yaml"}
    for name, items in docs.items():
        for d in items:
            assert {"apiVersion", "kind", "metadata"} <= set(d), name


def test_daemonset_host_network_and_two_capabilities(docs):
    (ds,) = [d for d in docs["daemonset.yaml"] if d["kind"] == "DaemonSet"]
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    sc = relay_container(ds)["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    # File capabilities are ignored under no_new_privs: this must stay true (deploy/README.md).
    assert sc["allowPrivilegeEscalation"] is True
    assert sc["readOnlyRootFilesystem"] is True
    probes = relay_container(ds)
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_sidecar_shares_the_pod_network(docs):
    (dep,) = docs["sidecar.yaml"]
    spec = dep["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork") and len(spec["containers"]) == 2
    sc = relay_container(dep)["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}


def test_uid_matches_the_image(docs):
    users = [v for k, v in final_stage(CONTAINERFILE.read_text()) if k == "USER"]
    uid = int(users[-1].split(":")[0])
    for items in docs.values():
        for d in items:
            if d["kind"] in ("DaemonSet", "Deployment"):
                assert relay_container(d)["securityContext"]["runAsUser"] == uid


def test_manifest_env_vars_are_valid_configuration(docs):
    for name, items in docs.items():
        for d in items:
            if d["kind"] not in ("DaemonSet", "Deployment"):
                continue
            env = {}
            for e in relay_container(d).get("env", []):
                if "value" in e:
                    env[e["name"]] = re.sub(r"\$\(HOST_IP\)", "10.0.0.5", e["value"])
            settings = cfg.read_env(env)  # raises ConfigError naming the variable
            assert settings, name


# -- works unchanged on any node -------------------------------------------------------------------
def workload(docs, name: str) -> dict:
    (d,) = [d for d in docs[name] if d["kind"] in ("DaemonSet", "Deployment")]
    return d


def relay_env(d) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in relay_container(d).get("env", [])}


def test_daemonset_names_no_interface(docs):
    """Nodes name their interfaces ens5, bond0, enp1s0…: the DaemonSet uses each node's
    default-route interface, and discovers the VIPs, unless told otherwise."""
    env = relay_env(workload(docs, "daemonset.yaml"))
    assert "PMTUD_RELAY_INTERFACES" not in env
    assert "PMTUD_RELAY_VIPS" not in env and "PMTUD_RELAY_VIP_INTERFACES" not in env


def test_sidecar_interface_is_the_one_its_attachment_creates(docs):
    d = workload(docs, "sidecar.yaml")
    networks = json.loads(d["spec"]["template"]["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert relay_env(d)["PMTUD_RELAY_INTERFACES"] == networks[0]["interface"]


# -- Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards) ------------
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def pss_violations(pod: dict) -> dict[str, list[str]]:
    """What each level forbids in ``pod`` (a pod spec), for the controls a manifest here can touch."""
    baseline, restricted = [], []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            baseline.append(key)
    if any("hostPath" in v for v in pod.get("volumes", [])):
        baseline.append("hostPath volumes")
    pod_sc = pod.get("securityContext", {})
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            baseline.append(f"{name}: privileged")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            baseline.append(f"{name}: hostPort")
        added = set(sc.get("capabilities", {}).get("add", []))
        if added - BASELINE_CAPS:
            baseline.append(f"{name}: capabilities {sorted(added - BASELINE_CAPS)}")
        if sc.get("allowPrivilegeEscalation") is not False:
            restricted.append(f"{name}: allowPrivilegeEscalation")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            restricted.append(f"{name}: runAsNonRoot")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            restricted.append(f"{name}: capabilities.drop ALL")
        if added - {"NET_BIND_SERVICE"}:
            restricted.append(f"{name}: capabilities.add")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            restricted.append(f"{name}: seccompProfile")
    return {"baseline": baseline, "restricted": baseline + restricted}


def pss_level(pod: dict) -> str:
    """The most restrictive level that admits ``pod``."""
    v = pss_violations(pod)
    return "restricted" if not v["restricted"] else "baseline" if not v["baseline"] else "privileged"


def test_pss_levels_of_known_pods():
    plain = {"containers": [{"name": "a", "securityContext": {
        "allowPrivilegeEscalation": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}}]}
    assert pss_level(plain) == "restricted"
    assert pss_level({"containers": [{"name": "a"}]}) == "baseline"
    assert pss_level({"containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]}) \
        == "privileged"
    assert pss_level({"hostNetwork": True, **plain}) == "privileged"


@pytest.mark.parametrize("name", ["daemonset.yaml", "sidecar.yaml"])
def test_pod_security_level_is_stated_correctly(docs, name):
    """Each manifest needs "privileged" (NET_RAW and NET_ADMIN are outside baseline's list; the
    DaemonSet also uses hostNetwork and a hostPort) and says so, in its namespace label or its
    header, together with the controls that rule out baseline."""
    d = workload(docs, name)
    pod = d["spec"]["template"]["spec"]
    assert pss_level(pod) == "privileged", pss_violations(pod)
    text = (ROOT / "deploy" / name).read_text()
    assert '"privileged" level' in text and "NET_RAW" in text and "NET_ADMIN" in text
    namespaces = [n for n in docs[name] if n["kind"] == "Namespace"]
    for ns in namespaces:
        labels = ns["metadata"]["labels"]
        assert {labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "warn", "audit")} \
            == {pss_level(pod)}
    if name == "daemonset.yaml":
        assert namespaces and "hostNetwork" in pss_violations(pod)["baseline"]


# -- memory from what was measured -------------------------------------------------------------------
def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, f"memory quantity {quantity!r}: use Mi or Gi"
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


@pytest.mark.parametrize("name", ["daemonset.yaml", "sidecar.yaml"])
def test_memory_request_and_limit_cover_the_measured_footprint(docs, name):
    """bench/footprint.py's committed result (default settings, scraped every 15 s): the request
    covers the steady resident memory, the limit that plus full source and dedup tables
    (docs/performance.md: about 38 MiB more with the default capacities)."""
    measured = json.loads((ROOT / "bench" / "results" / "footprint-20261208-032518.json").read_text())
    steady = max(r["rss_peak_kib"] for r in measured["rounds"]) / 1024
    res = relay_container(workload(docs, name))["resources"]
    request, limit = mebibytes(res["requests"]["memory"]), mebibytes(res["limits"]["memory"])
    assert steady <= request <= limit
    assert limit >= steady + 38


# -- PodMonitor ---------------------------------------------------------------------------------------
def test_podmonitor_scrapes_the_daemonset(docs):
    (pm,) = docs["podmonitor.yaml"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    ds = workload(docs, "daemonset.yaml")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pm["spec"]["namespaceSelector"]["matchNames"] == [ds["metadata"]["namespace"]]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in relay_container(ds)["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
