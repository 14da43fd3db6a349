"""The site service's configuration (`site.toml`), validated by pydantic.

Every error names its field ("port: Input should be less than or equal to 65535"). Relative paths
in a TOML file are read relative to that file's folder, so a site folder can be moved as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpoint.client.site_store import check_id
from fedpoint.shared.config import AdaptationConfig, AdapterConfig
from fedpoint.shared.device import DEFAULT_DEVICE
from fedpoint.shared.tasks import normalise_task
from fedpoint.shared.validation_errors import validation_problems

MIN_TOKEN_LENGTH = 16
MAX_STRUCTURES = 32


class ServiceConfigError(ValueError):
    """A site.toml that cannot run; the message lists every offending field."""


class SiteServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = Field(description="the site's name (letters, digits, '.', '_', '-')")
    modality: str = Field("unknown", description="CT, MR, microscopy, ...: picks the intensity normalisation")
    store: Path = Field(description="the site store folder (annotation cache, adapter versions, received banks)")
    images: Path | None = Field(None, description="folder of images to annotate: NIfTI, NRRD, PNG, NPY or DICOM "
                                                  "series sub-folders, 2D or 3D (optional with dicomweb)")
    dicomweb: str | None = Field(None, description="a PACS's DICOMweb root (QIDO-RS, WADO-RS, STOW-RS), e.g. "
                                                   "http://127.0.0.1:8042/dicom-web: its series are served too")
    dicomweb_token_env: str | None = Field(None, description="environment variable holding the PACS credential: "
                                                             "user:password (HTTP Basic) or a bearer token")
    base: str | None = Field(None, description="base checkpoint: a packaged name or a path; default the packaged 2D base")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description='adapter kind ("norm", ...) or a table')
    mode: str = Field("mid+post+episodes", description="adaptation mode (see AdaptationConfig)")
    adaptation: dict[str, Any] = Field(default_factory=dict, description="further AdaptationConfig settings (not mode)")
    campaign_size: int | None = Field(None, ge=1, description="expected cases: episodes start at a fraction of it")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    token: str | None = Field(None, description="the bearer token itself (prefer token_env or token_file)")
    token_env: str | None = Field(None, description="name of an environment variable holding the token")
    token_file: Path | None = Field(None, description="file holding the token")
    token_in_path: bool = Field(False, description="also accept /t/<token>/... for clients that cannot send headers")
    users_file: Path | None = Field(None, description="named users' hashed tokens (`fedpoint site user add`); default <store>/users.json")
    allow_shared_token: bool | None = Field(None, description="the site token may annotate under a typed name (never a "
                                                                "named user's); default: only while no users file exists")
    tls_cert: Path | None = Field(None, description="PEM certificate: serve HTTPS directly (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    device: str = Field(DEFAULT_DEVICE, description="torch device: cpu, cuda, cuda:N or auto (CUDA when torch sees one)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    label: str = Field("object", description="name of the structure annotated, shown to MONAI Label clients")
    labels: list[str] | None = Field(None, description='several structures per image, e.g. ["liver", "lesion"] (replaces label)')
    max_upload_mb: float = Field(64.0, gt=0, le=4096)
    max_decoded_mb: float = Field(1024.0, gt=0, le=65536,
                                  description="most bytes an image (as float32) or an uploaded label may decode to; "
                                              "every header is checked against it before decoding")
    max_points: int = Field(64, ge=1, le=10_000, description="most clicks one request or one session may carry")
    max_sessions: int = Field(64, ge=1, description="open annotation sessions kept in memory (oldest idle dropped)")
    session_ttl_s: float = Field(3600.0, gt=0, description="an idle session is dropped after this")
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed to call the API; none by default")
    bank_poll_s: float = Field(10.0, gt=0, description="how often to look for a bank the federation delivered")
    save_adapter_every: int = Field(1, ge=0, description="write an adapter version every N accepts (0: never)")
    max_label_slices: int = Field(8, ge=1, description="3D label on a 2D model: most slices one saved label adds")
    al_candidates: int = Field(32, ge=1, description="images the 'uncertain' next-image choice scores per request")
    ct_window: tuple[float, float] | str | None = Field(None, description="CT normalisation window (HU) or a name")
    image_cache: int = Field(8, ge=1, description="images kept decoded in memory")

    # ------------------------------------------------------------------------------- checks
    @field_validator("site")
    @classmethod
    def _safe_site(cls, site: str) -> str:
        return check_id(site, "site name")

    @field_validator("labels")
    @classmethod
    def _structure_names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        if not names or len(names) > MAX_STRUCTURES:
            raise ValueError(f"give 1 to {MAX_STRUCTURES} structure names")
        if len(set(names)) != len(names):
            raise ValueError(f"structure names repeat: {names}")
        names = [check_id(name, "structure name") for name in names]
        tasks = [normalise_task(name) for name in names]  # each structure adapts, and keeps its cases, in its own task
        for i, task in enumerate(tasks):
            if task in tasks[:i]:
                raise ValueError(f"structure names {names[tasks.index(task)]!r} and {names[i]!r} are one task "
                                 f"({task!r}): give structures names that differ in more than case or separators")
        return names

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        from fedpoint.shared.device import resolve_device

        return resolve_device(device)  # `auto` becomes the device in use; a missing GPU is an error now

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter_kind(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        return AdaptationConfig(mode=mode).mode

    @field_validator("adaptation")
    @classmethod
    def _adaptation_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        if "mode" in values:
            raise ValueError("set the mode at the top level (mode = ...), not in [adaptation]")
        AdaptationConfig(**values)  # every field named and checked now, not at the first click
        return values

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, origins: list[str]) -> list[str]:
        if "*" in origins:
            raise ValueError("'*' would let any web page use the token a browser holds; list the origins")
        return origins

    @field_validator("dicomweb")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("give the DICOMweb root as an http:// or https:// address")
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _some_images(self) -> "SiteServiceConfig":
        if self.images is None and self.dicomweb is None:
            raise ValueError("give images (a folder), dicomweb (a PACS's DICOMweb address), or both")
        if self.dicomweb_token_env and not self.dicomweb:
            raise ValueError("dicomweb_token_env is set but dicomweb is not")
        return self

    @model_validator(mode="after")
    def _one_token_source(self) -> "SiteServiceConfig":
        given = [name for name in ("token", "token_env", "token_file") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of token, token_env, token_file (got {', '.join(given) or 'none'})")
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> "SiteServiceConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.tls_cert is not None:
            check_tls(self.tls_cert, self.tls_key)
        return self

    # ------------------------------------------------------------------------------- derived
    @property
    def structures(self) -> list[str]:
        """The structures annotated on each image, in label-value order (value 1, 2, ...)."""
        return list(self.labels) if self.labels else [self.label]

    @property
    def label_values(self) -> dict[str, int]:
        """Each structure's value in a label map: the one rule for label maps in and out."""
        return {name: i + 1 for i, name in enumerate(self.structures)}

    def task_of(self, structure: str) -> str | None:
        """The task (adapter, store, episodes) a structure's annotations go to: its own with `labels`,
        else None, the site's one (the default task: the root of the store)."""
        return structure if self.labels else None

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 2**20)

    @property
    def users_path(self) -> Path:
        return Path(self.users_file) if self.users_file else Path(self.store) / "users.json"

    @property
    def audit_path(self) -> Path:
        return self.users_path.with_name("audit.jsonl")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def adaptation_config(self) -> AdaptationConfig:
        return AdaptationConfig(**{**self.adaptation, "mode": self.mode})

    def resolve_token(self) -> str:
        """The token's value, read now (a rotated token file takes effect at the next start)."""
        if self.token:
            value, source = self.token, "token"
        elif self.token_env:
            value, source = os.environ.get(self.token_env, ""), f"token_env ${self.token_env}"
        else:
            path = Path(self.token_file)
            if not path.is_file():
                raise ServiceConfigError(f"token_file: {path} does not exist")
            value, source = path.read_text().strip(), f"token_file {path}"
        if len(value.strip()) < MIN_TOKEN_LENGTH:
            raise ServiceConfigError(f"{source}: the token must have at least {MIN_TOKEN_LENGTH} characters")
        return value.strip()


def check_tls(cert: Path, key: Path) -> None:
    """The pair loads and matches now, not at the first connection (uvicorn would fail late and vaguely)."""
    import ssl

    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{name}: {path} does not exist")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as err:
        reason = "the key does not match the certificate" if "mismatch" in str(err).lower() else str(err)
        raise ValueError(f"tls_key: {Path(key).name} cannot serve {Path(cert).name}: {reason}") from None


def _resolve_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(data)
    for key in ("store", "images", "token_file", "users_file", "tls_cert", "tls_key"):
        if isinstance(out.get(key), str) and not Path(out[key]).expanduser().is_absolute():
            out[key] = str(folder / out[key])
        elif isinstance(out.get(key), str):
            out[key] = str(Path(out[key]).expanduser())
    base = out.get("base")
    if isinstance(base, str) and ("/" in base or base.endswith((".safetensors", ".json"))) and not Path(base).is_absolute():
        out["base"] = str(folder / base)
    return out


def make_service_config(data: dict[str, Any], source: str = "config") -> SiteServiceConfig:
    try:
        return SiteServiceConfig(**data)
    except ValidationError as err:
        lines = validation_problems(err, root="(config)")
        raise ServiceConfigError("\n".join(f"{source}: {line}" for line in lines)) from None


def load_service_config(path: str | Path, **overrides: Any) -> SiteServiceConfig:
    """Read a site.toml; keyword overrides (e.g. host, port from the command line) win."""
    path = Path(path)
    if not path.is_file():
        raise ServiceConfigError(f"{path}: no such config file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ServiceConfigError(f"{path}: not valid TOML ({err})") from None
    data = _resolve_paths(data, path.resolve().parent)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return make_service_config(data, str(path))
