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


def test_containerfile_base_user_entrypoint_and_capabilities():
    stage = final_stage(CONTAINERFILE.read_text())
    assert stage[0] == ("FROM", "python:3.11-slim")
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
    assert set(docs) == {"daemonset.yaml", "sidecar.yaml"}
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
