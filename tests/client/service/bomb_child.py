"""Opens bombs in a fresh process and reports its peak RSS, for the hostile tests.

    python bomb_child.py <images folder> <dicom series id> <seg bomb file> <bomb id> ...

Prints one JSON object: the peak RSS (MiB) once warm (a real series and a real NIfTI opened, so every
reader is imported), and after each bomb the peak so far and what the bomb was answered.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from fedpoint.client.service.images import ImageError, ImageFolder
    from fedpoint.client.service.uploads import seg_label
    from fedpoint.client.session import InputError

    folder, series_id, seg_file, *bombs = sys.argv[1:]
    images = ImageFolder(Path(folder), "CT", 1, max_bytes=256 << 20)
    series = images.load(series_id)
    images.load("vol")
    out = {"idle_mib": peak_mib(), "bombs": {}}
    for bomb in bombs:
        try:
            images.load(bomb)
            answer = "opened"
        except ImageError as err:
            answer = str(err)
        out["bombs"][bomb] = {"peak_mib": peak_mib(), "answer": answer}
    try:
        seg_label(Path(seg_file).read_bytes(), series, {"object": 1}, max_bytes=256 << 20)
        answer = "opened"
    except (InputError, ImageError) as err:
        answer = str(err)
    out["bombs"]["seg"] = {"peak_mib": peak_mib(), "answer": answer}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
