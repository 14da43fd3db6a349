"""What the coordinator and a site say to each other in a Flower round, defined once for both.

An instruction (coordinator -> site) is a Flower `RecordDict`:

    "arrays"  ArrayRecord   the bank adapter's trainable parameters, keyed by parameter name
    "config"  ConfigRecord  a `RoundInstruction` (round, bank, bank version, base fingerprint,
                            adapter config, how many images/clicks, adaptation mode, ...)

A reply (site -> coordinator):

    "arrays"  ArrayRecord   the adapter delta against the bank it received, same names and order
    "metrics" MetricRecord  "num-examples" (accepted cases, the aggregation weight) and a few
                            numeric means from `fedpoint.shared.payload.ALLOWED_METRICS`
    "config"  ConfigRecord  who answered: site id, modality, the bank it trained from, its base

A query (coordinator -> site, once per node and run) asks only who the site is, so the
coordinator can route it to its task or modality bank; the answer is that "config" record alone
(site id, modality and, when the site declares one, its task; a site that labels several
structures adds "tasks", the list of them, its primary task first).

A site of several tasks works on one of them a round, the one the instruction's "task" names
(the coordinator takes them in turn), and its reply claims that task. An instruction without
"task" means the site's primary task: what a site of one task is always sent.

The run config (`[tool.flwr.app.config]` in pyproject.toml, plus `--run-config` overrides) is
parsed in `fedpoint.shared.run_config`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedpoint.shared.config import AdapterConfig

if TYPE_CHECKING:
    from fedpoint.shared.run_config import CoordinatorConfig

# ------------------------------------------------------------------------------ record keys
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# instruction config keys
SERVER_ROUND = "server-round"  # FedAvg injects this one itself
BANK = "bank"
BANK_VERSION = "bank-version"
BASE_FINGERPRINT = "base-fingerprint"
ADAPTER_KIND = "adapter-kind"
ADAPTER_CONFIG = "adapter-config"  # AdapterConfig as JSON
IMAGES = "images"
LOCAL_EPOCHS = "local-epochs"
CLICKS = "clicks"
MODE = "mode"
LR = "lr"
SIZE = "size"
SEED = "seed"
CLIPPING_NORM = "clipping_norm"  # Flower's key, set by its client-side DP wrapper

# reply config keys (who answered)
SITE_ID = "site-id"
MODALITY = "modality"
TASK = "task"  # the structure the site labels (fedpoint.shared.tasks), for its task bank; absent: none
TASKS = "tasks"  # identity only: every task a site of several declares (a list of names), its primary first
REPLY_CONFIG_KEYS = frozenset({SITE_ID, MODALITY, TASK, TASKS, BANK, BANK_VERSION, BASE_FINGERPRINT})
MAX_REPLY_STRING = 128  # a site id or modality; longer strings have no business leaving a site

# reply metric keys
NUM_EXAMPLES = "num-examples"

# node config keys: deployment (flower-supernode --node-config) and simulation (set by Flower)
NODE_SITE_ID = "site-id"
NODE_MODALITY = "modality"
NODE_SITE_STORE = "site-store"
NODE_TASK = "task"  # optional: the structure this site labels (its adapter in the store, its task bank)
NODE_TASKS = "tasks"  # optional: several structures, comma-separated ("liver,lesion"); `task`, if also given, is the primary
NODE_DEVICE = "device"  # optional: cpu, cuda, cuda:N or auto (`fedpoint.shared.device`; default cpu)
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# every key a coordinator's instruction may hold; a site refuses any other
INSTRUCTION_CONFIG_KEYS = frozenset({SERVER_ROUND, BANK, BANK_VERSION, BASE_FINGERPRINT, ADAPTER_KIND, ADAPTER_CONFIG,
                                     IMAGES, LOCAL_EPOCHS, CLICKS, MODE, LR, SIZE, SEED, CLIPPING_NORM, TASK})
INSTRUCTION_RECORDS = frozenset({ARRAYS, CONFIG})
MAX_INSTRUCTION_STRING = 4096  # the adapter config JSON is the longest honest value

# Fixed error codes a site replies with instead of exception text (which stays in the site's log).
# Flower carries them as the error's code and reason; nothing else of the failure leaves the site.
SITE_ERROR_BASE = 7000
SITE_ERRORS: dict[str, int] = {
    "train-failed": SITE_ERROR_BASE + 1,
    "query-failed": SITE_ERROR_BASE + 2,
    "instruction-refused": SITE_ERROR_BASE + 3,
    "egress-refused": SITE_ERROR_BASE + 4,
    "adapter-mismatch": SITE_ERROR_BASE + 5,
    "evaluate-failed": SITE_ERROR_BASE + 6,
    "device-unavailable": SITE_ERROR_BASE + 7,  # the node config's device is not on the site's machine
}
SITE_ERROR_NAMES = {code: name for name, code in SITE_ERRORS.items()}
EVAL_CLICKS = 5  # the federated evaluation round: the simulated user's clicks per held-out case
EVAL_MAX_CASES = 16  # and at most this many held-out cases a site (the newest), so a round stays short;
# the coordinator refuses a claim of more


# ------------------------------------------------------------------------------ names
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_MODALITY = 64
_MODALITY_PUNCTUATION = frozenset(" -_.+/")


def is_safe_id(value) -> bool:
    """The one id rule (site ids; and case, task, image and user ids, which become folder names at
    a site: `fedpoint.client.site_store.check_id`): ASCII letters, digits, '.', '_' and '-',
    1..128 characters, starting with a letter or digit, no '..'."""
    return isinstance(value, str) and _SAFE_ID.fullmatch(value) is not None and ".." not in value


def check_site_id(value) -> str:
    """A site id (`is_safe_id`)."""
    if not is_safe_id(value):
        raise ValueError(f"invalid site id {printable(value)}: use letters, digits, '.', '_' or '-' (at most 128)")
    return value


def check_modality(value) -> str:
    """A modality: letters and digits of any script (so 'МРТ' and '超音波' are fine), spaces and
    '-_.+/', 1..64 characters after NFC normalisation; control characters and other symbols are
    refused. Returns the NFC form."""
    if not isinstance(value, str):
        raise ValueError(f"invalid modality {printable(value)}: not a string")
    norm = unicodedata.normalize("NFC", value)
    if not 1 <= len(norm) <= MAX_MODALITY:
        raise ValueError(f"invalid modality {printable(value)}: 1 to {MAX_MODALITY} characters")
    if not any(c.isalnum() for c in norm) or any(not (c.isalnum() or c in _MODALITY_PUNCTUATION) for c in norm):
        raise ValueError(f"invalid modality {printable(value)}: use letters, digits, spaces and '-_.+/'")
    return norm


def printable(value, limit: int = 80) -> str:
    """A client-supplied value as it may appear in a log line: quoted, every non-printable or
    line-breaking character escaped, cut to `limit` characters. Never lets a newline through."""
    text = value if isinstance(value, str) else repr(value)
    out = "".join(_escape(c) for c in text[:limit])
    return f"'{out}'" + (f"...(+{len(text) - limit} chars)" if len(text) > limit else "")


def _escape(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


# ------------------------------------------------------------------------------ instruction
class RoundInstruction(BaseModel):
    """What a site is asked to do in one round (the "config" record of a train message). The
    defaults below, the one place they live, fill what an instruction leaves out; a coordinator
    sends every field (`instruction_settings`, from its run config)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    server_round: int = Field(ge=1)
    bank: str
    bank_version: int = Field(ge=0)
    base_fingerprint: str
    adapter: AdapterConfig
    images: int = Field(1, ge=1)
    local_epochs: int = Field(4, ge=1)
    clicks: int = Field(5, ge=1)
    mode: str = "mid+post"
    lr: float = Field(0.0, ge=0, description="0: the adapter kind's default (AdapterKind.lr_for)")
    size: int = Field(96, ge=16)
    seed: int = 0
    clipping_norm: float | None = None
    task: str | None = Field(None, description="the task (structure) to work on this round, normalised; None: the "
                             "site's primary task (a site of one task is never sent one)")

    def to_config(self) -> dict:
        return {
            SERVER_ROUND: self.server_round,
            BANK: self.bank,
            BANK_VERSION: self.bank_version,
            BASE_FINGERPRINT: self.base_fingerprint,
            ADAPTER_KIND: self.adapter.kind,
            ADAPTER_CONFIG: json.dumps(self.adapter.model_dump(mode="json"), sort_keys=True),
            IMAGES: self.images,
            LOCAL_EPOCHS: self.local_epochs,
            CLICKS: self.clicks,
            MODE: self.mode,
            LR: self.lr,
            SIZE: self.size,
            SEED: self.seed,
        } | ({TASK: self.task} if self.task is not None else {})

    @field_validator("task")
    @classmethod
    def _task(cls, value: str | None) -> str | None:
        from fedpoint.shared.tasks import normalise_task

        return None if value is None else normalise_task(value)

    @classmethod
    def from_config(cls, config: Mapping) -> "RoundInstruction":
        missing = [k for k in (SERVER_ROUND, BANK, BANK_VERSION, BASE_FINGERPRINT, ADAPTER_CONFIG) if k not in config]
        if missing:
            raise ValueError(f"the coordinator's instruction lacks {', '.join(missing)}")
        adapter = AdapterConfig(**json.loads(str(config[ADAPTER_CONFIG])))
        if config.get(ADAPTER_KIND, adapter.kind) != adapter.kind:
            raise ValueError(f"instruction names adapter kind {config[ADAPTER_KIND]!r} but sends a {adapter.kind!r} config")
        given = {field: config[key] for field, key in _OPTIONAL_FIELDS.items() if key in config}
        return cls(server_round=config[SERVER_ROUND], bank=config[BANK], bank_version=config[BANK_VERSION],
                   base_fingerprint=config[BASE_FINGERPRINT], adapter=adapter, **given)


# an instruction's fields a coordinator may leave out (the model's defaults apply), by config key
_OPTIONAL_FIELDS = {"images": IMAGES, "local_epochs": LOCAL_EPOCHS, "clicks": CLICKS, "mode": MODE, "lr": LR,
                    "size": SIZE, "seed": SEED, "clipping_norm": CLIPPING_NORM, "task": TASK}


def instruction_settings(fed: CoordinatorConfig) -> dict:
    """The run-config settings every instruction carries (the coordinator is their authority)."""
    return {"adapter": fed.adapter_config(), "images": fed.images_per_round, "local_epochs": fed.local_epochs,
            "clicks": fed.clicks, "mode": fed.mode, "lr": fed.lr, "size": fed.size, "seed": fed.seed}


def check_reply_config(config: Mapping) -> None:
    """A reply's "config" record may only say who answered: known keys, short strings or ints
    (and "tasks": a list of at most `tasks.MAX_TASKS` short strings)."""
    from fedpoint.shared.payload import EgressError, is_number
    from fedpoint.shared.tasks import MAX_TASKS

    for key, value in config.items():
        if key not in REPLY_CONFIG_KEYS:
            raise EgressError(f"reply field {key!r} is not allowed to leave a site")
        if key == TASKS:
            if not isinstance(value, list) or not 1 <= len(value) <= MAX_TASKS or not all(
                    isinstance(v, str) and len(v) <= MAX_REPLY_STRING for v in value):
                raise EgressError(f"reply field {key!r} must be a list of 1 to {MAX_TASKS} short strings")
        elif isinstance(value, str):
            if len(value) > MAX_REPLY_STRING:
                raise EgressError(f"reply field {key!r} is {len(value)} characters long (at most {MAX_REPLY_STRING})")
        elif not is_number(value):
            raise EgressError(f"reply field {key!r} must be a short string or a number, got {type(value).__name__}")
