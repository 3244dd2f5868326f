"""Documents generated from the code, so that they cannot drift from it:
``docs/asyncapi.yaml`` (the topics, from the event models in ``signwatch.events``),
``docs/configuration.md`` (every setting, from ``signwatch.config.Settings``) and
``docs/checks.md`` (every check, from ``signwatch.monitoring.registry``).

Regenerate them with ``python -m signwatch.contracts`` (tests/unit/test_contracts.py fails when
a committed copy is stale).
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, SecretStr

from signwatch import events
from signwatch.config import Settings
from signwatch.consuming import DLQ_HEADERS, dlq_topic

DOCS = Path(__file__).resolve().parents[2] / "docs"

# topic setting -> (model, key, who publishes, who subscribes)
TOPICS = {
    "inference_topic": (events.InferenceEvent, "event_id", "inference",
                        ["capture (group signwatch-capture)", "monitor (group signwatch-monitor)"]),
    "violations_topic": (events.ViolationEvent, "violation_id", "monitor",
                         ["explainer (group signwatch-explainer)"]),
    "explanations_topic": (events.ExplanationEvent, "violation_id", "explainer", ["dashboards, tickets, anyone"]),
    "baselines_topic": (events.BaselineEvent, "endpoint", "monitor", ["dashboards, operators, anyone"]),
    "ground_truth_topic": (events.GroundTruthRecord, "eventMetadata.eventId", "monitor (POST /ground-truth, label "
                           "files), labelling tools", ["monitor (group signwatch-monitor-labels)"]),
    "screening_topic": (events.ScreeningEvent, "event_id", "explainer",
                        ["monitor (group signwatch-monitor-screening)", "dashboards, anyone"]),
}

EVOLUTION_RULE = (
    "A new version of an event may only add optional fields (with a default) and must keep every "
    "field, type and meaning of the versions before it; its `schema` becomes `<type>/v<N+1>` and "
    "the model keeps accepting every older version in its `schema` Literal, so that a consumer "
    "reads both old and new events. Consumers upgrade first, producers after (a consumer that "
    "meets a version it does not know dead-letters the message to `<topic>.dlq`, it never stops). "
    "Removing or renaming a field, or changing its type, is a new event type on a new topic."
)


def schema_versions(model: type[BaseModel]) -> list[str]:
    """The ``schema`` values a consumer of ``model`` may meet (the Literal's arguments)."""
    annotation = model.model_fields["schema_"].annotation
    return list(typing.get_args(annotation))


def asyncapi_document(settings: Settings | None = None) -> dict:
    """The AsyncAPI 3 document; topic names from ``settings`` (the defaults when None, whatever
    the environment says, so that the committed document is the same on every machine)."""
    settings = settings or Settings.model_construct()
    channels, operations, messages, schemas = {}, {}, {}, {}
    for setting, (model, key, producer, consumers) in TOPICS.items():
        topic = getattr(settings, setting)
        name = model.__name__
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        for nested, body in schema.pop("$defs", {}).items():
            schemas[nested] = body
        schemas[name] = schema
        versions = schema_versions(model)
        messages[name] = {
            "name": name,
            "title": name,
            "contentType": "application/json",
            "summary": (model.__doc__ or name).strip().splitlines()[0],
            "description": f"Versions a consumer may meet: {', '.join(versions)}. Kafka key: `{key}` "
                           f"(same key, same partition, in order).",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "x-schema-versions": versions,
            "bindings": {"kafka": {"key": {"type": "string", "description": f"the event's {key}"}}},
        }
        channel = setting.removesuffix("_topic")
        channels[channel] = {
            "address": topic,
            "description": f"Published by {producer}; read by {', '.join(consumers)}. Poison messages "
                           f"go to `{dlq_topic(topic)}` unchanged, with the headers "
                           f"{', '.join(f'`{h}`' for h in DLQ_HEADERS)} (why, which consumer group, from where).",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"kafka": {"partitions": settings.topic_partitions}},
        }
        operations[f"publish_{channel}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{producer} publishes {name}",
        }
        operations[f"consume_{channel}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{', '.join(consumers)} consume {name}",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "signwatch events",
            "version": "1.0.0",
            "description": "The topics signwatch's services publish and read. Generated by "
                           "`python -m signwatch.contracts` from signwatch.events; do not edit.\n\n"
                           "Schema evolution: " + EVOLUTION_RULE,
        },
        "defaultContentType": "application/json",
        "servers": {"kafka": {"host": "kafka:9092", "protocol": "kafka",
                              "description": "SIGNWATCH_BUS_URL (kafka://host:port)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def asyncapi_yaml() -> str:
    return yaml.safe_dump(asyncapi_document(), sort_keys=False, width=100, allow_unicode=True)


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path) and str(value).startswith(str(Path.home())):
        return f"`~/{value.relative_to(Path.home())}`"
    return f"`{value}`"


def _type(field) -> str:
    annotation = field.annotation
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "").replace("pydantic.types.", "")
    text = text.replace("pathlib.", "").replace("NoneType", "None").replace(" | ", " or ")
    bounds = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    limits = [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in bounds.items()
              if getattr(m, attr, None) is not None]
    limits += [f"matches `{m.pattern}`" for m in field.metadata if getattr(m, "pattern", None)]
    return (text + (f" ({', '.join(limits)})" if limits else "")).replace("|", "\\|")


def configuration_markdown() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    lines = [
        "# Configuration reference",
        "",
        "Generated from `signwatch.config.Settings` by `python -m signwatch.contracts`; do not edit.",
        "Every service reads these environment variables once, at start. Secrets (`SecretStr`) are",
        "never logged; in Kubernetes they come from Secrets (deploy/k8s/base).",
        "",
        "| variable | type | default | what |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        what = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name.upper()}` | {_type(field)} | {_default(field)} | {what} |")
    return "\n".join(lines) + "\n"


def checks_markdown() -> str:
    from signwatch.monitoring import registry

    needs = {"nothing": "nothing", "baseline": "a baseline",
             "class_baseline": "a baseline of the endpoint's own traffic (not the shipped one, unless asked)",
             "quality_constraints": "labels, and a model-quality baseline (`baseline suggest --quality`)"}
    lines = [
        "# Checks reference",
        "",
        "Generated from `signwatch.monitoring.registry` by `python -m signwatch.contracts`; do not edit.",
        "Each check is declared once there; the monitor, the scheduled job (window checks), the metrics",
        "and the dashboard look it up. Budget: the check's share of `alpha_per_day` when every check runs",
        "(renormalised over the checks that run: the job runs the window checks only). Checks of one",
        "incident group failing together are one incident, one violation (docs/monitoring.md).",
        "",
        "| check | kind | feature | needs | budget | samples | incident | test | what a violation says |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    every = registry.shares(("window", "sequential", "screening"))
    for k in registry.CHECKS:
        budget = f"{every[k.name]:.0%}" if k.name in every else "fixed rule"
        lines.append(f"| `{k.name}` | {k.kind} | {k.feature} | {needs[k.needs]} | {budget} | {k.samples} | "
                     f"{k.incident} | {k.test} | {k.description} |")
    return "\n".join(lines) + "\n"


GENERATED = {"asyncapi.yaml": asyncapi_yaml, "configuration.md": configuration_markdown,
             "checks.md": checks_markdown}


def main() -> int:
    for name, make in GENERATED.items():
        (DOCS / name).write_text(make())
        print(f"wrote docs/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
