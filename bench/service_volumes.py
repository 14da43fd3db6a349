"""A lesion volume through the site service on the propagation route, against the same clicks in process.

    python bench/service_volumes.py --datasets pyradiomics-lung,pyradiomics-brain --objects lesion,tumour --clicks 5

Serves each volume (whole, as its file holds it) from a real site service (uvicorn on loopback,
the packaged 2D base, frozen adapters so every arm sees the same model) and drives the 3D simulated
user (`fedpoint.shared.volume_user`: deepest point of the largest 3D error) through
`POST /api/volumes/{id}/click`, after opening the image as the page does (`GET /api/images/{id}`:
reading and normalising the file is not a click's work); each interaction's time is the HTTP round
trip of that click (the propagation included; reading the 3D mask back for the simulated user is
not timed). The same
clicks are then replayed on a `PropagationSession` in this process: the ratio is the service's
overhead. The service's CPU time per interaction (`server_cpu_ms`, the process's CPU time over the
click; with `--threads 1` the work alone, which other jobs on a loaded machine do not inflate) is
reported beside the wall times. Last, one MONAI Label `/infer` of the volume (a new client, one point): the reply's bytes
and seconds. Prints one JSON line per volume and a summary (p50/p95 per interaction).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TOKEN = "bench-token-0123456789abcdef"


def serve(config):
    import uvicorn

    from fedpoint.client.service import create_app

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return app, server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def volume_mask(client, image_id: str, shape, held) -> np.ndarray:
    """The session's 3D mask, read slice by slice (only the slices that hold it)."""
    import base64

    mask = np.zeros(shape, bool)
    for z in held:
        m = client.get(f"/api/volumes/{image_id}", params={"slice": z}).json()["mask"]
        bits = np.unpackbits(np.frombuffer(base64.b64decode(m["bits"]), np.uint8))[: m["width"] * m["height"]]
        mask[..., z] = bits.reshape(m["height"], m["width"]).T.astype(bool)
    return mask


def run_volume(url: str, image_id: str, truth: np.ndarray, spacing, clicks: int) -> dict:
    import httpx

    from fedpoint.shared.metrics import dice
    from fedpoint.shared.simulated_user import SimulatedUser

    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
    user = SimulatedUser(truth, "deepest", spacing=spacing)
    client.get(f"/api/images/{image_id}").raise_for_status()  # the page opens the image first: its load is not a click's
    mask, rows = None, []
    for _ in range(clicks):
        click = user.respond(mask)
        if click is None:
            break
        t0 = time.perf_counter()
        reply = client.post(f"/api/volumes/{image_id}/click", json={"point": list(click.point), "positive": click.positive})
        ms = (time.perf_counter() - t0) * 1e3
        reply.raise_for_status()
        body = reply.json()
        mask = volume_mask(client, image_id, truth.shape, body["mask_slices"])
        rows.append({"click": list(click.point), "positive": click.positive, "http_ms": ms, "server_ms": body["server_ms"],
                     "server_cpu_ms": body["server_cpu_ms"],
                     "slices_predicted": body["slices_predicted"], "dice": dice(mask, truth)})
    client.post(f"/api/volumes/{image_id}/discard", json={})
    # MONAI Label: one infer of the whole volume for a new client
    z = rows[0]["click"]
    t0 = time.perf_counter()
    reply = client.post("/infer/fedpoint", params={"image": image_id, "output": "image"},
                        data={"params": json.dumps({"foreground": [z], "client_id": "bench-infer"})})
    infer_s = time.perf_counter() - t0
    reply.raise_for_status()
    return {"image": image_id, "shape": list(truth.shape), "rows": rows, "infer_s": infer_s,
            "infer_bytes": len(reply.content)}


def in_process(engine, image: np.ndarray, spacing, rows: list[dict]) -> tuple[list[float], list[float]]:
    """The same clicks on a PropagationSession in this process (no HTTP, no service): wall and CPU ms."""
    from fedpoint.client.propagation import open_volume

    session = open_volume(engine, image, "bench", spacing)
    wall, cpu = [], []
    for row in rows:
        t0, c0 = time.perf_counter(), time.process_time()
        session.click(row["click"], row["positive"])
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="pyradiomics-lung,pyradiomics-brain")
    parser.add_argument("--objects", default="lesion,tumour", help="object names to annotate (the lesion volumes)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--limit", type=int, default=2, help="volumes per dataset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1: CPU time measures the work alone)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.service import make_service_config
    from fedpoint.client.service.example import _save_nifti
    from fedpoint.data import load_dataset
    from fedpoint.shared.config import AdaptationConfig

    wanted = set(args.objects.split(","))
    results = []
    engine = SiteEngine.create(None, "norm", AdaptationConfig(mode="frozen"))
    for name in args.datasets.split(","):  # one site per dataset: its modality normalises its images
        dataset = load_dataset(name)
        with tempfile.TemporaryDirectory(prefix="fedpoint-bench-volumes-") as tmp:
            images = Path(tmp) / "images"
            images.mkdir()
            truths = {}
            for case in dataset.cases[: args.limit]:
                for obj in case.objects:
                    if obj.name in wanted:
                        image_id = f"{case.case_id}-{obj.name}"
                        _save_nifti(images / f"{image_id}.nii.gz", case.image[0], case.spacing)
                        truths[image_id] = (obj.mask.astype(bool), case.spacing)
                        break
            config = make_service_config({"site": "bench", "modality": dataset.modality, "store": str(Path(tmp) / "store"),
                                          "images": str(images), "base": "base2d", "token": TOKEN, "mode": "frozen",
                                          "bank_poll_s": 3600, "threads": args.threads}, "bench")
            app, server, thread, url = serve(config)
            try:
                for image_id, (truth, spacing) in truths.items():
                    rec = run_volume(url, image_id, truth, spacing, args.clicks)
                    loaded = app.state.service.desk.load(image_id)
                    rec["in_process_ms"], rec["in_process_cpu_ms"] = in_process(engine, loaded.model_input,
                                                                                loaded.spacing, rec["rows"])
                    results.append(rec)
                    print(json.dumps({"image": image_id, "modality": dataset.modality,
                                      "http_ms": [round(r["http_ms"]) for r in rec["rows"]],
                                      "in_process_ms": [round(v) for v in rec["in_process_ms"]],
                                      "server_cpu_ms": [round(r["server_cpu_ms"]) for r in rec["rows"]],
                                      "in_process_cpu_ms": [round(v) for v in rec["in_process_cpu_ms"]],
                                      "slices_predicted": [r["slices_predicted"] for r in rec["rows"]],
                                      "dice": [round(r["dice"], 3) for r in rec["rows"]],
                                      "infer_s": round(rec["infer_s"], 2), "infer_bytes": rec["infer_bytes"]}), flush=True)
            finally:
                server.should_exit = True
                thread.join(30)
    http = np.array([r["http_ms"] for rec in results for r in rec["rows"]])
    local = np.array([v for rec in results for v in rec["in_process_ms"]])
    cpu = np.array([r["server_cpu_ms"] for rec in results for r in rec["rows"]])
    summary = {"volumes": len(results), "interactions": int(http.size),
               "http_p50_s": float(np.percentile(http, 50)) / 1e3, "http_p95_s": float(np.percentile(http, 95)) / 1e3,
               "in_process_p50_s": float(np.percentile(local, 50)) / 1e3,
               "in_process_p95_s": float(np.percentile(local, 95)) / 1e3,
               "http_over_in_process_p50": float(np.percentile(http, 50) / np.percentile(local, 50)),
               "server_cpu_p50_s": float(np.percentile(cpu, 50)) / 1e3, "server_cpu_p95_s": float(np.percentile(cpu, 95)) / 1e3,
               "infer_s": [round(r["infer_s"], 3) for r in results], "infer_bytes": [r["infer_bytes"] for r in results]}
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "volumes": results}, indent=1))


if __name__ == "__main__":
    main()
