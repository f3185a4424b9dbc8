"""docs/configuration.md is generated from the settings models and must not drift."""

from __future__ import annotations

from pathlib import Path

from runledger.config_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_lists_every_setting_as_the_code_defines_it() -> None:
    assert DOC.read_text() == render(), "run `runledger config-doc` to regenerate docs/configuration.md"


def test_every_setting_is_described() -> None:
    from runledger.config import Settings
    from runledger_sdk.config import SdkSettings

    for model in (Settings, SdkSettings):
        missing = [name for name, field in model.model_fields.items() if not field.description]
        assert not missing, f"{model.__name__} fields without a description: {missing}"
