"""Stage bookkeeping: skip a stage whose inputs have not changed, and time stages.

A stage's key is a hash of everything it depends on (its config and the keys of
the stages it reads). Its manifest (key + record) is written after its outputs,
atomically, so a manifest only ever describes outputs that exist in full.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from absl import logging

from core import atomic


def stage_key(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageRunner:
    """Runs stages of one run folder, reusing results whose key is unchanged."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.seconds: dict[str, float] = defaultdict(float)

    def _manifest(self, model: str, stage: str) -> Path:
        return self.output_dir / model / "stages" / f"{stage}.json"

    def cached(self, model: str, stage: str, key: str, outputs: list[Path]) -> dict | None:
        manifest = self._manifest(model, stage)
        if not manifest.is_file() or not all(p.exists() for p in outputs):
            return None
        saved = json.loads(manifest.read_text())
        return saved["record"] if saved.get("key") == key else None

    def run(self, model: str, stage: str, key: str, outputs: list[Path],
            compute: Callable[[], dict], kind: str | None = None) -> dict:
        """Return the stage's record, computing it only when its key changed.

        `kind` groups timings (e.g. every variant's "convert" under one name).
        """
        record = self.cached(model, stage, key, outputs)
        if record is not None:
            logging.info("%s: %s is up to date, reused", model, stage)
            return record
        logging.info("%s: %s ...", model, stage)
        started = time.perf_counter()
        record = compute()
        elapsed = time.perf_counter() - started
        self.seconds[kind or stage] += elapsed
        logging.info("%s: %s done in %.1fs", model, stage, elapsed)
        atomic.write_json(self._manifest(model, stage), {"key": key, "record": record})
        return record

    def timed(self, kind: str):
        """Context manager adding wall time to `kind` (for work that is never cached)."""
        runner = self

        class _Timer:
            def __enter__(self):
                self.started = time.perf_counter()

            def __exit__(self, *exc):
                runner.seconds[kind] += time.perf_counter() - self.started

        return _Timer()
