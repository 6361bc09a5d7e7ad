"""Soak: ``kbuild serve`` under 200 concurrent clients plus trickling ones, for a fixed time (issue 23).

A synthetic store (one snapshot, 100 classes x 200 descriptions = 20 000, D 64: the server is measured,
not CLIP) is served by a real ``kbuild serve`` process on 127.0.0.1. Then, until the time is up:

- ``--clients`` (200) closed-loop clients: each sends ``GET /api/info`` (the small request, timed),
  every ``--big-every`` (20th) request ``GET /api/snapshots/snapshot_v1`` instead (about 6 MB), and
  waits ``--think`` seconds between requests; a 503 is counted and retried after its Retry-After;
- ``--tricklers`` (64) clients that open a connection and send one byte of a request every 2 s,
  opening a new one whenever the server drops theirs (the lock-out attack of issue 23, item 12).

Everything connects to 127.0.0.1 only; every loop ends at the deadline. Printed: a table of the small
request's p50/p99/max latency, replies by kind, connection errors, and the server's peak RSS
(VmHWM from /proc).

    python benchmarks/soak_serve.py                  # 20 minutes
    python benchmarks/soak_serve.py --minutes 3      # what the README's figures come from
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def make_store(home: Path, classes: int = 100, per_class: int = 200, dim: int = 64) -> None:
    sys.path.insert(0, str(ROOT))
    from kbuild.descriptions import Description
    from kbuild.store import SnapshotStore
    from kbuild.store.manifest import SnapshotDraft

    texts = [Description(f"class {c}", f"visual trait number {i} of class {c}, " + "described at length " * 12)
             for c in range(classes) for i in range(per_class)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(texts), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    SnapshotStore(home).publish(SnapshotDraft(texts, vectors, "load", {}, clip={"model_id": "soak/r", "dim": dim}))


def start_server(home: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", "from kbuild.cli import main; main()", "serve", "--store", str(home),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not match:
        proc.kill()
        raise SystemExit(f"kbuild serve did not start: {line!r} {proc.stderr.read()[:500]}")
    return proc, int(match.group(1))


class Tally:
    def __init__(self):
        self.small: list[float] = []
        self.big: list[float] = []
        self.kinds: dict[str, int] = {}

    def count(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


async def _request(port: int, path: str) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, len(data)


async def client(port: int, deadline: float, args, tally: Tally, index: int) -> None:
    n = index  # spread the big requests over the clients
    while time.monotonic() < deadline:
        n += 1
        big = n % args.big_every == 0
        started = time.monotonic()
        try:
            status, _ = await asyncio.wait_for(_request(port, "/api/snapshots/snapshot_v1" if big else "/api/info"),
                                               timeout=60)
        except (ConnectionError, OSError) as exc:
            tally.count(f"error {type(exc).__name__}")
            await asyncio.sleep(args.think)
            continue
        except asyncio.TimeoutError:
            tally.count("timeout 60 s")
            continue
        took = time.monotonic() - started
        tally.count(f"{'snapshot' if big else 'info'} {status}")
        if status == 200:
            (tally.big if big else tally.small).append(took)
        await asyncio.sleep(1.0 if status == 503 else args.think)


async def trickler(port: int, deadline: float, tally: Tally) -> None:
    request = f"GET /api/info HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Slow: {'z' * 200}\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(2)
            continue
        tally.count("trickle connection")
        try:
            for byte in request:
                if time.monotonic() >= deadline or reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(2)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(port: int, args) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + args.minutes * 60
    tasks = [client(port, deadline, args, tally, i) for i in range(args.clients)]
    tasks += [trickler(port, deadline, tally) for _ in range(args.tricklers)]
    await asyncio.gather(*tasks)
    return tally


def percentile(values: list[float], q: float) -> str:
    return f"{1000 * float(np.percentile(values, q)):.0f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--tricklers", type=int, default=64)
    parser.add_argument("--think", type=float, default=0.5, help="seconds a client waits between requests")
    parser.add_argument("--big-every", type=int, default=20, help="every Nth request reads the whole snapshot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak_serve_") as tmp:
        home = Path(tmp) / "store"
        make_store(home)
        proc, port = start_server(home)
        try:
            started = time.monotonic()
            tally = asyncio.run(soak(port, args))
            elapsed = time.monotonic() - started
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
    tracebacks = err.count("Traceback")
    rows = [("duration", f"{elapsed / 60:.1f} min"), ("clients / tricklers", f"{args.clients} / {args.tricklers}"),
            ("small request (GET /api/info) p50", percentile(tally.small, 50)),
            ("small request p99", percentile(tally.small, 99)),
            ("small request max", f"{1000 * max(tally.small):.0f} ms" if tally.small else "-"),
            ("snapshot read (20 000 descr.) p50", percentile(tally.big, 50)),
            ("snapshot read p99", percentile(tally.big, 99)),
            *sorted((kind, str(n)) for kind, n in tally.kinds.items()),
            ("server peak RSS", f"{rss:.0f} MB"), ("tracebacks in the server log", str(tracebacks))]
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
