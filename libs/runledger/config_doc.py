"""Renders docs/configuration.md from the settings models, so the docs cannot drift."""

from __future__ import annotations

from pydantic_settings import BaseSettings


def settings_table(model: type[BaseSettings], prefix: str = "RUNLEDGER_") -> str:
    """A Markdown table: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if hasattr(default, "get_secret_value"):
            default = default.get_secret_value()
        shown = "" if default in ("", None) else str(default)
        lines.append(f"| `{prefix}{name.upper()}` | `{shown}` | {field.description or ''} |")
    return "\n".join(lines)


def render() -> str:
    """The whole configuration page."""
    from runledger.config import Settings
    from runledger_sdk.config import SdkSettings

    return "\n".join(
        [
            "# Configuration",
            "",
            "Every setting is an environment variable, read through pydantic-settings. Nothing set means",
            "the embedded default: every part starts on 127.0.0.1 with its data under `RUNLEDGER_STATE_DIR`.",
            "Setting `RUNLEDGER_KAFKA_BOOTSTRAP`, `RUNLEDGER_POSTGRES_DSN` or `RUNLEDGER_CLICKHOUSE_URL` points",
            "that part at an external server (distributed mode); then nothing embedded starts for it.",
            "",
            "This page is generated (`runledger config-doc`); a test fails when it drifts from the code.",
            "",
            "## Services (`runledger up`, `python -m runledger.serve`)",
            "",
            settings_table(Settings),
            "",
            "## SDK (`import runledger_sdk as rl`; `rl.init(**overrides)` takes the same names in lower case)",
            "",
            "With neither `RUNLEDGER_KAFKA_BOOTSTRAP` nor `RUNLEDGER_URL` set, the SDK reads",
            "`<RUNLEDGER_STATE_DIR>/connection.json` written by `runledger up`.",
            "",
            settings_table(SdkSettings),
            "",
        ]
    )
