"""Where a site's images come from, declared: the images folder (`images.ImageFolder`), a PACS over
DICOMweb (`dicomweb.PacsImages`) and both side by side (`dicomweb.SiteImages`) are each a `Datastore`.

The desk, the next-image choice and the routes see only this protocol. A datastore that takes
accepted labels back (the PACS, as DICOM-SEGs) is also a `LabelSink`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from fedpoint.client.service.images import LoadedImage

LabelOf = Callable[[LoadedImage], "np.ndarray | None"]  # an image's accepted label map (None: none yet)


@runtime_checkable
class Datastore(Protocol):
    """A source of images by id: ids are checked names (`check_id`), never paths built from a request."""

    def ids(self) -> list[str]:
        """The images served, in a stable order."""

    def path(self, image_id: str) -> Path:
        """A name for the image (a file's path; a PACS series has none on disk). KeyError: unknown id."""

    def load(self, image_id: str) -> LoadedImage:
        """The decoded image (cached). KeyError: unknown id; ImageError: it cannot be used (remembered)."""

    def unreadable(self) -> dict[str, str]:
        """Images known not to load, with why (skipped by every next-image choice)."""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(file or source, why) of what is not served."""

    def skipped_list(self) -> list[dict]:
        """`skipped` and the unreadable images as the status shows them: {"file", "reason"}."""


@runtime_checkable
class LabelSink(Protocol):
    """A datastore that takes accepted labels back (in the background; a failure is logged, never raised)."""

    def write_back(self, image_ids: list[str], label_of: LabelOf) -> None:
        """Send the current label of each image it serves; images from elsewhere are left alone."""
