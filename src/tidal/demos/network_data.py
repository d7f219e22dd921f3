"""Synthetic network flows with injected attacks and dirty data, for ``tidal demo network``.

Each record is one flow as a flow exporter reports it — id, time, source and destination,
port, protocol, bytes, packets, duration, a per-source sequence number — plus the exporter's
per-host rates over the last minute (flows from the source, distinct destination ports of
the source, flows to the destination).

Attacks (``kinds``: 1 scan, 2 flood, 3 exfiltration), from ``attack_start`` on:

- **port scan**: one internal host probes many ports of one target: tiny flows (1-2 packets),
  many distinct ports per minute (slow scans too);
- **flood (DDoS)**: many external sources hit one target with packet-heavy, byte-light flows;
  the target's inbound flow rate explodes;
- **exfiltration**: an internal host sends hundreds of MB to an external address over a long flow.

Dirty data, anywhere: bytes or durations in other units (``bytes_unit: "KB"``, ``"MB"``;
``duration_unit: "ms"``; ``"12.5 KB"`` strings), timestamps as ISO-8601 strings or epoch
seconds, protocol in odd case and spacing, missing bytes / packets / duration, packets as
text, duplicates of earlier flows, negative bytes, malformed JSON, records without an id.

>>> g = generate(2000, seed=1, attack_start=500)
>>> len(g.values) == 2000 - g.dirty["lost"] + g.dirty["duplicates"], bool(g.kinds[:490].any())
(True, False)
>>> bool(0 < g.labels.mean() < 0.1), int(g.duplicate.sum()) == g.dirty["duplicates"]
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

__all__ = ["NetworkFlows", "generate", "SCHEMA", "KINDS", "COMMON_PORTS"]

KINDS = {0: "normal", 1: "scan", 2: "flood", 3: "exfiltration"}
COMMON_PORTS = [443, 80, 53, 22, 123, 25, 993, 3306, 5432, 8080]
SCHEMA = {
    "flow_id": "str",
    "ts": {"type": "int", "timestamp": True},
    "src_ip": "str",
    "dst_ip": "str",
    "dst_port": {"type": "int", "min": 0, "max": 65535},
    "proto": {"type": "str", "enum": ["tcp", "udp", "icmp"], "trim": True, "case": "lower", "policy": {"enum": "flag"}},
    "bytes": {"type": "float", "required": False, "min": 0, "unit": "B", "unit_field": "bytes_unit"},
    "bytes_unit": {"type": "str", "required": False},
    "packets": {"type": "int", "required": False, "min": 1, "coerce": True, "policy": {"type": "fix", "range": "fix"}},
    "duration": {"type": "float", "required": False, "min": 0, "unit": "s", "unit_field": "duration_unit",
                 "policy": {"range": "fix"}},
    "duration_unit": {"type": "str", "required": False},
    "seq": "int",
    "src_flows_1m": "int",
    "src_ports_1m": "int",
    "dst_flows_1m": "int",
}


@dataclass
class NetworkFlows:
    """Encoded flows and the truth: ``labels`` (1 = attack), ``kinds``, and what was made dirty."""

    keys: list[bytes]
    values: list[bytes]
    flow_ids: list[str]
    labels: np.ndarray
    kinds: np.ndarray
    malformed: np.ndarray  # goes to the DLQ by design (bad JSON, no id, negative bytes)
    duplicate: np.ndarray  # a re-sent copy of an earlier flow (dropped by the integrity step)
    dirty: dict


def generate(n: int, seed: int = 7, attack_start: int | None = None, attack_rate: float = 0.03,
             dirty_rate: float = 0.04, start_ms: int = 1_767_225_600_000) -> NetworkFlows:
    """``n`` flows, about one per millisecond; attacks only after ``attack_start`` (default n // 4)."""
    rng = np.random.default_rng(seed)
    attack_start = n // 4 if attack_start is None else attack_start
    ts = start_ms + np.cumsum(rng.exponential(1.0, n)).astype(np.int64)
    hosts = np.array([f"10.0.{i // 250}.{i % 250 + 1}" for i in range(400)])
    servers = np.array([f"10.1.0.{i + 1}" for i in range(40)] + [f"93.184.{i}.{j}" for i in range(4) for j in (1, 2)])

    # Normal traffic.
    src = rng.integers(0, len(hosts), n)
    activity = np.exp(rng.normal(0, 0.6, len(hosts)))  # some hosts are busier than others
    src_ip = hosts[src].astype(object)
    dst_ip = servers[rng.integers(0, len(servers), n)].astype(object)
    port = np.where(rng.random(n) < 0.9, np.array(COMMON_PORTS)[rng.integers(0, len(COMMON_PORTS), n)],
                    rng.integers(1024, 65535, n))
    proto = np.where(port == 53, "udp", np.where(port == 123, "udp", "tcp")).astype(object)
    nbytes = np.exp(rng.normal(8.5, 1.5, n))
    packets = np.maximum(1, np.round(nbytes / rng.uniform(400, 1400, n))).astype(np.int64)
    duration = np.exp(rng.normal(-0.5, 1.2, n))
    src_flows = rng.poisson(12 * activity[src]) + 1
    src_ports = np.minimum(src_flows, rng.integers(1, 8, n))
    dst_flows = rng.poisson(rng.choice([30, 80, 200], n)) + 1

    # Attacks.
    kinds = np.zeros(n, dtype=np.int8)
    live = np.arange(n) >= attack_start
    r = rng.random(n)
    kinds[live & (r < attack_rate * 0.5)] = 1
    kinds[live & (r >= attack_rate * 0.5) & (r < attack_rate * 0.83)] = 2
    kinds[live & (r >= attack_rate * 0.83) & (r < attack_rate)] = 3
    scan, flood, exfil = kinds == 1, kinds == 2, kinds == 3
    k = int(scan.sum())
    scanner = hosts[rng.integers(0, 8, k)]  # a few compromised hosts
    src_ip[scan] = scanner
    dst_ip[scan] = servers[rng.integers(0, 40, k)]
    port[scan] = rng.integers(1, 65535, k)
    nbytes[scan] = rng.uniform(40, 120, k)
    packets[scan] = rng.integers(1, 3, k)
    duration[scan] = rng.uniform(0.0001, 0.01, k)
    src_flows[scan] = rng.integers(60, 1500, k)
    src_ports[scan] = np.minimum(src_flows[scan], rng.integers(25, 1000, k))
    k = int(flood.sum())
    src_ip[flood] = [f"198.51.{a}.{b}" for a, b in zip(rng.integers(0, 255, k), rng.integers(1, 255, k))]
    dst_ip[flood] = "10.1.0.1"
    port[flood] = rng.choice([80, 443], k)
    proto[flood] = rng.choice(["tcp", "udp"], k)
    packets[flood] = rng.integers(200, 5000, k)
    nbytes[flood] = packets[flood] * rng.uniform(40, 80, k)
    duration[flood] = rng.uniform(0.5, 5, k)
    src_flows[flood] = rng.integers(1, 30, k)
    src_ports[flood] = 1
    dst_flows[flood] = rng.integers(3000, 30000, k)
    k = int(exfil.sum())
    src_ip[exfil] = hosts[rng.integers(8, 16, k)]
    dst_ip[exfil] = [f"203.0.113.{b}" for b in rng.integers(1, 255, k)]
    port[exfil] = rng.choice([443, 22, 8443, 4444], k)
    nbytes[exfil] = np.exp(rng.uniform(np.log(2e8), np.log(3e9), k))
    packets[exfil] = np.round(nbytes[exfil] / 1400).astype(np.int64)
    duration[exfil] = rng.uniform(120, 3600, k)

    # Per-source sequence numbers (in time order), with ~0.2% of flows lost before export (gaps).
    seq = np.zeros(n, dtype=np.int64)
    order = np.argsort(src_ip.astype(str), kind="stable")
    s_sorted = src_ip[order]
    start = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    idx = np.arange(n)
    seq[order] = idx - np.maximum.accumulate(np.where(start, idx, 0)) + 1

    labels = (kinds > 0).astype(np.int8)
    flow_ids = [f"f-{i}" for i in range(n)]
    recs = [{"flow_id": fid, "ts": t, "src_ip": s, "dst_ip": d, "dst_port": p, "proto": pr, "bytes": round(b, 1),
             "packets": pk, "duration": round(du, 4), "seq": sq, "src_flows_1m": sf, "src_ports_1m": sp,
             "dst_flows_1m": df}
            for fid, t, s, d, p, pr, b, pk, du, sq, sf, sp, df in zip(
                flow_ids, ts.tolist(), src_ip.tolist(), dst_ip.tolist(), port.tolist(), proto.tolist(),
                nbytes.tolist(), packets.tolist(), duration.tolist(), seq.tolist(), src_flows.tolist(),
                src_ports.tolist(), dst_flows.tolist())]
    dirty = _dirty(recs, rng, dirty_rate)
    malformed = np.zeros(n, dtype=bool)
    values = [orjson.dumps(r) for r in recs]
    for i in np.flatnonzero(rng.random(n) < 0.002).tolist():  # broken records: the DLQ's
        kind = i % 3
        if kind == 0:
            values[i] = values[i][: len(values[i]) // 2]
        elif kind == 1:
            rec = dict(recs[i])
            del rec["flow_id"]
            values[i] = orjson.dumps(rec)
        else:
            b = recs[i].get("bytes")
            values[i] = orjson.dumps({**recs[i], "bytes": -abs(b) if isinstance(b, float) and b else -1.0,
                                      "bytes_unit": None})
        malformed[i] = True
    keys = [s.encode() for s in src_ip.tolist()]
    lost = rng.random(n) < 0.002  # flows lost before export: per-source sequence gaps
    lost &= ~labels.astype(bool)
    keep = np.flatnonzero(~lost)
    # Duplicates: re-sent copies of earlier flows, shortly after the original, same key (same partition).
    dup_of = np.flatnonzero((rng.random(n) < 0.005) & ~lost & ~malformed)
    out_keys, out_values, out_ids, out_idx, is_dup = [], [], [], [], []
    pending = {int(i) + int(rng.integers(1, 50)): int(i) for i in dup_of}
    for i in keep.tolist():
        out_keys.append(keys[i]); out_values.append(values[i]); out_ids.append(flow_ids[i])  # noqa: E702
        out_idx.append(i); is_dup.append(False)  # noqa: E702
        j = pending.pop(i, None)
        if j is not None:
            out_keys.append(keys[j]); out_values.append(values[j]); out_ids.append(flow_ids[j])  # noqa: E702
            out_idx.append(j); is_dup.append(True)  # noqa: E702
    sel = np.array(out_idx)
    return NetworkFlows(keys=out_keys, values=out_values, flow_ids=out_ids, labels=labels[sel], kinds=kinds[sel],
                        malformed=malformed[sel], duplicate=np.array(is_dup), dirty={**dirty, "lost": int(lost.sum()),
                                                                                     "duplicates": int(sum(is_dup))})


def _dirty(recs: list[dict], rng: np.random.Generator, rate: float) -> dict:
    """Make ``rate`` of the records dirty in one of several ways (in place); returns counts per kind."""
    n = len(recs)
    which = np.flatnonzero(rng.random(n) < rate)
    kinds = rng.integers(0, 9, len(which))
    counts: dict[str, int] = {}
    for i, k in zip(which.tolist(), kinds.tolist()):
        r = recs[i]
        if k == 0:
            r["bytes"], r["bytes_unit"] = round(r["bytes"] / 1000, 3), "KB"
            name = "bytes_in_kb"
        elif k == 1:
            r["bytes"] = f"{r['bytes'] / 1e6:.4f} MB"
            name = "bytes_as_text_with_unit"
        elif k == 2:
            r["duration"], r["duration_unit"] = round(r["duration"] * 1000, 2), "ms"
            name = "duration_in_ms"
        elif k == 3:
            r["ts"] = _iso(r["ts"])
            name = "ts_iso8601"
        elif k == 4:
            r["ts"] = r["ts"] / 1000
            name = "ts_epoch_seconds"
        elif k == 5:
            r["proto"] = f" {r['proto'].upper()} "
            name = "proto_case_spacing"
        elif k == 6:
            del r[("bytes", "packets", "duration")[i % 3]]
            name = "missing_value"
        elif k == 7:
            r["packets"] = str(r["packets"]) if i % 2 else "n/a"
            name = "packets_as_text"
        else:
            r["duration"] = -1.0
            name = "negative_duration"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _iso(ms: int) -> str:
    return np.datetime_as_string(np.datetime64(ms, "ms"), unit="ms") + "Z"
