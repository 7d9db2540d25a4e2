"""The adapter pool: references resolved to verified adapters, kept attached to shared base models on the runtime
``inference.runtimes`` picks, the least recently used dropped past a limit. `finetune serve` holds one for its
life; `finetune predict` and prediction jobs open a pool of one (``open_one``), so that every path makes the same
runtime, merge and fallback decisions."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from finetune_platform.errors import NotFoundError
from finetune_platform.inference.predictor import AdapterSource, source_from_registry
from finetune_platform.inference.runtimes import Placement, Runtime, checked_choice, open_runtime
from finetune_platform.settings import Settings
from finetune_platform.tracking.registry import ModelRegistry, Stage

logger = logging.getLogger("finetune_platform.inference")
DEFAULT_SLOT = ""  # the resolution cache's entry for "no model named, no --model given"


class ModelPool:
    """Resolves references to verified adapters and keeps them attached to shared base models (LRU)."""

    def __init__(
        self,
        settings: Settings,
        default: str | None,
        max_adapters: int,
        resolve_seconds: float,
        runtime: str = "onnx",
        device: str = "cpu",
        max_batch: int = 64,
        cuda_graphs: bool = True,
        runtime_setting: str = "SERVE_RUNTIME",
    ) -> None:
        self.settings, self.default, self.max_adapters = settings, default, max_adapters
        self.resolve_seconds, self.device = resolve_seconds, device
        self.runtime = checked_choice(runtime, runtime_setting).value
        self.placement = Placement(device, cuda_graphs, max_batch)
        self.runtime_setting = runtime_setting
        self.local: set[str] = set()  # run folders served without the registry (their keys never move)
        self.hosts: list[Runtime] = []  # one per base model and label count (ONNX: and adapter shape)
        self._resolved: dict[str, tuple[float, str]] = {}  # reference -> (when, name@version)
        self.default_key: str | None = None  # what the default model resolves to now
        self._recent: OrderedDict[str, None] = OrderedDict()  # resident adapters, least recently used first
        self._sources: dict[str, AdapterSource] = {}

    def default_reference(self) -> str:
        if self.default:
            return self.default
        versions = ModelRegistry(self.settings).versions()
        production = [v for v in versions if v.stage is Stage.PRODUCTION]
        chosen = production or versions
        if not chosen:
            raise NotFoundError(
                "no registered model to serve yet: train one (it is served as soon as it is registered, without a "
                "restart), or name one with --model"
            )
        newest = max(chosen, key=lambda v: (v.created_at, v.version))
        return f"{newest.name}@production" if production else newest.name

    def cached_key(self, reference: str | None) -> str | None:
        """name@version without touching the registry, when the reference pins a version or was resolved
        less than ``resolve_seconds`` ago; None when it must be looked up (``key_for``)."""
        slot = reference or self.default or DEFAULT_SLOT
        name, _, selector = slot.partition("@")
        if slot in self.local:
            key = slot
        elif selector.isdigit():
            key = f"{name}@{int(selector)}"
        else:
            cached = self._resolved.get(slot)
            if not cached or time.monotonic() - cached[0] >= self.resolve_seconds:
                return None
            key = cached[1]
        if not reference or reference == self.default:
            self.default_key = key
        return key

    def key_for(self, reference: str | None) -> str:
        """name@version for a reference; moving references (stage, newest, the default) are looked up again
        every ``resolve_seconds``."""
        key = self.cached_key(reference)
        if key is not None:
            return key
        slot = reference or self.default or DEFAULT_SLOT
        info = ModelRegistry(self.settings).resolve(
            self.default_reference() if slot == DEFAULT_SLOT else slot
        )
        key = f"{info.name}@{info.version}"
        cached = self._resolved.get(slot)
        if cached and cached[1] != key:
            logger.info("%s now resolves to %s", reference or "the default model", key)
        self._resolved[slot] = (time.monotonic(), key)
        if not reference or reference == self.default:
            self.default_key = key
        return key

    def serve_local(self, source: AdapterSource) -> None:
        """Make an adapter from a run folder the default model; its key resolves without the registry."""
        self.local.add(source.key)
        self._sources[source.key] = source
        self.default = source.key

    def source(self, key: str) -> AdapterSource:
        """The adapter ``key`` names: downloaded and verified on first use (a registry read: not on the
        inference thread's hot path), then kept; ``load`` attaches it."""
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = source_from_registry(self.settings, key)
        return source

    def known_source(self, key: str) -> AdapterSource | None:
        """The adapter ``key`` names when it was read before, without touching the registry."""
        return self._sources.get(key)

    def load(self, key: str) -> tuple[Runtime, AdapterSource]:
        """The host with ``key`` attached (downloaded, verified, attached on first use)."""
        source = self.source(key)
        host = next((h for h in self.hosts if key in h.adapters), None)
        if host is None:
            host = self._host_for(key, source)
        self._recent[key] = None
        self._recent.move_to_end(key)
        self._evict(keep=key)
        return host, source

    def _host_for(self, key: str, source: AdapterSource) -> Runtime:
        """Where a new adapter goes. Alone on its base model it is merged into it, on every runtime and device
        (the single-model case: ONNX ~3 ms instead of ~4 ms a sentence on 2 cores; on CUDA, graph replay). A
        second adapter of that base moves both to the shared host (ONNX: adapters as graph inputs; torch: PEFT),
        unless it is a new default (a promotion): then it replaces the old."""
        same_base = [host for host in self.hosts if self._same_base(host, source)]
        merged = next((host for host in same_base if host.merged), None)
        if merged is not None:
            self.hosts.remove(merged)
            same_base.remove(merged)
            (earlier,) = merged.adapters.values()
            if key == self.default_key:
                logger.info("%s replaces %s as the default model", key, earlier.key)
            else:
                same_base.append(self._open(earlier))
        if not same_base:
            return self._open(source, merged=True)
        host = next((host for host in same_base if host.accepts(source)), None)
        if host is None:
            return self._open(source)
        host.attach(source)
        return host

    def _open(self, source: AdapterSource, merged: bool = False) -> Runtime:
        host = open_runtime(source, self.runtime, self.placement, merged=merged, setting=self.runtime_setting)
        self.hosts.append(host)
        return host

    @staticmethod
    def _same_base(host: Runtime, source: AdapterSource) -> bool:
        first = next(iter(host.adapters.values()))
        return (first.info.base_model, len(first.label_map.names)) == (
            source.info.base_model,
            len(source.label_map.names),
        )

    def _evict(self, keep: str) -> None:
        """Past ``max_adapters``, the least recently used adapters go (never ``keep``, the one in use);
        a host whose last adapter goes is dropped with its graph."""
        resident = {key: host for host in self.hosts for key in host.adapters}
        for key in [key for key in self._recent if key not in resident]:
            del self._recent[key]
        while len(resident) > self.max_adapters:
            key = next(key for key in self._recent if key != keep)
            host = resident.pop(key)
            del self._recent[key]
            if len(host.adapters) > 1:
                with host.lock:
                    host.detach(key)
            else:
                self.hosts.remove(host)
            logger.info("unloaded %s (more than %d adapters resident)", key, self.max_adapters)

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {"model": s.info.name, "version": s.info.version, "base_model": s.info.base_model,
             "language": s.info.language, "labels": list(s.label_map.names), "max_length": s.info.max_length,
             "runtime": host.runtime, "merged": host.merged, "task": s.label_map.task, "pair": s.label_map.pair}
            for host in self.hosts
            for s in host.adapters.values()
        ]  # fmt: skip


def open_one(
    settings: Settings,
    source: AdapterSource,
    runtime: str | None = None,
    device: str = "cpu",
    setting: str = "SERVE_RUNTIME",
) -> Runtime:
    """``source`` as the server would load it alone, in a pool of one: `finetune predict` and prediction jobs.
    ``runtime``: SERVE_RUNTIME unless given; ``setting``: what a bad one is called in the error."""
    pool = ModelPool(
        settings, None, 1, 0.0, runtime or settings.SERVE_RUNTIME, device, runtime_setting=setting
    )
    pool.serve_local(source)
    host, _ = pool.load(source.key)
    return host
