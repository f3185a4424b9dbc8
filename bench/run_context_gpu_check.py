"""Checks the SDK's environment capture and torch seeding on a real NVIDIA GPU.

    python3 bench/run_context_gpu_check.py

Loads runledger_sdk/environment.py and seeds.py on their own (both need only the standard
library at import), so it runs on a machine with torch but without the SDK's dependencies:

1. the environment capture before torch is imported: driver and CUDA version from nvidia-smi;
2. after `import torch`: cuda_version is the CUDA torch was built with;
3. seeding torch (deterministic=True) twice with one seed gives bit-identical CUDA random
   tensors and matmul results, another seed different ones.

Prints a JSON summary (also written to $OUT/run_context_gpu_check.json when OUT is set);
exits 1 when a check fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

SDK = Path(__file__).resolve().parents[1] / "libs" / "runledger_sdk"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"rl_{name}", SDK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    environment = load("environment")
    seeds = load("seeds")
    out: dict[str, Any] = {}
    failures: list[str] = []

    started = time.perf_counter()
    before = environment.capture_environment()
    out["capture_s"] = round(time.perf_counter() - started, 3)
    out["before_torch"] = {
        k: before[k] for k in ("python_version", "platform", "cuda_version", "driver_version")
    }
    out["packages"] = len(before["packages"])
    out["environment_hash"] = before["environment_hash"]
    if not before["driver_version"] or not before["cuda_version"]:
        failures.append("nvidia-smi gave no driver/CUDA version")
    if "torch" in sys.modules:
        failures.append("the capture imported torch")

    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        out["torch"] = None
    else:
        after = environment.capture_environment()
        out["after_torch"] = {"cuda_version": after["cuda_version"], "torch_cuda": torch.version.cuda}
        if after["cuda_version"] != torch.version.cuda:
            failures.append("cuda_version is not torch's after import")
        if after["environment_hash"] != before["environment_hash"]:
            failures.append("importing torch changed the environment hash")
        if torch.cuda.is_available():

            def sample(seed: int) -> tuple[Any, Any]:
                seeds._seed_torch(seed, True)
                a = torch.randn(2048, 2048, device="cuda")
                b = torch.randn(2048, 2048, device="cuda")
                return a, a @ b

            a1, m1 = sample(123)
            a2, m2 = sample(123)
            a3, _ = sample(124)
            out["cuda"] = {
                "device": torch.cuda.get_device_name(0),
                "same_seed_equal": bool(torch.equal(a1, a2) and torch.equal(m1, m2)),
                "other_seed_differs": not bool(torch.equal(a1, a3)),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            }
            if not out["cuda"]["same_seed_equal"] or not out["cuda"]["other_seed_differs"]:
                failures.append("seeding is not reproducible on CUDA")
        else:
            failures.append("torch sees no CUDA device")

    out["failures"] = failures
    text = json.dumps(out, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "run_context_gpu_check.json").write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
