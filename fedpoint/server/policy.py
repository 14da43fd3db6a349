"""The coordinator's policy: every setting of its rounds, as one frozen record.

Sampling, timeouts, bank routing, the screens' factors, clipping and the aggregation rule, and the
settings every instruction carries.

`CoordinatorPolicy.from_config` is the one translation from the run config (`CoordinatorConfig`)
to the coordinator; `BankStrategy` takes the policy whole instead of a keyword per setting.
Light: no Flower, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fedpoint.server.checks import ScreenSettings
from fedpoint.shared import protocol as P
from fedpoint.shared.run_config import CoordinatorConfig

QUERY_TIMEOUT_CAP = 300.0  # an identity query waits at most this long, however long a round may take


def _default_settings() -> Mapping:
    return MappingProxyType(P.instruction_settings(CoordinatorConfig()))


@dataclass(frozen=True)
class CoordinatorPolicy:
    """Every choice of the coordinator's rounds (defaults: the run config's)."""

    settings: Mapping = field(default_factory=_default_settings)  # what every instruction carries (protocol.instruction_settings)
    routing: str = "banks"              # which bank a site receives: "banks" or "general" (fedpoint.server.routing)
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    query_timeout: float = 120.0        # an identity query's timeout
    probe_timeout: float = 30.0         # a silent node's probe (at most query_timeout)
    silent_rounds: int = 2              # timeouts in a row before a node gets only a probe; 0: never
    evaluate_banks: bool = False        # the federated evaluation round after each aggregation
    clip_norm: float = 0.0              # > 0: each delta clipped to this L2 norm before the screens
    aggregation_rule: str = "weighted-mean"  # a name of fedpoint.server.aggregate.AGGREGATION_RULES
    trim_fraction: float = 0.2          # trimmed-mean: the fraction cut at each end
    weight_cap_factor: float = 4.0      # a weight is clipped to this x the median of the others
    max_share: float = 0.5              # from 3 replies on, one reply's largest share of a bank's weight
    norm_cap_rms: float = 0.0           # absolute bound on a delta's RMS per value; 0: the kind's
    history_factor: float = 10.0        # a delta may be at most this x the largest one a bank took
    screen: ScreenSettings = field(default_factory=ScreenSettings)  # the peer screens' factors

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "probe_timeout", min(self.probe_timeout, self.query_timeout))

    @property
    def adapter(self):
        """The adapter config every site trains (an `AdapterConfig`)."""
        return self.settings["adapter"]

    @classmethod
    def from_config(cls, fed: CoordinatorConfig) -> "CoordinatorPolicy":
        return cls(
            settings=P.instruction_settings(fed), routing=fed.bank_routing, fraction_train=fed.fraction_train,
            min_train_nodes=fed.min_train_nodes, query_timeout=min(fed.round_timeout, QUERY_TIMEOUT_CAP),
            silent_rounds=fed.silent_rounds, evaluate_banks=fed.evaluate_banks, clip_norm=fed.clip_norm,
            aggregation_rule=fed.aggregation_rule, trim_fraction=fed.trim_fraction,
            weight_cap_factor=fed.weight_cap_factor, max_share=fed.max_share, norm_cap_rms=fed.norm_cap_rms,
            history_factor=fed.history_factor, screen=ScreenSettings(**fed.screen_settings()),
        )
