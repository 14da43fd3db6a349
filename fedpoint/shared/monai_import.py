"""MONAI, imported without the Hugging Face `transformers` package it would pull in on the way

`import monai` loads every MONAI submodule, and when `transformers` is installed (peft depends on
it: the `lora` extra) MONAI's Transchex network imports BERT. That is about 3 of the 8 seconds
`import monai` takes on a 2-core machine, paid again by every process that builds a model: each
simulated site's Ray worker, each CLI call. No MONAI part fedpoint uses needs `transformers`, so
the first import is made with it hidden; afterwards it imports as usual (peft is unaffected).
Call `load_monai()` before the first `from monai... import ...` of a code path.
"""

from __future__ import annotations

import sys
import threading

_LOCK = threading.Lock()


def load_monai():
    """The `monai` module, imported once with `transformers` hidden if neither is loaded yet."""
    with _LOCK:
        if "monai" not in sys.modules and "transformers" not in sys.modules:
            sys.modules["transformers"] = None  # imports of it fail at once; MONAI records it as absent
            try:
                import monai
            finally:
                if "transformers" in sys.modules and sys.modules["transformers"] is None:
                    del sys.modules["transformers"]
    import monai

    return monai
