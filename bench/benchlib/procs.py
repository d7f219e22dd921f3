"""Processes of the suite: tidal workers (``python -m tidal run``), baseline apps, peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parents[1]


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class RssSampler:
    """Samples the peak RSS (VmHWM) of a process and of its children until stopped."""

    def __init__(self, pid: int, children: bool, every_s: float = 0.25) -> None:
        self.pid, self.children, self.every_s = pid, children, every_s
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)

    def sample(self) -> None:
        pids = _children(self.pid) if self.children else [self.pid]
        for pid in pids:
            s = _proc_status(pid)
            hwm = max(s.get("VmHWM", 0), s.get("VmRSS", 0))
            if hwm:
                self.peak[pid] = max(self.peak.get(pid, 0), hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every_s)

    def peaks_mb(self) -> list[float]:
        return [round(v / 2**20, 1) for _, v in sorted(self.peak.items())]


def write_spec(folder: Path, name: str, source: str, schema: dict, steps: list[dict], max_batch: int | None = None,
               max_wait_ms: int | None = None, producer: dict | None = None, consumer: dict | None = None,
               partitions: int = 4) -> Path:
    """A pipeline YAML reading ``source`` into its own group and sink (``<name>.predictions``);
    batch knobs left out (None) are tidal's defaults."""
    batch = {k: v for k, v in (("max_batch", max_batch), ("max_wait_ms", max_wait_ms)) if v is not None}
    spec = {"pipeline": name, "source": source, "group": f"bench.{name}", "schema": schema, "steps": steps,
            "batch": batch, "partitions": partitions,
            "kafka": {"consumer": dict(consumer or {}), "producer": dict(producer or {})}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def env_for(bootstrap: str) -> dict[str, str]:
    """Environment of the suite's subprocesses: the broker, and bench/ importable (River step)."""
    path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "TIDAL_BOOTSTRAP_SERVERS": bootstrap, "PYTHONPATH": path}


def start_tidal(spec: Path, bootstrap: str, workers: int = 1, stats: Path | None = None,
                idle_exit_s: float | None = None, log: Path | None = None) -> subprocess.Popen:
    """``python -m tidal run SPEC --workers N`` (per-worker stats files with N > 1)."""
    cmd = [sys.executable, "-m", "tidal", "run", str(spec), "--workers", str(workers), "--log-level", "WARNING"]
    if stats:
        cmd += ["--stats-file", str(stats)]
    if idle_exit_s is not None:
        cmd += ["--idle-exit", str(idle_exit_s)]
    out = open(log, "ab") if log else subprocess.DEVNULL
    # Prometheus /metrics stays on (tidal's default), on free ports: worker i serves port + i.
    port = _free_ports(workers)
    env = {**env_for(bootstrap), "TIDAL_METRICS_PORT": str(port)}
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    proc.metrics_port = port  # type: ignore[attr-defined]
    return proc


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """A worker's Prometheus /metrics, summed over labels: {"name": value, "name{step=...}": value}."""
    import re
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + v
        step = re.search(r'step="([^"]+)"', labels or "")
        if step:
            key = f"{name}{{step={step.group(1)}}}"
            out[key] = out.get(key, 0.0) + v
    return out


def _free_ports(n: int) -> int:
    """A port p such that p … p+n-1 are free now."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        ok = True
        for i in range(1, n):
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", base + i))
                except OSError:
                    ok = False
        if ok:
            return base
    return 0


def worker_stats(stats: Path, workers: int) -> list[dict]:
    files = [stats] if workers == 1 else [stats.with_name(f"{stats.stem}-{i}{stats.suffix}") for i in range(workers)]
    return [json.loads(f.read_text()) for f in files if f.exists()]


def run_app(script: str, args: list[str], bootstrap: str, timeout: float, log: Path | None = None) -> tuple[int, float, list[float]]:
    """Run ``bench/scenarios/SCRIPT ARGS`` to completion: (exit code, its wall time, peak RSS in MB)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    t0 = time.time()
    p = subprocess.Popen([sys.executable, str(BENCH / "scenarios" / script), *args], env=env_for(bootstrap),
                         stdout=out, stderr=subprocess.STDOUT)
    with RssSampler(p.pid, children=False) as rss:
        try:
            code = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait(10)
        rss.sample()
    return code, time.time() - t0, rss.peaks_mb()
