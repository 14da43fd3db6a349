"""Picking up a bank the federation delivered, while the service runs.

The ClientApp (another process) writes a received bank into the site store and points
`banks/latest.json` at it. The watcher polls that pointer; a new bank is loaded into a copy of the
live adapter and offered to the engine, whose regression guard swaps it in only if it scores at
least as well as the current adapter on the held-out cache. Every review is logged
(`bank-review`), so a restarted service does not review the same bank again.

A site of several structures (`labels`) receives each structure's task bank in that task's store
(`tasks/<task>/banks/`, one task a federation round): the watcher watches every task it is given
and offers each bank to its own task's adapter only.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from pathlib import Path

from fedpoint.client.engine import SiteEngine
from fedpoint.shared.adapters import AdapterMismatchError, read_manifest

log = logging.getLogger("fedpoint.service")


class BankWatcher:
    """Watches the bank pointer of each of `tasks` (None: the engine's primary task)."""

    def __init__(self, engine: SiteEngine, poll_s: float = 10.0, tasks=(None,)):
        self.engine, self.poll_s = engine, poll_s
        self.tasks = tuple(dict.fromkeys(tasks)) or (None,)
        self.store = engine.store  # the root: paths in events and messages are relative to it
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = {task: self._reviewed_latest(task) for task in self.tasks}

    def _relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(Path(self.store.root).resolve()))

    def _scrub(self, text: str) -> str:
        """A reason shown in the status and the log: paths inside the store relative to it, never absolute."""
        for root in {str(Path(self.store.root).resolve()), str(Path(self.store.root).absolute()), str(self.store.root)}:
            text = text.replace(root.rstrip("/") + "/", "")
        return text

    def _reviewed_latest(self, task) -> Path | None:
        store = self.engine.slot(task).store
        latest = store.latest_bank()
        if latest is None:
            return None
        reviewed = {e.get("path") for e in store.read_log() if e.get("event") == "bank-review"}
        return latest if self._relative(latest) in reviewed else None

    # ---------------------------------------------------------------------------------- polling
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fedpoint-banks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:  # a broken bank folder must not stop the watcher; the log says why
                log.exception("reviewing a received bank failed")

    def check(self) -> dict | None:
        """Review each task's latest bank if it is new; returns the last review made, or None when
        nothing is new."""
        review = None
        with self._lock:
            for task in self.tasks:
                latest = self.engine.slot(task).store.latest_bank()
                if latest is None or latest == self._seen[task]:
                    continue
                self._seen[task] = latest
                review = self._review(latest, task)
                self.events.append(review)
        return review

    # ---------------------------------------------------------------------------------- review
    def _review(self, path: Path, task) -> dict:
        slot = self.engine.slot(task)
        event = {"time": time.time(), "path": self._relative(path), "task": slot.task, "bank": None, "version": None,
                 "accepted": False}
        try:
            manifest = read_manifest(path)
            event.update(bank=manifest.get("bank"), version=manifest.get("version"))
            with slot.model.lock:
                candidate = copy.deepcopy(slot.model.adapter)
            candidate.load(path)
            state = candidate.state()
        except AdapterMismatchError as err:
            event["reason"] = self._scrub(f"{type(err).__name__}: {err}")
        except Exception as err:  # a cut or corrupt bank file raises whatever its reader raises
            event["reason"] = self._scrub(f"{self._relative(path)}: cannot be read ({type(err).__name__}: {err})")
        else:
            source = f"bank:{event['bank']}/v{event['version']}"
            review = self.engine.offer(state, source, task=task)
            event.update(accepted=review.accepted, candidate=review.candidate, current=review.current,
                         val_cases=review.val_cases)
            if event["accepted"]:
                with slot.model.lock:
                    event["adapter_version"] = slot.store.save_adapter(slot.model.adapter, {"source": source})
        slot.store.log("bank-review", **{k: v for k, v in event.items() if isinstance(v, (int, float, str, bool))})
        log.info("bank %s v%s (%s): %s", event["bank"], event["version"], slot.task,
                 "swapped in" if event["accepted"] else "refused")
        return event

    @property
    def last(self) -> dict | None:
        return self.events[-1] if self.events else None
