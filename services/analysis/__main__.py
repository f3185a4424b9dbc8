"""`python -m services.analysis`: the analysis service alone, without HTTP (the `all` role's child).

The `all` role runs it as a child process rather than a thread: detection is CPU work in
Python, and sharing the API's and the projector's interpreter lock would slow them.
SIGTERM and SIGINT stop it after its current batch and a last checkpoint. Its metrics
reach the parent's /metrics through the PROMETHEUS_MULTIPROC_DIR the parent sets in its
environment (prometheus_client's multiprocess mode; runledger.serve.AnalysisChildren).
Garbage-collection pauses are not timed here (services/observability.py watch_gc): in that
mode every metric write holds one process-wide lock, which a collection triggered inside a
write would wait for forever.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from runledger.config import get_settings
from runledger.heap import freeze_startup_heap, relax_gc_for_detector_state
from runledger.serve import analysis_key, connect_postgres
from services.analysis.service import AnalysisService

log = logging.getLogger("runledger.analysis")


async def _main() -> int:
    settings = get_settings()
    key = analysis_key(settings)
    if key is None:
        log.error(
            "no RUNLEDGER_ANALYSIS_API_KEY or RUNLEDGER_BOOTSTRAP_API_KEY: nothing to sign findings with"
        )
        return 2
    pool = await connect_postgres(settings)
    service = AnalysisService(settings, pool, key)
    freeze_startup_heap()
    relax_gc_for_detector_state()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop.set)
    try:
        await service.run()
    finally:
        await pool.close()
    return 0


def main() -> None:
    """Process entry point."""
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(asyncio.run(_main()))


if __name__ == "__main__":
    main()
