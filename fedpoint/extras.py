"""Which optional extra brings which package, and the error a feature raises when it is missing.

The base install is what a site needs to annotate and adapt (`norm`, `norm+stem`, `full`).
Everything else is an extra of the `fedpoint` package (see pyproject.toml):

- `lora`: peft (LoRA adapters)
- `federation`: flwr (SuperLink/ServerApp, SuperNode/ClientApp)
- `coordinator`: `federation` and dp-accounting (the central-DP variant's epsilon)
- `simulation`: Flower's Ray engine, plots, nilearn and the training sources
- `dicom`: pydicom (DICOM series at a site)
- `dev`: test tools
- `all`: every extra

No heavy import here: this module is read by `fedpoint --help`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# import name -> the extra that installs it
EXTRA_OF: dict[str, str] = {
    "peft": "lora",
    "transformers": "lora",
    "flwr": "federation",
    "threadpoolctl": "federation",
    "dp_accounting": "coordinator",
    "ray": "simulation",
    "matplotlib": "simulation",
    "nilearn": "simulation",
    "skimage": "simulation",
    "tomli_w": "simulation",
    "pydicom": "dicom",
    "highdicom": "dicom",
    "dicomweb_client": "dicom",
    "requests": "dicom",  # dicomweb-client's transport
    "httpx": "dev",
    "playwright": "dev",
    "pytest": "dev",
}

# what each extra is for, in the words of its error message
EXTRA_PURPOSE: dict[str, str] = {
    "lora": "LoRA adapters",
    "federation": "Flower federations (coordinator and SuperNode)",
    "coordinator": "the central-DP privacy accountant",
    "simulation": "simulated federations, plots and the training data",
    "dicom": "DICOM images, a PACS over DICOMweb and DICOM-SEG",
    "dev": "tests and benchmarks",
}


class MissingExtraError(ImportError):
    """A feature needs a package that only one of fedpoint's extras installs."""

    def __init__(self, package: str, extra: str, feature: str | None = None):
        self.package, self.extra, self.feature = package, extra, feature
        what = feature or EXTRA_PURPOSE.get(extra, extra)
        super().__init__(f"{what}: {package} is not installed; it comes with the '{extra}' extra: "
                         f"pip install 'fedpoint[{extra}]'", name=package)


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        root = module.split(".")[0]
        if (err.name or "").split(".")[0] == root and root in EXTRA_OF:
            raise MissingExtraError(root, EXTRA_OF[root], feature) from err
        raise


def check_installed(*modules: str, feature: str | None = None, extra: str | None = None) -> None:
    """Without importing anything: raise MissingExtraError for the first module not installed,
    naming `extra` (the one the feature needs), else the extra that installs that module."""
    for module in modules:
        root = module.split(".")[0]
        if importlib.util.find_spec(root) is None:
            raise MissingExtraError(root, extra or EXTRA_OF.get(root, "all"), feature)


def explain(err: BaseException) -> str | None:
    """The user-facing message for an ImportError of a package that an extra installs, else None."""
    if isinstance(err, MissingExtraError):
        return str(err)
    if isinstance(err, ModuleNotFoundError):
        root = (err.name or "").split(".")[0]
        if root in EXTRA_OF:
            return str(MissingExtraError(root, EXTRA_OF[root]))
    return None
