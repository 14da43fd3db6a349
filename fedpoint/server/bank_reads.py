"""One round's reads of the bank store: each version read and verified once.

A committed version never changes (`fedpoint.server.banks`: versions are immutable, a round's
writes commit together), so within a round a version read once is the version. The coordinator
opens a `RoundReads` when a round starts and a fresh one after its commit (the new versions are
then read, and verified, once more: what was written is what is served). Reads answer as the
store's own do: `latest` skips a version that fails verification (logged by the store), `get`
raises its errors again for every ask.
"""

from __future__ import annotations

from fedpoint.server.banks import BankIntegrityError, BankNotFoundError, BankStore, BankVersion


class RoundReads:
    """A read-only view of a `BankStore` for one round, memoizing every verified read."""

    def __init__(self, store: BankStore):
        self.store = store
        self._read: dict[tuple[str, int], BankVersion | Exception] = {}
        self._latest: dict[str, BankVersion | None] = {}
        self._versions: dict[str, list[int]] = {}
        self._banks: list[str] | None = None

    def get(self, bank: str, version: int) -> BankVersion:
        """One version, verified once this round (BankIntegrityError / BankNotFoundError as the store's)."""
        key = (bank, int(version))
        if key not in self._read:
            try:
                self._read[key] = self.store.get(bank, version)
            except (BankIntegrityError, BankNotFoundError) as err:
                self._read[key] = err
        found = self._read[key]
        if isinstance(found, Exception):
            raise found
        return found

    def versions(self, bank: str) -> list[int]:
        if bank not in self._versions:
            self._versions[bank] = self.store.versions(bank)
        return self._versions[bank]

    def latest(self, bank: str) -> BankVersion | None:
        """The newest version that verifies (as `BankStore.latest`), None when none does."""
        if bank not in self._latest:
            self._latest[bank] = None
            for version in reversed(self.versions(bank)):
                try:
                    self._latest[bank] = self.get(bank, version)
                    break
                except BankIntegrityError as err:
                    self.store.report_skipped(bank, version, str(err))
        return self._latest[bank]

    def banks(self) -> list[str]:
        """Banks with at least one valid version (as `BankStore.banks`)."""
        if self._banks is None:
            self._banks = [bank for bank in self.store.bank_folders() if self.latest(bank) is not None]
        return self._banks

    def check(self, bank: str, version: int) -> str | None:
        """Why a version fails verification, or None (as `BankStore.check`)."""
        try:
            self.get(bank, version)
        except (BankIntegrityError, BankNotFoundError) as err:
            return str(err)
        return None

    def recent_max_norms(self, bank: str, count: int) -> list[float]:
        """The screens' record of the largest reply norm each of the bank's last `count` valid
        versions took (`screen.max_norm` in their manifests; 0 where absent)."""
        return [float((self.get(bank, v).manifest.get("screen") or {}).get("max_norm") or 0)
                for v in self.versions(bank)[-count:] if self.check(bank, v) is None]
