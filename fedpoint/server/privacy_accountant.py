"""The privacy accountant of the central-DP variant: dp-accounting's RDP accountant, fed one
Gaussian event per round in which noise was added, gives epsilon at the configured delta.

What is protected: one site's contribution to one round, i.e. its clipped adapter delta (norm at
most `dp-clipping-norm`, clipped at the site by Flower's `fixedclipping_mod`), against the bank
versions every later reader sees. The unit is the site, not a patient: epsilon bounds what the
published bank versions reveal about whether (and with which delta) a site took part in a round.

The per-round event: the coordinator adds Gaussian noise of standard deviation
`noise_stdv = z * C / m` (z the noise multiplier, C the clipping norm, m the sampled sites) to each
bank's aggregated update. A bank's update is a weighted mean of its sites' deltas, so one site's
delta moves it by at most `C * w / W` (its weight share), and the noise it meets is
`noise_stdv / (C * w / W)` times that: the effective noise multiplier. A site's delta feeds the
general bank and (under "banks") its modality bank, two releases whose Gaussian RDP adds up; the
round's event uses the smallest combined multiplier over the round's sites (`round_noise_multiplier`).
Sites are sampled with rate `sampled / available` (counted as Poisson sampling, the usual
approximation of Flower's fixed-size sample). With equal weights and one bank, the event is exactly
(z, sampled/available).

What is not protected: the sites' identities and modalities, how many cases each trained on (the
weights, treated as public), their replies' metrics (Dice, click counts, timings: sent in the clear
to the coordinator and recorded in federation.json), whether a site answered, and everything a site
sends before the noise is added: the coordinator itself sees each site's clipped delta (central DP
trusts the coordinator). The accountant assumes the weighted-mean rule; other rules are refused.

Light: dp-accounting is imported only when an epsilon is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

ORDERS = tuple(range(2, 65)) + (128, 256, 512)  # integer RDP orders: fast, and no fractional-order warnings


class BudgetExceeded(RuntimeError):
    """The next round would take epsilon past the configured budget; the run stops before it."""


class PrivacyAccountant:
    """Epsilon at `delta` of the rounds composed so far; `budget` > 0 refuses a round that would pass it."""

    def __init__(self, delta: float, budget: float = 0.0, events: Iterable[tuple[float, float]] = ()):
        if not 0 < delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {delta}")
        if budget < 0:
            raise ValueError(f"dp-epsilon-budget must be >= 0 (0: none), got {budget}")
        self.delta, self.budget = float(delta), float(budget)
        self.events: list[tuple[float, float]] = [(float(q), float(z)) for q, z in events]

    @classmethod
    def from_rounds(cls, delta: float, budget: float, rounds: Iterable[Mapping]) -> "PrivacyAccountant":
        """Resume from earlier rounds' `dp` records (the bank store's journal): their (rate, multiplier)."""
        events = [(r["dp"]["sampling_rate"], r["dp"]["effective_noise_multiplier"]) for r in rounds
                  if (r.get("dp") or {}).get("effective_noise_multiplier")]
        return cls(delta, budget, events)

    def epsilon(self, extra: Iterable[tuple[float, float]] = ()) -> float:
        """Epsilon of the events so far (and `extra` ones), at this accountant's delta."""
        return epsilon_of([*self.events, *extra], self.delta)

    def check_next(self, sampling_rate: float, noise_multiplier: float, fed_round: int) -> None:
        """BudgetExceeded if one more round like this one would pass the budget."""
        if self.budget <= 0:
            return
        projected = self.epsilon([(sampling_rate, noise_multiplier)])
        if projected > self.budget:
            raise BudgetExceeded(f"round {fed_round} would bring epsilon to {projected:.4g} at delta {self.delta:g}, "
                                 f"over the budget {self.budget:g} (now {self.epsilon():.4g} after "
                                 f"{len(self.events)} noised round(s)); the federation stops before it")

    def record(self, sampling_rate: float, noise_multiplier: float) -> float:
        """Add one round's event; returns epsilon after it."""
        self.events.append((float(sampling_rate), float(noise_multiplier)))
        return self.epsilon()


def epsilon_of(events: Iterable[tuple[float, float]], delta: float) -> float:
    """Epsilon at `delta` of Poisson-sampled Gaussian events (rate, noise multiplier), by RDP;
    identical events are composed together (one RDP computation each)."""
    from fedpoint.extras import require

    dp_accounting = require("dp_accounting", "the central-DP privacy accountant")
    from dp_accounting.rdp import rdp_privacy_accountant

    counts: dict[tuple[float, float], int] = {}
    for q, z in events:
        counts[(q, z)] = counts.get((q, z), 0) + 1
    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    for (q, z), count in counts.items():
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian), count)
    return float(accountant.get_epsilon(delta))


def round_noise_multiplier(noise_stdv: float, clipping_norm: float, shares: Mapping[str, Iterable[float]]) -> float:
    """The round's effective noise multiplier: for each site, the banks it fed with its weight share
    there (`shares`: site -> shares); a release with share s has multiplier noise_stdv / (C * s), and
    a site's releases compose as 1/z^2 adds up. The smallest over sites (inf when no site fed a bank)."""
    worst = math.inf
    for site_shares in shares.values():
        inverse_square = sum((clipping_norm * s / noise_stdv) ** 2 for s in site_shares if s > 0)
        if inverse_square > 0:
            worst = min(worst, inverse_square ** -0.5)
    return worst
