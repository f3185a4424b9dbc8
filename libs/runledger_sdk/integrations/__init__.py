"""Integrations with the tools that run training code (`runledger_sdk.integrations.airflow`).

None of them imports the tool it integrates with: each works from what the tool hands its
processes (environment variables, context objects), so the tool is only needed where it runs.
"""

from runledger_sdk.integrations import airflow

__all__ = ["airflow"]
