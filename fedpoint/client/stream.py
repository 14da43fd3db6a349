"""The one evaluation entry point: a stream of images through the simulated user.

Every experiment arm, test and benchmark that reports Dice@k or NoC goes through `annotate` and
`run_stream`, so numbers are comparable. The simulated user (`fedpoint.shared.simulated_user`)
clicks deterministically, up to `clicks` times (stopping early only when the mask is perfect),
then accepts the final mask. Its accepted mask is the model's final prediction, not the ground truth: online
updates never see a label the user did not produce.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import numpy as np

from fedpoint.client.engine import SiteEngine
from fedpoint.shared.metrics import BOX_METRICS, DICE_AUC, SUMMARY_KEYS, box_metrics, click_metrics, dice
from fedpoint.shared.simulated_user import simulate, tight_box
from fedpoint.shared.tasks import declared_structure, structure_of
from fedpoint.shared.volume_user import INTERACTION_P50, INTERACTION_P95, simulate_volume, volume_metrics

PROMPTS = ("click", "box")  # the first interaction: a click at the object's deepest point, or a tight box
VOLUME_ROUTES = ("propagate", "3d")  # how a volume is annotated: the 2D base through its slices, or the 3D base


def annotate(engine: SiteEngine, image: np.ndarray, gt: np.ndarray, clicks: int = 10, case_id: str | None = None,
             spacing: tuple[float, ...] | None = None, accept_truth: bool = False, prompt: str = "click",
             task: str | None = None) -> dict:
    """One image through the simulated user; with `spacing` (mm per axis) the user's "deepest
    point" and the focus crop are measured in millimetres. The user accepts the last mask as it
    is (a pseudo-label), or with `accept_truth` corrects it to the true mask first, as a clinician
    who edits the mask does (CLoPA's setting: episodes then train on true labels).

    `prompt="box"`: the CVPR 2025 challenge's protocol, a tight box around the truth first (one
    interaction of the `clicks` budget), then clicks at the largest error of each prediction; the
    record adds `BOX_METRICS`. `task` names the structure whose adapter the session adapts (None:
    the engine's primary task)."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; known: {', '.join(PROMPTS)}")
    session = engine.open(image, case_id, spacing=spacing, task=task)
    on_click = lambda chosen: session.click(chosen[-1].point, chosen[-1].positive)  # noqa: E731
    dices = []
    start = None
    if prompt == "box":
        box = tight_box(gt)
        start = session.box(box.lo, box.hi)
        dices.append(dice(start, gt))
        clicks -= 1
    steps = simulate(on_click, gt, clicks, spacing=spacing, start=start) if clicks > 0 else []
    t0 = time.perf_counter()
    dices += [step.dice for step in steps]
    if not dices:
        raise ValueError(f"{case_id}: the simulated user found nothing to click")
    final = session.mask
    judge = engine.slot(task).judge
    judged = len(judge.seconds) if judge is not None else 0
    if final.any():
        engine.accept(session, gt if accept_truth else None)
    seconds = time.perf_counter() - t0
    judge_ms = 1e3 * judge.seconds[-1] if judge is not None and len(judge.seconds) > judged else 0.0
    rec = session.record()
    return {
        "case_id": session.case_id,
        "prompt": prompt,
        "dices": [round(d, 4) for d in dices],
        **click_metrics(dices),
        **(box_metrics(dices) if prompt == "box" else {}),
        "predict_ms": float(np.mean(rec["predict_ms"])),
        "update_ms": float(np.mean(rec["update_ms"])),
        "post_ms": rec["post_ms"],
        "seconds": round(seconds, 3),
        "accepted": bool(final.any()),
        "windows": rec["windows"],  # where the network looked for each click (focus crop)
        "guard_rejected": rec["guard_rejected"],  # online updates the guard rolled back on this image
        "guard_reasons": rec["guard_reasons"],
        "judge_ms": round(judge_ms, 3),  # the replay judge's time on this accept (0: not judged)
    }


def annotate_volume(engine: SiteEngine, image: np.ndarray, gt: np.ndarray, route: str, clicks: int = 5,
                    case_id: str | None = None, spacing: tuple[float, ...] | None = None,
                    accept_truth: bool = False, propagation=None, task: str | None = None) -> dict:
    """One volume through the 3D simulated user (`fedpoint.shared.volume_user`) by `route`:
    "propagate" (the engine's 2D base, `fedpoint.client.propagation`) or "3d" (its 3D base).
    Interactions, Dice and NoC are counted on the 3D mask; the user accepts the last mask.
    `propagation` (a `PropagationConfig`) compares stop rules on the dev volumes; `task` picks the
    adapter (None: the engine's primary one)."""
    if route == "propagate":
        from fedpoint.client.propagation import open_volume

        session = open_volume(engine, image, case_id or "volume", spacing, config=propagation, task=task)
    elif route == "3d":
        session = engine.open(image, case_id, spacing=spacing, task=task)
    else:
        raise ValueError(f"unknown volume route {route!r}; use one of {', '.join(VOLUME_ROUTES)}")
    steps = simulate_volume(lambda click: session.click(click.point, click.positive), gt, clicks, spacing)
    if not steps:
        raise ValueError(f"{case_id}: the simulated user found nothing to click")
    t0 = time.perf_counter()
    final = np.asarray(session.mask, bool)
    if final.any():
        if route == "3d":
            engine.accept(session, gt if accept_truth else None)
        else:
            session.accept(gt if accept_truth else None)
    ms = [round(s.ms, 3) for s in steps]
    return {
        "case_id": case_id or "volume",
        "route": route,
        "dices": [round(s.dice, 4) for s in steps],
        **volume_metrics(steps),
        "interaction_ms": ms,
        "predict_ms": float(np.mean(ms)),
        "update_ms": 0.0,
        "post_ms": round((time.perf_counter() - t0) * 1e3, 3),
        "seconds": round(time.perf_counter() - t0 + sum(ms) / 1e3, 3),
        "accepted": bool(final.any()),
        "clicks_at": [list(s.click.point) for s in steps],
        "slices_predicted": session.record().get("slices_predicted", [1] * len(steps)),
    }


def run_stream(engine: SiteEngine, samples: Sequence, clicks: int = 10,
               on_image: Callable[[int, dict], None] | None = None, accept_truth: bool = False,
               prompt: str = "click", per_task: bool = False, route: str | None = None,
               tasks: Sequence[str | None] | None = None) -> list[dict]:
    """Annotate samples in order (objects with `.image`, `.mask`, `.case_id`, `.object_name`); with
    `per_task` each sample adapts the adapter of its structure (`.object_name` without its
    instance number), with `tasks` (a site's declared tasks) that of its structure when declared,
    else the default task's; otherwise the engine's primary one. With a `route`, each sample is a
    volume annotated by that route (`annotate_volume`)."""
    records = []
    for i, sample in enumerate(samples):
        case_id = _case_id(sample, i)
        spacing = getattr(sample, "spacing", None)
        name = getattr(sample, "object_name", "")
        task = (declared_structure(name, tasks) if tasks
                else structure_of(name) if per_task else None)
        if route is not None:
            record = annotate_volume(engine, sample.image, sample.mask, route, clicks, case_id, spacing, accept_truth,
                                     task=task)
        else:
            record = annotate(engine, sample.image, sample.mask, clicks, case_id, spacing, accept_truth, prompt, task)
        record.update(index=i, object=getattr(sample, "object_name", ""), modality=getattr(sample, "modality", ""),
                      task=engine.task if task is None else task)
        records.append(record)
        if on_image is not None:
            on_image(i, record)
    engine.wait()
    return records


def _case_id(sample, index: int) -> str:
    raw = f"{getattr(sample, 'case_id', 'case')}-{getattr(sample, 'object_name', 'obj')}-{index:04d}"
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in raw)[:120]


def summarize_stream(records: Iterable[dict]) -> dict[str, float]:
    records = list(records)
    keys = SUMMARY_KEYS + tuple(k for k in BOX_METRICS if records and all(k in r for r in records))
    summary = {k: float(np.mean([r[k] for r in records])) for k in keys} | {
        "images": len(records), "guard_rejected": int(sum(r.get("guard_rejected", 0) for r in records))}
    if records and all("interaction_ms" in r for r in records):  # volumes: Dice-AUC, and times over every interaction
        pooled = np.concatenate([r["interaction_ms"] for r in records])
        summary |= {DICE_AUC: float(np.mean([r[DICE_AUC] for r in records])),
                    INTERACTION_P50: float(np.percentile(pooled, 50)), INTERACTION_P95: float(np.percentile(pooled, 95))}
    return summary
