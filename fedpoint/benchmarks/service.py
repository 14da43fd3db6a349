"""Service benchmark: a click's round trip over HTTP against the same click in process.

The real service (`fedpoint site serve`, its own process, 127.0.0.1, a free port) and an in-process
`AnnotationSession` run the same click sequences on the same image with the default 2D model in
mode mid+post: the first click of a session is a prediction, every later click a mid-interaction
update and a prediction. Clicks alternate between the two, so load from other programs hits both
alike. The ratio p50(HTTP) / p50(in process) is what the web layer costs (JSON, bit-packed mask,
socket); `web_layer_ms` is the same cost measured within each click (round trip minus the
server's own click time). Target: ratio <= 1.2 at 512 x 512.

`users` is the load a site meets when several clinicians annotate at once: 1 and 3 users, each on
their own session of the 512 x 512 slice, clicking their own sequence with a think time between
clicks, all started together. It reports each count's p50/p95 round trip and the ratio to one user.
The site's model is one shared, online-updated network, so clicks queue for it one at a time: on a
CPU-bound machine a click waits for the clicks queued before it, and nothing else.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKEN = "benchmark-token-0123456789"
MODE = "mid+post"
SETTLE_S = 0.3
TARGET_RATIO = 1.2


def _percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(samples, 50)), 2), "p95": round(float(np.percentile(samples, 95)), 2),
            "n": len(samples)}


def _image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like slice: a body disc in HU with a brighter lesion, and the lesion's mask."""
    rng = np.random.default_rng(size)
    grid = np.indices((size, size)).astype(np.float32) - size / 2
    body = np.sqrt((grid ** 2).sum(0)) < size * 0.45
    lesion = np.sqrt(((grid - size * 0.08) ** 2).sum(0)) < size * 0.12
    hu = np.where(body, 40.0, -1000.0) + np.where(lesion, 120.0, 0.0) + 20 * rng.standard_normal((size, size))
    return hu.astype(np.float32), lesion


def _clicks(mask: np.ndarray, count: int, seed: int) -> list[tuple[list[int], bool]]:
    """A fixed sequence: the lesion's centre, then alternating points inside and outside it."""
    rng = np.random.default_rng(seed)
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    centre = [int(v) for v in inside.mean(axis=0).round()]
    sequence = [(centre, True)]
    for i in range(1, count):
        pool = outside if i % 2 else inside
        sequence.append(([int(v) for v in pool[rng.integers(len(pool))]], i % 2 == 0))
    return sequence


def _base(folder: Path) -> tuple[str | None, str]:
    from fedpoint.shared.bases import resolve_base
    from fedpoint.shared.model import build_model, save_base

    try:
        resolve_base(None)
        return None, "packaged base2d"
    except FileNotFoundError:
        import torch

        from fedpoint.shared.config import ModelConfig

        torch.manual_seed(0)
        cfg = ModelConfig()
        save_base(build_model(cfg), cfg, folder / "untrained2d", {"provenance": {"note": "benchmark stand-in"}})
        return str(folder / "untrained2d"), "untrained default architecture (packaged base2d not found)"


def _engine(base: str | None):
    from fedpoint.client.engine import SiteEngine
    from fedpoint.shared.config import AdaptationConfig

    return SiteEngine.create(base=base, adaptation=AdaptationConfig(mode=MODE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(folder: Path, base: str | None, port: int) -> subprocess.Popen:
    lines = ['site = "bench"', 'modality = "CT"', f'store = "{folder / "store"}"', f'images = "{folder / "images"}"',
             f'mode = "{MODE}"', f'token = "{TOKEN}"', 'save_adapter_every = 0']
    if base:
        lines.append(f'base = "{base}"')
    (folder / "site.toml").write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-c", "from fedpoint.cli import main; main()", "site", "serve",
               "--config", str(folder / "site.toml"), "--port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def _wait_healthy(client, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 300.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become healthy in time")


def _interleaved(client, engine, image: np.ndarray, image_id: str, sequences) -> dict[str, list[float]]:
    """Each click twice, back to back: over HTTP, then in process on an identical session. Other
    load on the machine then hits both sides alike, click by click."""
    from fedpoint.data import normalize

    normalized = normalize(image[None], "CT")
    times: dict[str, list[float]] = {k: [] for k in ("http_first", "http_later", "local_first", "local_later", "server")}
    for n, sequence in enumerate([sequences[0][:2], *sequences]):  # the first pass warms both up
        user = {"X-Fedpoint-User": f"bench-{n}"}
        session = engine.open(normalized)
        for i, (point, positive) in enumerate(sequence):
            t0 = time.perf_counter()
            reply = client.post(f"/api/sessions/{image_id}/click", json={"point": point, "positive": positive}, headers=user)
            reply.raise_for_status()
            http_ms = (time.perf_counter() - t0) * 1e3
            # OpenMP worker threads spin-wait about 200 ms after their work: let the other process's
            # pool go idle first, or each side is timed while the other still burns both cores.
            time.sleep(SETTLE_S)
            t1 = time.perf_counter()
            session.click(point, positive)
            t2 = time.perf_counter()
            time.sleep(SETTLE_S)
            if n == 0:
                continue
            kind = "first" if i == 0 else "later"
            times[f"http_{kind}"].append(http_ms)
            times[f"local_{kind}"].append((t2 - t1) * 1e3)
            times["server"].append(reply.json()["server_ms"])
        client.post(f"/api/sessions/{image_id}/discard", json={}, headers=user)
    return times


THINK_S = 0.25  # a clinician's pause between clicks


def concurrent_users(base_url: str, headers: dict, image_id: str, sequences, users: int,
                     think_s: float = THINK_S) -> dict:
    """`users` clients at once, each its own session (user name) and click sequence, started
    together; returns the round-trip percentiles over every click of every user."""
    import threading

    import httpx

    barrier = threading.Barrier(users)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(u: int) -> None:
        user = {**headers, "X-Fedpoint-User": f"bench-user-{users}-{u}"}
        with httpx.Client(base_url=base_url, headers=user, timeout=300) as client:
            barrier.wait()
            for point, positive in sequences[u % len(sequences)]:
                t0 = time.perf_counter()
                reply = client.post(f"/api/sessions/{image_id}/click", json={"point": point, "positive": positive})
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    (latencies.append(ms) if reply.status_code == 200 else errors.append(reply.text[:200]))
                time.sleep(think_s)
            client.post(f"/api/sessions/{image_id}/discard", json={})

    threads = [threading.Thread(target=one, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} click(s) failed under {users} users: {errors[0]}")
    return _percentiles(latencies)


def run(sizes: tuple[int, ...] = (256, 512), clicks: int = 8, sessions: int = 3) -> dict:
    import httpx
    import torch

    with tempfile.TemporaryDirectory(prefix="fedpoint-bench-service-") as tmp:
        folder = Path(tmp)
        (folder / "images").mkdir()
        base, base_note = _base(folder)
        data = {size: _image(size) for size in sizes}
        for size, (image, _) in data.items():
            np.save(folder / "images" / f"slice{size}.npy", image)
        port = _free_port()
        process = _serve(folder, base, port)
        results = {}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=300) as client:
                _wait_healthy(client, process)
                engine = _engine(base)
                for size, (image, mask) in data.items():
                    sequences = [_clicks(mask, clicks, seed) for seed in range(sessions)]
                    t = _interleaved(client, engine, image, f"slice{size}", sequences)
                    http_all = _percentiles(t["http_first"] + t["http_later"])
                    local_all = _percentiles(t["local_first"] + t["local_later"])
                    web_cost = [h - s for h, s in zip(t["http_first"] + t["http_later"], t["server"])]
                    results[f"{size}x{size}"] = {
                        "http_ms": http_all,
                        "in_process_ms": local_all,
                        "ratio_p50": round(http_all["p50"] / local_all["p50"], 3),
                        "ratio_p95": round(http_all["p95"] / local_all["p95"], 3),
                        "server_side_ms": _percentiles(t["server"]),
                        "web_layer_ms": _percentiles(web_cost),
                        "first_click": {"http_ms": _percentiles(t["http_first"]),
                                        "in_process_ms": _percentiles(t["local_first"])},
                        "correction_clicks": {"http_ms": _percentiles(t["http_later"]),
                                              "in_process_ms": _percentiles(t["local_later"])},
                    }
                image, mask = data[max(sizes)]
                sequences = [_clicks(mask, clicks, 100 + seed) for seed in range(3)]
                url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
                concurrent_users(url, auth, f"slice{max(sizes)}", sequences[:1], 1)  # warm-up
                users = {n: concurrent_users(url, auth, f"slice{max(sizes)}", sequences, n) for n in (1, 3)}
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    largest = results[f"{max(sizes)}x{max(sizes)}"]
    return {
        "benchmark": "service click round trip",
        "model": base_note,
        "mode": MODE,
        "clicks_per_session": clicks,
        "sessions": sessions,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu(s), {platform.python_version()}",
        "results": results,
        "users": {f"{n}": v for n, v in users.items()} | {
            "size": max(sizes), "think_s": THINK_S,
            "ratio_p50_3_vs_1": round(users[3]["p50"] / users[1]["p50"], 3),
            "ratio_p95_3_vs_1": round(users[3]["p95"] / users[1]["p95"], 3)},
        "target": {"ratio_p50_max": TARGET_RATIO, "size": max(sizes), "met": largest["ratio_p50"] <= TARGET_RATIO},
    }
