"""Resident memory and start-up time of ``pmtud-relay run`` with its default settings.

For each round: a fresh network namespace (``pmr-fp-<pid>-<hex>``, always deleted) with a veth
pair holding the default route and VIPs on ``lo``, as on a server; the daemon is started there
with no option at all (``--config ''`` only, so no host file is read): capture on the
default-route interface, VIPs discovered, metrics on 127.0.0.1:9781. Measured:

- start-up to ready: from ``Popen`` to the daemon's ``READY=1`` on a ``NOTIFY_SOCKET`` this
  script listens on (sd_notify, what systemd waits for), and to the first ``/readyz`` 200
  (polled every 5 ms);
- the CPU time (utime + stime) the process used until ``READY=1``: unlike the wall-clock times
  it hardly depends on what else the machine runs;
- ``VmRSS``, ``RssAnon``, ``RssFile`` from ``/proc/PID/status`` right after ready, and at the
  end after ``--seconds`` during which ``/metrics`` is scraped every ``--interval`` seconds
  (15: Prometheus's usual interval), plus the highest ``VmRSS``/``VmHWM`` seen.

``--imports`` prints instead what each import on the daemon's path adds to the resident memory
of a fresh interpreter, in the order ``run`` imports them (cumulative, one interpreter).

Bytecode: an installed package (wheel, Debian package) carries its ``.pyc`` files, and
compiling the sources at every start costs both time and memory (the compiler's peak stays in
the process's heap). So by default the checkout's package is copied to a temporary directory
and byte-compiled there (nothing is written into the checkout), and the daemon runs from that
copy; ``--no-bytecode`` runs the checkout itself with ``PYTHONDONTWRITEBYTECODE=1``, compiling
its sources at every start. The standard library and site-packages are used as installed
(Debian's and pip's ``.pyc`` files).

``--python`` chooses the interpreter (default: this one). The figure that counts is a venv
made from Debian 12's ``/usr/bin/python3`` (3.11), the packaged target; the daemon runs from
this checkout (PYTHONPATH), with the packages that venv has.

    sudo .venv/bin/python bench/footprint.py --seconds 120 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, median, proc_cpu, table, write_result  # noqa: E402
from netns import in_netns  # noqa: E402

METRICS = "127.0.0.1:9781"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=15)


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0])  # kB
    return out


def http(ns: str, path: str) -> int:
    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://{METRICS}{path}", timeout=2) as r:
                r.read()
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    with in_netns(ns):
        return get()


def bytecode_env(python: str, copy_dir: str | None) -> tuple[dict[str, str], str]:
    """(environment, working directory) to run ``python -m pmtud_relay`` with: the checkout with
    no bytecode, or (``copy_dir``) a byte-compiled copy of its package there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMTUD_RELAY_")}
    env.pop("PYTHONPYCACHEPREFIX", None)  # it would hide the stdlib's own .pyc files
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if copy_dir is None:
        env["PYTHONPATH"] = str(ROOT)
        return env, str(ROOT)
    import shutil

    shutil.copytree(ROOT / "pmtud_relay", Path(copy_dir) / "pmtud_relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "compileall", "-q", str(Path(copy_dir) / "pmtud_relay")], check=True,
                   capture_output=True, timeout=300,
                   env={k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"})
    env["PYTHONPATH"] = copy_dir
    return env, copy_dir


def one_round(python: str, seconds: float, interval: float, base_env: dict[str, str], cwd: str) -> dict:
    ns = f"pmr-fp-{os.getpid()}-{secrets.token_hex(3)}"
    ip("netns", "add", ns)
    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="pmr-fp-")
    try:
        for args in (
            ("link", "set", "lo", "up"),
            ("link", "add", "eth0", "type", "veth", "peer", "name", "wire0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "wire0", "up"),
            ("addr", "add", "198.51.100.2/24", "dev", "eth0"),
            ("route", "add", "default", "via", "198.51.100.1"),
            ("addr", "add", "192.0.2.10/32", "dev", "lo"),
            ("addr", "add", "2001:db8:ffff::10/128", "dev", "lo", "nodad"),
        ):
            ip("-n", ns, *args)
        notify_path = os.path.join(tmp.name, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(10)
        env = dict(base_env, NOTIFY_SOCKET=notify_path)
        t0 = time.monotonic()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, python, "-m", "pmtud_relay", "run", "--config", ""],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        ready_notify = None
        while ready_notify is None:
            msg = notify.recv(4096).decode()
            if "READY=1" in msg:
                ready_notify = time.monotonic() - t0
                cpu_ready = proc_cpu(proc.pid)  # utime+stime until ready: what load on the machine does not change
        ready_http = None
        while ready_http is None:
            if http(ns, "/readyz") == 200:
                ready_http = time.monotonic() - t0
            elif time.monotonic() - t0 > 10:
                raise RuntimeError("no /readyz 200 within 10 s")
            else:
                time.sleep(0.005)
        notify.close()
        # ip netns exec execs the interpreter: the Popen pid is the daemon's
        at_ready = status(proc.pid)
        peak = at_ready["VmRSS"]
        end = time.monotonic() + seconds
        scrapes = 0
        while time.monotonic() < end:
            assert http(ns, "/metrics") == 200
            scrapes += 1
            peak = max(peak, status(proc.pid)["VmRSS"])
            time.sleep(max(0.0, min(interval, end - time.monotonic())))
        final = status(proc.pid)
        return {
            "ready_notify_s": ready_notify, "ready_http_s": ready_http, "cpu_to_ready_s": cpu_ready, "scrapes": scrapes,
            "rss_ready_kib": at_ready["VmRSS"], "anon_ready_kib": at_ready["RssAnon"],
            "file_ready_kib": at_ready["RssFile"],
            "rss_end_kib": final["VmRSS"], "anon_end_kib": final["RssAnon"], "file_end_kib": final["RssFile"],
            "rss_peak_kib": max(peak, final["VmRSS"]), "hwm_kib": final["VmHWM"],
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)
        tmp.cleanup()


IMPORT_STEPS = [
    ("interpreter (python -c pass)", []),
    ("asyncio (imports ssl: libssl, libcrypto)", ["asyncio"]),
    ("uvloop", ["uvloop"]),
    ("core (relay, policy, dedup, limits)", ["pmtud_relay.core.relay"]),
    ("capture + emit (AF_PACKET)", ["pmtud_relay.capture.afpacket", "pmtud_relay.emit.l2"]),
    ("prometheus_client", ["prometheus_client"]),
    ("metrics", ["pmtud_relay.metrics"]),
    ("daemon (logs, rtnetlink, NFLOG parser)", ["pmtud_relay.daemon"]),
    ("config (peering, rules, tomllib, argparse)", ["pmtud_relay.config"]),
    ("cli", ["pmtud_relay.cli"]),
]

# Each alone in a fresh interpreter: what a single import costs over the bare interpreter.
ALONE = [
    ("ssl", "import ssl"),
    ("asyncio, ssl blocked", "import sys; sys.modules['ssl'] = None; import asyncio"),
    ("asyncio", "import asyncio"),
    ("prometheus_client", "import prometheus_client"),
    ("pyroute2 (no longer imported by run)", "import pyroute2; from pyroute2 import IPRoute"),
]

_ALONE_CODE = r"""
import sys
exec(sys.argv[1])
out = {}
for line in open("/proc/self/status"):
    key, _, value = line.partition(":")
    if key in ("VmRSS", "RssAnon", "RssFile"):
        out[key] = int(value.split()[0])
print(out["VmRSS"], out["RssAnon"], out["RssFile"])
"""


def alone(python: str, env: dict[str, str], cwd: str) -> list[dict]:
    def run(code: str) -> list[int]:
        done = subprocess.run([python, "-c", _ALONE_CODE, code], capture_output=True, text=True, check=True, env=env,
                              cwd=cwd, timeout=60)
        return [int(x) for x in done.stdout.split()]

    bare = run("pass")
    rows = []
    for label, code in ALONE:
        rss, anon, file = run(code)
        rows.append({"alone": label, "added_kib": rss - bare[0], "anon_kib": anon - bare[1],
                     "file_kib": file - bare[2]})
    return rows


_IMPORTS_CODE = r"""
import importlib, importlib.util, json, sys
_origin = importlib.util.find_spec("pmtud_relay").origin
assert _origin.startswith(sys.argv[2]), _origin
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out
rows = []
for label, modules in json.loads(sys.argv[1]):
    for m in modules:
        importlib.import_module(m)
    rows.append([label, status()])
print(json.dumps(rows))
"""


def imports(python: str, env: dict[str, str], cwd: str) -> list[dict]:
    import json

    done = subprocess.run([python, "-c", _IMPORTS_CODE, json.dumps(IMPORT_STEPS), env["PYTHONPATH"]],
                          capture_output=True, text=True, check=True, env=env, cwd=cwd, timeout=60)
    rows, prev = [], None
    for label, st in json.loads(done.stdout):
        rows.append({"step": label, "VmRSS_kib": st["VmRSS"], "RssAnon_kib": st["RssAnon"],
                     "RssFile_kib": st["RssFile"],
                     "added_kib": st["VmRSS"] - prev if prev is not None else st["VmRSS"]})
        prev = st["VmRSS"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter to run the daemon with")
    ap.add_argument("--seconds", type=float, default=120.0, help="how long to scrape after ready (default 120)")
    ap.add_argument("--interval", type=float, default=15.0, help="seconds between scrapes (default 15)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/footprint-*.json")
    ap.add_argument("--imports", action="store_true", help="per-import resident memory instead (no root needed)")
    ap.add_argument("--no-bytecode", action="store_true", help="compile the checkout's sources at start (no .pyc)")
    a = ap.parse_args()
    copy = None if a.no_bytecode else tempfile.TemporaryDirectory(prefix="pmr-fp-pkg-")
    env, cwd = bytecode_env(a.python, copy.name if copy is not None else None)
    bytecode = "no .pyc (compiled at start)" if a.no_bytecode else "byte-compiled"
    if a.imports:
        rows = [imports(a.python, env, cwd) for _ in range(a.rounds)]
        med = [{"step": r[0]["step"], **{c: median([x[i][c] for x in rows]) for c in
                                          ("VmRSS_kib", "added_kib", "RssAnon_kib", "RssFile_kib")}}
               for i, r in enumerate(zip(*rows))]
        print(table(med, ["step", "VmRSS_kib", "added_kib", "RssAnon_kib", "RssFile_kib"],
                    title=f"imports on the daemon's path, cumulative, {bytecode}; median of {a.rounds} interpreters"))
        solo = [alone(a.python, env, cwd) for _ in range(a.rounds)]
        solo_med = [{"alone": r[0]["alone"], **{c: median([x[i][c] for x in solo]) for c in
                                                 ("added_kib", "anon_kib", "file_kib")}}
                    for i, r in enumerate(zip(*solo))]
        print()
        print(table(solo_med, ["alone", "added_kib", "anon_kib", "file_kib"],
                    title="each alone in a fresh interpreter, over the bare interpreter"))
        med = med + solo_med
        if not a.no_save:
            result = {"python": a.python, "bytecode": not a.no_bytecode, "rounds": rows, "median": med}
            print(f"saved {write_result('footprint-imports', result)}")
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    version = subprocess.run([a.python, "-c", "import sys, platform; print(platform.python_version(), sys.executable)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    for i in range(a.rounds):
        row = one_round(a.python, a.seconds, a.interval, env, cwd)
        row["round"] = i + 1
        rows.append(row)
    cols = ["round", "ready_notify_s", "ready_http_s", "cpu_to_ready_s", "rss_ready_kib", "anon_ready_kib",
            "file_ready_kib", "scrapes", "rss_end_kib", "anon_end_kib", "file_end_kib", "rss_peak_kib", "hwm_kib"]
    summary = {c: median([r[c] for r in rows]) for c in cols if c != "round"}
    print(table(rows + [{"round": "median", **summary}], cols,
                title=f"pmtud-relay run, defaults, {bytecode}; python {version}; scrape every {a.interval:g} s "
                      f"for {a.seconds:g} s"))
    if not a.no_save:
        path = write_result("footprint", {"python": version, "seconds": a.seconds, "interval": a.interval,
                                          "bytecode": not a.no_bytecode,
                                          "rounds": rows, "median": summary})
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
