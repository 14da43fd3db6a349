"""Engine benchmark: forward, click-to-mask and adapter-step times, adapter sizes; all side by side.

Targets (2-core CPU, default 2D model, 256x256): click-to-mask p95 <= 100 ms and <= 1.2x the bare
forward; a `norm` step <= 1.0x a `full` step; `norm` bytes <= 1% and `lora` bytes <= 5% of the
full model. The result says which held.

`click_to_mask_512_ms` is the latency a clinician meets: a whole 512 x 512 slice (a real one, the
stardist nuclei field, when the built-in data is prepared; else a synthetic one), the `norm`
adapter in mode mid+post, simulated clicks on its objects timed end to end (`session.click`:
focus window, prediction, paste-back and the mid-interaction update).

`box_to_mask_512_ms` is the box's latency on the same slice (a base trained with box prompts): a
tight box around each object (`session.box`), and, under `box_to_mask_512.click_after_box_ms`, the
simulated user's correction click after it, mid-interaction update included. Target: both p95 <= 100 ms.

`click_to_mask_3d_ms` is the same for volumes with the 3D base (packaged `base3d`, else its
untrained architecture): `crop96` clicks on a 160^3 volume whose every focus window is 96^3 native
voxels (resampled to the working size), `volume128` on a 128^3 volume whose window is the whole
volume; each with its ratio to the bare 3D forward at the working size. Target on the 2-core CPU:
crop96 p95 <= 300 ms, mid-interaction update included.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch

from fedpoint.shared.adapters import ADAPTER_CLASSES, make_adapter
from fedpoint.shared.clicks import Click
from fedpoint.shared.config import AdaptationConfig, ModelConfig


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(samples_ms, 50)), 3), "p95": round(float(np.percentile(samples_ms, 95)), 3)}


def _timed(fn, repeats: int, warmup: int = 3, sync=lambda: None) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _interleaved(first, second, repeats: int, sync) -> tuple[list[float], list[float]]:
    a, b = _timed(first, 1, warmup=3, sync=sync), _timed(second, 1, warmup=3, sync=sync)
    a.clear(), b.clear()
    for _ in range(repeats):
        a += _timed(first, 1, warmup=0, sync=sync)
        b += _timed(second, 1, warmup=0, sync=sync)
    return a, b


def _base(spatial_dims: int, device: str):
    from fedpoint.shared.model import build_model, load_base

    if spatial_dims == 2:
        try:
            net, cfg, card = load_base(None, device)
            return net, cfg, "packaged base2d"
        except FileNotFoundError:
            pass
    cfg = ModelConfig(spatial_dims=spatial_dims)
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval(), cfg, "untrained default architecture"


def _test_image(size: int, dims: int) -> tuple[np.ndarray, tuple[int, ...]]:
    rng = np.random.default_rng(0)
    shape = (size,) * dims
    grid = np.indices(shape).astype(np.float32) - size / 2
    blob = (np.sqrt((grid ** 2).sum(0)) < size / 5).astype(np.float32)
    return (0.3 + 0.5 * blob + 0.05 * rng.standard_normal(shape)).astype(np.float32)[None], tuple(s // 2 for s in shape)


CLICKS_512 = 20


def _slice_512() -> tuple[np.ndarray, list[np.ndarray], str]:
    """A 512 x 512 slice and its objects' masks: real if the built-in data is there, else synthetic."""
    try:
        from fedpoint.data import full_slice_samples, load_dataset

        samples = [s for s in full_slice_samples(load_dataset("stardist-nuclei")) if s.mask.shape == (512, 512)]
        if samples:
            return samples[0].image, [s.mask for s in samples[:16]], "stardist-nuclei (real slice)"
    except (OSError, ValueError, KeyError, ImportError):
        pass
    rng = np.random.default_rng(0)
    grid = np.indices((512, 512)).astype(np.float32)
    image = 0.2 + 0.05 * rng.standard_normal((512, 512)).astype(np.float32)
    masks = []
    for _ in range(8):
        centre, radius = rng.uniform(60, 452, 2), rng.uniform(8, 30)
        mask = np.sqrt(((grid - centre[:, None, None]) ** 2).sum(0)) < radius
        image[mask] += 0.5
        masks.append(mask)
    return image[None].astype(np.float32), masks, "synthetic"


def simulated_clicks(engine, image: np.ndarray, masks: list[np.ndarray], clicks: int, per_object: int,
                     warmup: int, sync=lambda: None, on_click=None) -> list[float]:
    """Times of `session.click` (ms): objects in turn, a first click and up to `per_object - 1`
    corrections each from the simulated user, until `clicks` are timed after `warmup` untimed ones;
    each object's mask is accepted (so the post update runs between objects, as for a user)."""
    from fedpoint.shared.simulated_user import simulate

    times: list[float] = []
    k = 0
    while len(times) < clicks:
        mask = masks[k % len(masks)]
        k += 1
        session = engine.open(image, f"bench-{k}")

        def timed_click(chosen, session=session):
            nonlocal warmup
            sync()
            t0 = time.perf_counter()
            out = session.click(chosen[-1].point, chosen[-1].positive)
            sync()
            if on_click is not None:
                on_click(session)
            if warmup:
                warmup -= 1
            else:
                times.append((time.perf_counter() - t0) * 1e3)
            return out

        for _ in simulate(timed_click, mask, per_object, score=False):
            pass
        if session.mask.any():
            engine.accept(session)
    return times


def click_to_mask_512(net, cfg: ModelConfig, device: str, clicks: int = CLICKS_512, sync=lambda: None) -> dict:
    """p50/p95 of `session.click` on a 512 x 512 slice, mode mid+post, `norm` adapter (see module doc)."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_model import SiteModelFactory

    image, masks, source = _slice_512()
    engine = SiteEngine(SiteModelFactory(net, cfg, AdaptationConfig(mode="mid+post"), device).fresh())
    times = simulated_clicks(engine, image, masks, clicks, per_object=5, warmup=3, sync=sync)
    return {**_percentiles(times), "clicks": len(times), "image": source}


def box_to_mask_512(net, cfg: ModelConfig, device: str, boxes: int = CLICKS_512, sync=lambda: None) -> dict:
    """p50/p95 of `session.box` (a tight box around each object of the 512 x 512 slice) and of the
    correction click that follows it (the simulated user's, with its mid-interaction update), mode
    mid+post, `norm` adapter; each object's mask accepted as a user would."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_model import SiteModelFactory
    from fedpoint.shared.simulated_user import SimulatedUser, tight_box

    image, masks, source = _slice_512()
    engine = SiteEngine(SiteModelFactory(net, cfg, AdaptationConfig(mode="mid+post"), device).fresh())
    box_ms, click_ms, warmup, k = [], [], 3, 0
    while len(box_ms) < boxes:
        mask = masks[k % len(masks)]
        k += 1
        session = engine.open(image, f"bench-box-{k}")
        box = tight_box(mask)
        sync()
        t0 = time.perf_counter()
        shown = session.box(box.lo, box.hi)
        sync()
        t1 = time.perf_counter()
        click = SimulatedUser(mask).clicker.next_click(shown)
        if click is not None:
            session.click(click.point, click.positive)
            sync()
        t2 = time.perf_counter()
        if warmup:
            warmup -= 1
        else:
            box_ms.append((t1 - t0) * 1e3)
            if click is not None:
                click_ms.append((t2 - t1) * 1e3)
        if session.mask.any():
            engine.accept(session)
    return {"box": _percentiles(box_ms), "click_after_box": _percentiles(click_ms or [float("nan")]),
            "boxes": len(box_ms), "image": source}


ACCEPTS = 8


def accept_cost(net, cfg: ModelConfig, device: str, accepts: int = ACCEPTS, sync=lambda: None) -> dict:
    """Per accept on a 512 x 512 slice (mode mid+post, `norm`): the post update and the replay
    judge's time (`fedpoint.client.replay_judge`, its default cases and clicks), side by side on
    the same accepts; the judge runs on accept only, so a click costs what it did."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_model import SiteModelFactory
    from fedpoint.client.stream import annotate

    image, masks, source = _slice_512()
    cfg_judged = AdaptationConfig(mode="mid+post", judge=True)
    engine = SiteEngine(SiteModelFactory(net, cfg, cfg_judged, device).fresh())
    post, judge = [], []
    k = 0
    while len(judge) < accepts and k < 4 * accepts:  # bounded: a model that never gives a mask accepts nothing
        sync()
        record = annotate(engine, image, masks[k % len(masks)], 5, f"bench-accept-{k}")
        k += 1
        if record["judge_ms"] > 0:  # a held-back case is not judged
            post.append(record["post_ms"])
            judge.append(record["judge_ms"])
    if not judge:
        return {"image": source, "accepts": 0, "post_ms": None, "judge_ms": None, "judge_to_post_ratio": None}
    post_p, judge_p = _percentiles(post), _percentiles(judge)
    return {"image": source, "accepts": len(judge), "judge_cases": cfg_judged.judge_cases,
            "judge_clicks": cfg_judged.judge_clicks, "post_ms": post_p, "judge_ms": judge_p,
            "judge_to_post_ratio": {q: round(judge_p[q] / post_p[q], 3) for q in ("p50", "p95")}}


CLICKS_3D = 12


def _base3d(device: str):
    from fedpoint.shared.model import build_model, load_base

    try:
        net, cfg, _ = load_base("base3d", device)
        return net, cfg, "packaged base3d"
    except FileNotFoundError:
        from fedpoint.simulations.pretrain import BASE3D_MODEL

        torch.manual_seed(0)
        return build_model(BASE3D_MODEL).to(device).eval(), BASE3D_MODEL, "untrained base3d architecture"


def _balls(side: int, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    grid = np.indices((side,) * 3).astype(np.float32)
    image = 0.2 + 0.05 * rng.standard_normal((side,) * 3).astype(np.float32)
    masks = []
    for _ in range(count):
        centre, radius = rng.uniform(0.35 * side, 0.65 * side, 3), rng.uniform(6, 14)
        mask = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) < radius
        image[mask] += 0.5
        masks.append(mask)
    return image[None], masks


def click_to_mask_3d(device: str, clicks: int = CLICKS_3D, sync=lambda: None) -> dict:
    """p50/p95 of `session.click` on volumes with the 3D base, mode mid+post, `norm` adapter, and
    the ratio to the bare forward at the working size (see the module doc)."""
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_model import SiteModelFactory
    from fedpoint.shared.focus import FocusConfig

    net, cfg, name = _base3d(device)
    out = {"base": name}
    for label, side, window in (("crop96", 160, 96), ("volume128", 128, 128)):
        image, masks = _balls(side, 4)
        focus = FocusConfig(context=window, min_size=window)  # every window `window`^3 native voxels
        engine = SiteEngine(SiteModelFactory(net, cfg, AdaptationConfig(mode="mid+post"), device, focus).fresh())
        sizes = set()
        times = simulated_clicks(engine, image, masks, clicks, per_object=4, warmup=2, sync=sync,
                                 on_click=lambda s: sizes.add((tuple(s.steps[-1].window.size), tuple(s.steps[-1].window.out_size))))
        work = max(sizes, key=lambda s: s[1])[1]
        x = torch.zeros((1, cfg.in_channels, *work), device=device)

        def forward():
            with torch.no_grad():
                net(x)

        fwd = _percentiles(_timed(forward, max(5, clicks // 2), warmup=2, sync=sync))
        click_p = _percentiles(times)
        out[label] = {**click_p, "clicks": len(times), "volume": [side] * 3, "windows": [list(w) for w in sorted({a[0] for a in sizes})],
                      "working_size": list(work), "forward_ms": fwd,
                      "ratio_to_forward": {q: round(click_p[q] / fwd[q], 3) for q in ("p50", "p95")}}
    return out


def run(size: int = 256, repeats: int = 30, spatial_dims: int = 2, device: str = "cpu", volumes: bool = True) -> dict:
    from fedpoint.client.engine import SiteEngine
    from fedpoint.client.site_model import SiteModelFactory
    from fedpoint.client.online import mid_interaction_update

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    net, cfg, base_name = _base(spatial_dims, device)
    image, centre = _test_image(size, spatial_dims)
    x = torch.zeros((1, cfg.in_channels, *image.shape[1:]), device=device)
    x[:, : cfg.image_channels] = torch.from_numpy(image).to(device)

    def forward():
        with torch.no_grad():
            net(x)

    frozen = SiteEngine(SiteModelFactory(net, cfg, AdaptationConfig(mode="frozen"), device).fresh())
    session = frozen.open(image, "bench")
    offsets = np.random.default_rng(1).integers(-size // 8, size // 8, size=(repeats + 10, spatial_dims))
    points = iter([tuple(int(c + o) for c, o in zip(centre, off)) for off in offsets])

    def click():
        nonlocal session
        if len(session.steps) >= 10:  # a new image every ten clicks, as a user would
            session = frozen.open(image, "bench")
        session.click(next(points), True)

    # Interleaved, so that both see the same machine load: on a shared CPU, timing one block of
    # forwards and then one block of clicks measures the load as much as the code.
    forward_ms, click_ms = _interleaved(forward, click, repeats, sync)

    full_params = sum(p.numel() for p in net.parameters())
    full_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    steps, params, nbytes = {}, {}, {}
    image_t = torch.from_numpy(image).to(device)[None]
    target = (image_t[:, :1] > 0.55).float()
    prev = torch.zeros_like(target)
    clicks = [Click(centre, True)]
    for kind in ADAPTER_CLASSES:
        adapter = make_adapter(net, kind)
        model = SiteModelFactory(net, cfg, AdaptationConfig(mode="mid"), device).wrap(adapter)
        steps[kind] = _timed(lambda: mid_interaction_update(model, image_t, clicks, prev, clicks[0], target),
                             max(5, repeats // 3), warmup=2, sync=sync)
        params[kind], nbytes[kind] = adapter.num_trainable(), adapter.nbytes()

    big = click_to_mask_512(net, cfg, device, max(CLICKS_512, repeats), sync) if spatial_dims == 2 else None
    boxed = box_to_mask_512(net, cfg, device, max(CLICKS_512, repeats), sync) if spatial_dims == 2 and cfg.takes_box else None
    accept = accept_cost(net, cfg, device, sync=sync) if spatial_dims == 2 else None
    vol = click_to_mask_3d(device, sync=sync) if volumes else None

    step_p50 = {k: float(np.percentile(v, 50)) for k, v in steps.items()}
    click_p = _percentiles(click_ms)
    fwd_p = _percentiles(forward_ms)
    result = {
        "device": device if device != "cpu" else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        "model": {"base": base_name, "spatial_dims": spatial_dims, "input": list(image.shape[1:]),
                  "parameters": full_params, "bytes": full_bytes},
        "forward_ms": fwd_p,
        "click_to_mask_ms": click_p,
        "click_to_mask_512_ms": None if big is None else {"p50": big["p50"], "p95": big["p95"]},
        "click_to_mask_512": None if big is None else {"clicks": big["clicks"], "image": big["image"],
                                                       "mode": "mid+post", "adapter": "norm"},
        "box_to_mask_512_ms": None if boxed is None else boxed["box"],
        "box_to_mask_512": None if boxed is None else {"boxes": boxed["boxes"], "image": boxed["image"], "mode": "mid+post",
                                                       "adapter": "norm", "click_after_box_ms": boxed["click_after_box"]},
        "click_to_mask_3d_ms": None if vol is None else {k: {"p50": vol[k]["p50"], "p95": vol[k]["p95"]} for k in ("crop96", "volume128")},
        "click_to_mask_3d": vol,
        "accept_ms": accept,  # the replay judge's cost per accept, beside the post update's
        "click_to_forward_ratio": {"p50": round(click_p["p50"] / fwd_p["p50"], 3), "p95": round(click_p["p95"] / fwd_p["p95"], 3)},
        "step_ms": {k: round(v, 3) for k, v in step_p50.items()},
        "step_ratio_vs_full": {k: round(v / step_p50["full"], 3) for k, v in step_p50.items()},
        "trainable_parameters": params,
        "bytes": nbytes,
        "bytes_ratio_vs_full": {k: round(v / full_bytes, 5) for k, v in nbytes.items()},
    }
    result["targets"] = {
        "click_to_mask_p95_le_100ms": click_p["p95"] <= 100.0,
        "click_to_mask_p95_le_1.2x_forward": click_p["p95"] <= 1.2 * fwd_p["p95"],
        "norm_step_le_full_step": result["step_ratio_vs_full"]["norm"] <= 1.0,
        "norm_bytes_le_1pct": result["bytes_ratio_vs_full"]["norm"] <= 0.01,
        "lora_bytes_le_5pct": result["bytes_ratio_vs_full"]["lora"] <= 0.05,
    }
    if big is not None:
        result["targets"]["click_to_mask_512_p95_le_100ms"] = big["p95"] <= 100.0
    if boxed is not None:
        result["targets"]["box_to_mask_512_p95_le_100ms"] = boxed["box"]["p95"] <= 100.0
        result["targets"]["click_after_box_512_p95_le_100ms"] = boxed["click_after_box"]["p95"] <= 100.0
    if vol is not None:
        result["targets"]["click_to_mask_3d_crop96_p95_le_300ms"] = vol["crop96"]["p95"] <= 300.0
    return result
