"""The site's Flower ClientApp: `app` for `flwr run` and SuperNodes, `build_client_app` for tests
and in-process simulations (whose run config is empty, so the defaults are given here).

Handlers:
- train: one federation round of the site (`fedpoint.client.federated.train_round`);
- query: who the site is (site id and modality), so the coordinator routes it to its bank.

Mods, outermost first:
- `egress_mod` (every message): the reply may hold only the adapter arrays the coordinator sent
  (same names, shapes, dtypes), allowed numeric metrics and the site's id fields; else it raises
  and Flower sends an error instead of the reply.
- `dp_clipping_mod` (train): when the coordinator runs Flower's client-side fixed-clipping DP, it
  lets Flower's `fixedclipping_mod` clip the delta. That mod expects full parameters, so the delta
  is turned into bank + delta for it and back into a delta afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError, check_metrics, state_schema


def build_client_app(defaults: Mapping | None = None) -> ClientApp:
    """A ClientApp whose run config falls back to `defaults` (then FederationConfig's own)."""
    app = ClientApp(mods=[egress_mod])

    @app.train(mods=[dp_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        import torch

        from fedpoint.client.federated import identify, train_round

        torch.set_num_threads(1)  # simulated sites share the machine's cores
        fed = P.FederationConfig.from_run_config(context.run_config, defaults)
        site = identify(context.node_config, fed)
        instruction = P.RoundInstruction.from_config(msg.content[P.CONFIG])
        bank = {name: array.numpy() for name, array in msg.content[P.ARRAYS].items()}
        reply = train_round(bank, instruction, site, fed)
        content = RecordDict({
            P.ARRAYS: arrays_record(reply.arrays),
            P.METRICS: MetricRecord(reply.metrics),
            P.CONFIG: ConfigRecord(reply.config),
        })
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from fedpoint.client.federated import identify

        fed = P.FederationConfig.from_run_config(context.run_config, defaults)
        site = identify(context.node_config, fed)
        return Message(RecordDict({P.CONFIG: ConfigRecord({P.SITE_ID: site.site_id, P.MODALITY: site.modality})}),
                       reply_to=msg)

    return app


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


# ------------------------------------------------------------------------------ egress
def egress_mod(msg: Message, context: Context, call_next) -> Message:
    """Check whatever is about to leave the site; raise (so nothing is sent) if it is more."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    received = msg.content.array_records.get(P.ARRAYS)
    schema = state_schema({k: v.numpy() for k, v in received.items()}) if received is not None else {}
    check_reply_content(reply.content, schema)
    return reply


def check_reply_content(content: RecordDict, schema: Mapping) -> None:
    """Only "arrays" matching `schema`, "metrics" from the allowed list and "config" id fields."""
    from fedpoint.client.federated import check_reply

    for key in content.keys():
        expected = REPLY_RECORDS.get(key)
        if expected is None or not isinstance(content[key], expected):
            raise EgressError(f"reply record {key!r} is not allowed to leave a site")
    metrics = dict(content.get(P.METRICS) or {})
    config = dict(content.get(P.CONFIG) or {})
    if P.ARRAYS not in content:
        check_metrics(metrics)
        P.check_reply_config(config)
        return
    if not schema:
        raise EgressError("reply holds arrays, but the coordinator sent none: refusing to send them")
    check_reply({k: v.numpy() for k, v in content[P.ARRAYS].items()}, schema, metrics, config)


REPLY_RECORDS = {P.ARRAYS: ArrayRecord, P.METRICS: MetricRecord, P.CONFIG: ConfigRecord}


# ------------------------------------------------------------------------------ central DP
def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Clip the delta with Flower's `fixedclipping_mod` when the coordinator asked for it."""
    config = msg.content.config_records.get(P.CONFIG)
    if config is None or P.CLIPPING_NORM not in config:
        return call_next(msg, context)
    bank = msg.content[P.ARRAYS]

    def as_parameters(inner_msg: Message, inner_context: Context) -> Message:
        out = call_next(inner_msg, inner_context)
        if not out.has_error():
            out.content[P.ARRAYS] = _shift(out.content[P.ARRAYS], bank, +1)
        return out

    out = fixedclipping_mod(msg, context, as_parameters)
    if not out.has_error():
        out.content[P.ARRAYS] = _shift(out.content[P.ARRAYS], bank, -1)
    return out


def _shift(arrays: ArrayRecord, bank: ArrayRecord, sign: int) -> ArrayRecord:
    """arrays + sign * bank, name by name, keeping names, order and dtypes."""
    out = {}
    for name, array in arrays.items():
        value = array.numpy()
        out[name] = (value + sign * bank[name].numpy()).astype(value.dtype)
    return arrays_record(out)


app = build_client_app()
