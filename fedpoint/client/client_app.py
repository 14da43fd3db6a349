"""The site's Flower ClientApp: `app` for `flwr run` and SuperNodes, `build_client_app` for tests
and in-process simulations (whose run config is empty, so the defaults are given here).

Handlers:
- train: one federation round of the site (`fedpoint.client.site_round.train_round`);
- query: who the site is (site id, modality, its task or tasks), so the coordinator routes it to its bank;
- evaluate: the federated evaluation round: the new bank version scored on the site's held-out
  cached cases (`fedpoint.client.site_round.evaluate_bank`); only the scores go back.

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

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from fedpoint.shared import protocol as P
from fedpoint.shared.payload import EgressError, check_egress, check_metrics, decode_arrays, encode_arrays, state_schema
from fedpoint.shared.run_config import SiteRoundConfig, parse_run_config


def build_client_app(defaults: Mapping | None = None) -> ClientApp:
    """A ClientApp whose run config falls back to `defaults` (then the run config's own); it
    reads the site's part of it (`SiteRoundConfig`)."""
    app = ClientApp(mods=[error_code_mod, instruction_mod, egress_mod])

    @app.train(mods=[dp_clipping_mod])
    def train(msg: Message, context: Context) -> Message:
        import torch

        from fedpoint.client.site_round import identify, train_round

        device = node_device(context.node_config)
        if P.PARTITION_ID in context.node_config:
            torch.set_num_threads(1)  # simulated sites share the machine's cores
        fed = parse_run_config(context.run_config, defaults, SiteRoundConfig)
        instruction = P.RoundInstruction.from_config(msg.content[P.CONFIG])
        site = round_site(identify(context.node_config, fed), instruction)
        bank = decode_arrays(msg.content[P.ARRAYS])
        reply = train_round(bank, instruction, site, fed, device=device)
        content = RecordDict({
            P.ARRAYS: encode_arrays(reply.arrays),
            P.METRICS: MetricRecord(reply.metrics),
            P.CONFIG: ConfigRecord(reply.config),
        })
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """The federated evaluation round: score the bank version sent on the site's held-out
        cached cases; only the scores (two numbers) and the bank's name and version go back."""
        from fedpoint.client.site_round import evaluate_bank, identify

        fed = parse_run_config(context.run_config, defaults, SiteRoundConfig)
        instruction = P.RoundInstruction.from_config(msg.content[P.CONFIG])
        site = round_site(identify(context.node_config, fed), instruction)
        bank = decode_arrays(msg.content[P.ARRAYS])
        metrics = evaluate_bank(bank, instruction, site, fed, node_device(context.node_config))
        config = {P.SITE_ID: site.site_id, P.BANK: instruction.bank, P.BANK_VERSION: instruction.bank_version}
        return Message(RecordDict({P.METRICS: MetricRecord(metrics), P.CONFIG: ConfigRecord(config)}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from fedpoint.client.site_round import identify

        fed = parse_run_config(context.run_config, defaults, SiteRoundConfig)
        site = identify(context.node_config, fed)
        return Message(RecordDict({P.CONFIG: ConfigRecord(site.answer())}), reply_to=msg)

    return app


class DeviceError(ValueError):
    """The node config asks for a device this machine does not have."""


def node_device(node_config: Mapping) -> str:
    """The torch device this site trains and scores on: the node config's `device` (default `cpu`),
    resolved (`auto` -> `cuda` when torch sees a GPU); DeviceError for an unknown or absent device,
    raised before the round loads or trains anything."""
    from fedpoint.shared.device import DEFAULT_DEVICE, resolve_device

    try:  # SuperNode --node-config "device='cuda:0'"
        return resolve_device(str(node_config.get(P.NODE_DEVICE, DEFAULT_DEVICE)))
    except ValueError as err:
        raise DeviceError(f"node config {P.NODE_DEVICE}: {err}") from None


# ------------------------------------------------------------------------------ errors and instructions
def error_code_mod(msg: Message, context: Context, call_next) -> Message:
    """Outermost: a failure leaves the site as a fixed error code and name only. The exception
    text (which may hold a path, a case id or a patient name) stays in the site's own log."""
    import logging

    from flwr.app import Error

    from fedpoint.shared.adapters import AdapterMismatchError

    try:
        reply = call_next(msg, context)
    except Exception as err:  # every failure, whatever raised it
        logging.getLogger("fedpoint.site").exception("%s message failed", msg.metadata.message_type)
        name = ("egress-refused" if isinstance(err, EgressError) else "device-unavailable"
                if isinstance(err, DeviceError) else "adapter-mismatch"
                if isinstance(err, AdapterMismatchError) else "instruction-refused" if isinstance(err, InstructionError)
                else "query-failed" if msg.metadata.message_type.startswith("query")
                else "evaluate-failed" if msg.metadata.message_type.startswith("evaluate") else "train-failed")
        return Message(Error(P.SITE_ERRORS[name], f"fedpoint site error: {name}"), reply_to=msg)
    if reply.has_error():  # an error made further in (a Flower mod): keep only its code
        return Message(Error(int(reply.error.code), "fedpoint site error"), reply_to=msg)
    return reply


class InstructionError(ValueError):
    """The coordinator's message holds something a site does not accept."""


def round_site(site, instruction: P.RoundInstruction):
    """The site working on the instruction's task (`SiteIdentity.on_task`); InstructionError for a
    task the site does not declare, before anything is loaded or trained."""
    try:
        return site.on_task(instruction.task)
    except ValueError as err:
        raise InstructionError(str(err)) from None


def instruction_mod(msg: Message, context: Context, call_next) -> Message:
    """Refuse incoming records and config keys that are not part of the protocol."""
    carries_bank = msg.metadata.message_type.startswith(("train", "evaluate"))
    allowed = P.INSTRUCTION_RECORDS if carries_bank else {P.CONFIG}
    extra = sorted(set(msg.content.keys()) - set(allowed))
    if extra:
        raise InstructionError(f"unknown records {extra}")
    config = msg.content.config_records.get(P.CONFIG) or {}
    keys = P.INSTRUCTION_CONFIG_KEYS if carries_bank else frozenset()
    unknown = sorted(set(config) - keys)
    if unknown:
        raise InstructionError(f"unknown config keys {unknown}")
    for key, value in config.items():
        if isinstance(value, (str, bytes)) and len(value) > P.MAX_INSTRUCTION_STRING:
            raise InstructionError(f"config {key} is {len(value)} long")
        if isinstance(value, list):
            raise InstructionError(f"config {key} is a list")
    return call_next(msg, context)


# ------------------------------------------------------------------------------ egress
def egress_mod(msg: Message, context: Context, call_next) -> Message:
    """Check whatever is about to leave the site; raise (so nothing is sent) if it is more."""
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    received = msg.content.array_records.get(P.ARRAYS)
    if msg.metadata.message_type.startswith("evaluate") and reply.content.array_records:
        raise EgressError("an evaluation reply carries scores only, no arrays")
    schema = state_schema(decode_arrays(received)) if received is not None else {}
    check_reply_content(reply.content, schema)
    return reply


def check_reply_content(content: RecordDict, schema: Mapping) -> None:
    """Only "arrays" matching `schema`, "metrics" from the allowed list and "config" id fields."""
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
    check_reply(decode_arrays(content[P.ARRAYS]), schema, metrics, config)


def check_reply(arrays: Mapping, schema: Mapping, metrics: Mapping, config: Mapping) -> None:
    """The egress check of a reply's parts: raises EgressError, and then nothing is sent."""
    check_egress(arrays, schema, metrics)
    P.check_reply_config(config)


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
    received = decode_arrays(bank)
    for name, value in decode_arrays(arrays).items():
        out[name] = (value + sign * received[name]).astype(value.dtype)
    return encode_arrays(out)


app = build_client_app()
