"""Reload the gateway's config and router while it serves.

A reload reads the config file the gateway started from again. On a worker thread it runs the
start-up checks (model names, the files the config names, adapter sha256 pins) and builds the
router, and the backend too when embedded adapters changed. It then makes the new state current
with one assignment on the event loop. Each HTTP request takes the state current when it arrives
(:class:`RoutingSnapshotMiddleware`) and keeps it to its end, so requests in flight finish on
the old router and backend. A reload that fails at any step logs an ERROR and changes nothing.

What a reload applies: ``router.*`` (artifact or exemplars and the files in them, thresholds,
embedding model), ``adapters``, ``conversation.*``, ``sessions.*``, ``server.routing_alias``,
``server.log_prompts``, and for the embedded backend ``backend.adapter_files``,
``backend.adapter_sha256`` and the content of the adapter files. Every other ``server.*`` and
``backend.*`` key takes effect only at a restart, so a reload that changes one is rejected
with the keys named.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from classifier import ArtifactError, EmbeddingModelError, ExemplarError
from router.adapter_checksums import adapter_file_paths
from router.auth import ADMIN_PATH_PREFIX
from router.backends.base import Backend
from router.backends.upstream import UpstreamBackend
from router.config import (
    ConfigError,
    EmbeddedBackendSettings,
    GatewayConfig,
    RouterSettings,
    load_config,
)
from router.errors import GatewayError
from router.gateway import Gateway, build_backend, build_routing, check_gateway_config
from router.sessions import SessionStore

logger = logging.getLogger(__name__)

RELOADABLE_SERVER_KEYS = frozenset({"server.routing_alias", "server.log_prompts"})
"""The ``server`` keys a reload applies, because the routing service reads them, not the HTTP server."""
RELOADABLE_BACKEND_PREFIXES = ("backend.adapter_files.", "backend.adapter_sha256.")
"""Prefixes of the ``backend`` keys a reload applies. Only the embedded backend has these keys."""

INVALID_CONFIG_ERRORS = (ConfigError, ArtifactError, ExemplarError, EmbeddingModelError)
"""Exception types that building a gateway raises for a wrong config, router file or model file."""

_GATEWAY_STATE_KEY = "gateway"


class ReloadError(GatewayError):
    """Base class of the errors a reload returns. After each, the previous state keeps serving."""


class ReloadInProgressError(ReloadError):
    """Another reload is running (HTTP 409)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "reload_in_progress"


class ReloadRejectedError(ReloadError):
    """The new config, router or adapter files are invalid (HTTP 422)."""

    status_code = 422
    error_type = "invalid_request_error"
    code = "invalid_config"


class ReloadFailedError(ReloadError):
    """The reload failed unexpectedly (HTTP 500). The server log has the traceback."""

    status_code = 500
    error_type = "server_error"
    code = "reload_failed"


@dataclass(frozen=True)
class ReloadReport:
    """The outcome of one successful reload."""

    reload: int
    """The number of this reload attempt since start, as the log lines name it."""
    generation: int
    """Number of reloads that changed the serving state since start. 0 is the state built at start."""
    changed: tuple[str, ...]
    """Config keys and files that changed, empty when the reload found nothing to change."""
    source: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body of ``POST /admin/reload``."""
        return {
            "status": "reloaded" if self.changed else "unchanged",
            "reload": self.reload,
            "generation": self.generation,
            "changed": list(self.changed),
            "config": self.source,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class GatewaySnapshot:
    """A gateway state and the number of requests using it."""

    gateway: Gateway
    generation: int
    in_flight: int = 0


@dataclass
class _Prepared:
    """A validated new state, built off the event loop and not yet serving."""

    config: GatewayConfig
    changed: list[str]
    router_sha256: str
    adapter_sha256: dict[str, str] = field(default_factory=dict)
    gateway: Gateway | None = None
    """``None`` when nothing changed."""
    new_backend: bool = False
    adapters_changed: bool = False


class GatewayReloader:
    """The gateway state that serves new requests, and the reloads that replace it.

    Parameters
    ----------
    gateway : Gateway
        The state built at start.
    config : GatewayConfig, optional
        The config ``gateway`` was built from. Its ``source`` file is read again on each reload;
        without one, every reload is rejected. Blocking: the router's files are hashed here, so
        that a reload can tell whether they changed.
    """

    def __init__(self, gateway: Gateway, config: GatewayConfig | None = None) -> None:
        self.config = config
        self._current = GatewaySnapshot(gateway, 0)
        self._retired: list[GatewaySnapshot] = []
        self._router_sha256 = "" if config is None else router_files_sha256(config.router)
        self._attempts = 0
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signal_pending = False
        self._signal_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def gateway(self) -> Gateway:
        """The state that new requests get."""
        return self._current.gateway

    @property
    def generation(self) -> int:
        """Number of reloads that changed the serving state since start."""
        return self._current.generation

    async def start(self) -> None:
        """Start the gateway's backend and accept reload signals from now on."""
        self._loop = asyncio.get_running_loop()
        await self._current.gateway.start()
        if self._signal_pending:
            self._on_signal()

    async def close(self) -> None:
        """Stop queued reloads and close every backend still open."""
        self._closed = True
        if self._signal_task is not None:
            self._signal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._signal_task
        backends: list[Backend] = []
        for snapshot in [*self._retired, self._current]:
            if all(snapshot.gateway.backend is not backend for backend in backends):
                backends.append(snapshot.gateway.backend)
        self._retired.clear()
        for backend in backends:
            await backend.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # Requests

    def acquire(self) -> GatewaySnapshot:
        """Return the current state for a new request. Pair each call with :meth:`release`."""
        snapshot = self._current
        snapshot.in_flight += 1
        return snapshot

    def release(self, snapshot: GatewaySnapshot) -> None:
        """Mark a request on ``snapshot`` as finished, and close a replaced backend after its last request."""
        snapshot.in_flight -= 1
        if snapshot is self._current or snapshot.in_flight > 0 or snapshot not in self._retired:
            return
        self._retired.remove(snapshot)
        self._close_if_unused(snapshot.gateway.backend)

    # Triggers

    def reload_from_signal(self) -> None:
        """Schedule a reload on the event loop. Safe to call from a signal handler.

        Signals that arrive while a reload runs lead to one more reload after it. A signal that
        arrives before :meth:`start` is handled when the gateway starts.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            self._signal_pending = True
            return
        loop.call_soon_threadsafe(self._on_signal)

    async def reload(self, trigger: str) -> ReloadReport:
        """Reload now, unless another reload is running.

        Raises
        ------
        ReloadInProgressError
            If another reload is running.
        ReloadRejectedError
            If the new config or the files it names are invalid.
        ReloadFailedError
            If the reload failed unexpectedly.
        """
        if self._lock.locked():
            raise ReloadInProgressError(
                "A reload is already running: wait for it to finish (see the server log), then retry."
            )
        async with self._lock:
            return await self._reload_locked(trigger)

    def _on_signal(self) -> None:
        if self._closed:
            logger.info("SIGHUP received while the gateway stops: not reloading")
            return
        self._signal_pending = True
        if self._signal_task is not None and not self._signal_task.done():
            logger.info("SIGHUP received while a reload is queued or running: one more reload follows it")
            return
        logger.info("SIGHUP received: reloading")
        self._signal_task = asyncio.get_running_loop().create_task(self._run_signal_reloads())

    async def _run_signal_reloads(self) -> None:
        while self._signal_pending:
            async with self._lock:
                self._signal_pending = False
                with contextlib.suppress(ReloadError):  # logged by _reload_locked
                    await self._reload_locked("SIGHUP")

    # The reload

    async def _reload_locked(self, trigger: str) -> ReloadReport:
        self._attempts += 1
        attempt = self._attempts
        started = time.perf_counter()
        source = self.config.source if self.config is not None else None
        logger.info("reload %d (%s) started: reading %s", attempt, trigger, source or "no config file")

        try:
            if self.config is None or source is None:
                raise ConfigError(
                    "the gateway was not started from a config file, so there is nothing to reload: "
                    "start it with `adapter-router serve --config FILE`"
                )
            prepared = await asyncio.to_thread(
                _prepare, self.config, self._current.gateway, self._router_sha256
            )
            in_flight = await self._swap(prepared) if prepared.gateway is not None else 0
        except INVALID_CONFIG_ERRORS as error:
            reason = "; ".join(str(error).splitlines())
            logger.error(
                "reload %d (%s) failed after %.1f s, the previous config keeps serving: %s",
                attempt,
                trigger,
                time.perf_counter() - started,
                reason,
            )
            raise ReloadRejectedError(
                f"The reload was rejected and the previous config keeps serving: {reason}"
            ) from None
        except Exception as error:
            logger.exception(
                "reload %d (%s) failed unexpectedly after %.1f s, the previous config keeps serving",
                attempt,
                trigger,
                time.perf_counter() - started,
            )
            raise ReloadFailedError(
                f"The reload failed ({type(error).__name__}) and the previous config keeps serving: "
                "the server log has the details."
            ) from error

        seconds = time.perf_counter() - started
        report = ReloadReport(attempt, self.generation, tuple(prepared.changed), source, seconds)
        if prepared.changed:
            logger.info(
                "reload %d (%s) finished in %.1f s: generation %d serves new requests, "
                "%d requests in flight finish on generation %d; changed: %s",
                attempt,
                trigger,
                seconds,
                self.generation,
                in_flight,
                self.generation - 1,
                ", ".join(prepared.changed),
            )
        else:
            logger.info("reload %d (%s) finished in %.1f s: nothing changed", attempt, trigger, seconds)
        return report

    async def _swap(self, prepared: _Prepared) -> int:
        """Start what the new state needs and make it current.

        Return the number of requests still on the previous state.
        """
        gateway = prepared.gateway
        assert gateway is not None
        if prepared.new_backend:
            try:
                await gateway.start()
            except BaseException:
                await gateway.close()
                raise
        elif prepared.adapters_changed and isinstance(gateway.backend, UpstreamBackend):
            problems = await gateway.readiness()
            if problems:
                # As at start, an upstream that lacks an adapter is a warning: it may load it later.
                logger.warning(
                    "the reloaded adapter map does not match the upstream: %s", "; ".join(problems)
                )

        # The swap: one assignment on the event loop, between two requests' starts.
        previous = self._current
        self._current = GatewaySnapshot(gateway, previous.generation + 1)
        self.config = prepared.config
        self._router_sha256 = prepared.router_sha256
        if previous.in_flight > 0:
            self._retired.append(previous)
        else:
            self._close_if_unused(previous.gateway.backend)
        return previous.in_flight

    def _close_if_unused(self, backend: Backend) -> None:
        in_use = [self._current, *self._retired]
        if any(snapshot.gateway.backend is backend for snapshot in in_use):
            return
        task = asyncio.get_running_loop().create_task(_close_backend(backend))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close_backend(backend: Backend) -> None:
    try:
        await backend.close()
    except Exception:
        logger.exception("closing the backend replaced by a reload failed")
    else:
        logger.info("closed the backend replaced by a reload, after its last request")


def _prepare(config: GatewayConfig, gateway: Gateway, router_sha256: str) -> _Prepared:
    """Read and check the config file again, and build what changed. Blocking."""
    assert config.source is not None
    new_config = load_config(config.source)
    restart_keys = restart_only_changes(config, new_config)
    if restart_keys:
        raise ConfigError(
            f"{', '.join(restart_keys)}: changed in {config.source}, but these settings take effect only "
            "at a restart: restart the gateway, or set them back to reload the other changes"
        )

    adapter_sha256 = check_gateway_config(new_config)
    new_router_sha256 = router_files_sha256(new_config.router)
    changed = changed_keys(config, new_config)
    if new_router_sha256 != router_sha256:
        changed.append(f"router files ({new_config.router.artifact or new_config.router.exemplars})")
    changed += [
        f"adapter file {name}"
        for name, digest in sorted(adapter_sha256.items())
        if gateway.adapter_sha256.get(name, digest) != digest
    ]
    prepared = _Prepared(new_config, changed, new_router_sha256, adapter_sha256)
    if not changed:
        return prepared

    routing = build_routing(new_config, session_store=_kept_session_store(config, new_config, gateway))
    prepared.adapters_changed = routing.adapter_names != gateway.routing.adapter_names
    backend = gateway.backend
    if _backend_must_reload(config, new_config, gateway.adapter_sha256, adapter_sha256):
        # NOTE: the new backend loads the model again next to the old one, so memory contains
        # both models until the last request on the old backend ends.
        backend = build_backend(new_config, routing.adapter_names)
        prepared.new_backend = True
    prepared.gateway = Gateway(routing, backend, server=gateway.server, adapter_sha256=adapter_sha256)
    return prepared


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Return the changed keys that only a restart applies, sorted."""
    return [key for key in changed_keys(old, new) if not _reloadable(key)]


def changed_keys(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Return the dotted keys whose values differ between two configs, sorted.

    Mappings are compared entry by entry (``adapters.math``), and lists as a whole. Values are
    never returned, because some are secrets.
    """
    before, after = _flatten(old), _flatten(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def router_files_sha256(settings: RouterSettings) -> str:
    """Return a sha256 over the names and bytes of the router's files (its artifact or exemplars).

    A path that does not exist hashes to a fixed value, and the loader reports it.
    """
    root = Path(settings.artifact or settings.exemplars or "")
    digest = hashlib.sha256()
    files = sorted(path for path in root.rglob("*") if path.is_file()) if root.is_dir() else [root]
    for path in files:
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _reloadable(key: str) -> bool:
    if key.startswith("server."):
        return key in RELOADABLE_SERVER_KEYS
    if key.startswith("backend."):
        return key.startswith(RELOADABLE_BACKEND_PREFIXES)
    return True


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, BaseModel):
        items: Mapping[str, Any] = {
            name: getattr(value, name) for name in type(value).model_fields if name != "source"
        }
    elif isinstance(value, Mapping):
        items = value
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for name, item in items.items():
        flat.update(_flatten(item, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def _kept_session_store(old: GatewayConfig, new: GatewayConfig, gateway: Gateway) -> SessionStore | None:
    """Return the sticky sessions to keep, or ``None`` when they start over.

    Sessions start over when their store's size or time to live changes, or when an adapter a
    session may be on is no longer served.
    """
    removed = set(gateway.routing.adapter_names) - {a for a in new.adapters.values() if a is not None}
    resized = (old.sessions.max_sessions, old.sessions.ttl_seconds) != (
        new.sessions.max_sessions,
        new.sessions.ttl_seconds,
    )
    if not removed and not resized:
        return gateway.routing.session_store
    reason = (
        f"adapters {', '.join(sorted(removed))} are no longer served" if removed else "their limits changed"
    )
    logger.info("sticky sessions start over after this reload: %s", reason)
    return None


def _backend_must_reload(
    old: GatewayConfig, new: GatewayConfig, old_sha256: Mapping[str, str], new_sha256: Mapping[str, str]
) -> bool:
    """Return whether the embedded backend must load its adapters again.

    It must when the adapter names, their file paths or the files' bytes changed.
    """
    if not isinstance(old.backend, EmbeddedBackendSettings) or not isinstance(
        new.backend, EmbeddedBackendSettings
    ):
        return False
    old_names = {a for a in old.adapters.values() if a is not None}
    new_names = {a for a in new.adapters.values() if a is not None}
    old_files = adapter_file_paths(old.backend, old_names)
    new_files = adapter_file_paths(new.backend, new_names)
    return old_files != new_files or dict(old_sha256) != dict(new_sha256)


class RoutingSnapshotMiddleware:
    """Give each HTTP request the gateway state current at its start, for the whole request.

    The request keeps the state until its response ends, streams included, so a reload never
    changes the router or backend under a request. The handlers read it with
    :func:`request_gateway`. Admin requests take no state, so a reload's own request does not
    count as one in flight on the state it replaces.
    """

    def __init__(self, app: ASGIApp, reloader: GatewayReloader) -> None:
        self.app = app
        self.reloader = reloader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PATH_PREFIX):
            await self.app(scope, receive, send)
            return

        snapshot = self.reloader.acquire()
        scope.setdefault("state", {})[_GATEWAY_STATE_KEY] = snapshot.gateway
        try:
            await self.app(scope, receive, send)
        finally:
            self.reloader.release(snapshot)


def request_gateway(request: Request) -> Gateway:
    """Return the gateway state :class:`RoutingSnapshotMiddleware` gave ``request``."""
    gateway = request.scope.get("state", {}).get(_GATEWAY_STATE_KEY)
    if gateway is None:
        raise RuntimeError("no gateway state on the request: add RoutingSnapshotMiddleware to the app")
    return gateway
