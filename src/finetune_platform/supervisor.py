"""A supervised group of local processes, as `finetune up` runs the platform: each part in a process group of its
own that dies with this process, health checked over HTTP, restarted when it crashes (given up after a run of quick
crashes), stopped in stages (the workers first, so that a running job checkpoints) and its state kept in a JSON file
for `finetune status` and `finetune down`. It knows nothing of what the parts are; the command line says that.

``python -m finetune_platform.supervisor`` runs a group in the background (`finetune up --detach`): the plan comes
on stdin, so that no setting it carries (a database URL with its password) is written to disk."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_platform.atomic import write_atomic
from finetune_platform.errors import ErrorCode, PlatformError

QUICK_SECONDS = 30.0  # a part that exits sooner than this after starting has crashed "quickly"
RESTART_LIMIT = 5  # quick crashes in a row before a part is given up (and the group stopped)
PROBE_SECONDS = 5.0  # health of a part that answered once is checked again this often
TICK_SECONDS = 0.25
LOG_TAIL_LINES = 12


class SupervisorError(PlatformError):
    """The group cannot run: a part crashed too often or never answered its health check (the message names the
    part and ends with the last lines of its log)."""


def die_with_parent(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere nothing): a process
    whose parent is killed outright (SIGKILL, the out-of-memory killer) must not live on without it."""
    prctl = _prctl()
    if prctl is not None:
        prctl(1, int(sig))  # PR_SET_PDEATHSIG


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux, else None; looked up once, before a fork, so a child between fork and exec only
    calls it."""
    if sys.platform != "linux":
        return None
    # lazy: ctypes only on Linux, for the parent-death signal
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


@dataclass(frozen=True)
class PartSpec:
    """One process of the group: how to start it, where its output goes, how to tell it is up, when it stops."""

    name: str
    command: tuple[str, ...]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    port: int | None = None
    health_url: str | None = None  # answers 2xx/3xx when the part is up; None: up while it runs
    stop_stage: int = 1  # stages stop in ascending order, each fully before the next
    stop_seconds: float = 20.0  # from SIGTERM to SIGKILL
    after: tuple[str, ...] = ()  # parts that must be healthy before this one starts

    def as_plan(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "command": list(self.command),
            "log": str(self.log),
            "after": list(self.after),
        }

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> PartSpec:
        return cls(
            **{
                **plan,
                "command": tuple(plan["command"]),
                "log": Path(plan["log"]),
                "after": tuple(plan["after"]),
            }
        )


@dataclass
class Part:
    spec: PartSpec
    state: str = "waiting"  # waiting, starting, healthy, unhealthy, restarting, stopping, stopped, failed
    process: subprocess.Popen | None = None
    started: float = 0.0  # time.monotonic() of the current process's start
    started_at: float | None = None  # the same as a Unix time, for other processes to read
    restarts: int = 0
    quick_crashes: int = 0  # in a row
    due: float = 0.0  # when a crashed part starts again
    probed: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def public(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "name": spec.name,
            "pid": self.pid,
            "port": spec.port,
            "health_url": spec.health_url,
            "state": self.state,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "log": str(spec.log),
        }


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (at most its last 64 KiB), or a note that it holds none."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - 65536, 0))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else f"(nothing in {path})"


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers with a success or a redirect now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host``:``port`` now (SO_REUSEADDR, as servers bind: a port that only
    lingers in TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def choose_ports(host: str, candidates: Iterable[int], names: list[str], described: str) -> dict[str, int]:
    """A free port for each name, the first ones of ``candidates`` that are free (a taken port is skipped); a
    SupervisorError naming ``described`` (the option that gave the candidates) when too few are free."""
    candidates = list(candidates)
    free = (port for port in candidates if port_is_free(host, port))
    chosen = dict(zip(names, free, strict=False))
    if len(chosen) < len(names):
        left = names[len(chosen) :]
        taken = len(candidates) - len(chosen)
        raise SupervisorError(
            f"no free port left in {described} for {', '.join(left)}: {len(names)} needed, {taken} of its "
            f"{len(candidates)} taken on {host}; give more with --ports START-END",
            ErrorCode.CONFLICT,
        )
    return chosen


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Supervisor:
    """Runs ``specs`` as one group until asked to stop (``request_stop``: the signal handlers' call) or until a
    part fails for good; ``run`` stops every part, in stages, whatever ended it."""

    def __init__(
        self,
        specs: list[PartSpec],
        state_file: Path,
        *,
        restart_limit: int = RESTART_LIMIT,
        quick_seconds: float = QUICK_SECONDS,
        info: dict[str, Any] | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"part names repeat: {names}")
        self.parts = [Part(spec) for spec in specs]
        self.state_file, self.restart_limit, self.quick_seconds = state_file, restart_limit, quick_seconds
        self.info = dict(info or {})
        self.state = "starting"
        self.message: str | None = None
        self.stop_reason: str | None = None
        self.forced = False
        self.started_at = time.time()
        self._written: str | None = None

    # -- the caller's view ------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask ``run`` to stop the group at its next tick (safe from a signal handler)."""
        self.stop_reason = self.stop_reason or reason

    def force_stop(self) -> None:
        """Stop without waiting any longer: what still runs is killed (a second Ctrl-C)."""
        self.forced = True

    def part(self, name: str) -> Part:
        return next(part for part in self.parts if part.spec.name == name)

    def all_healthy(self) -> bool:
        return all(part.state == "healthy" for part in self.parts)

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "message": self.message,
            "started_at": self.started_at,
            **self.info,
            "parts": [part.public() for part in self.parts],
        }

    def run(
        self,
        timeout: float,
        *,
        on_events: Callable[[list[str]], None] = lambda events: None,
        on_ready: Callable[[], None] = lambda: None,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Start the parts, wait (at most ``timeout`` seconds) until each answers its health check, call
        ``on_ready``, then keep them running (restarting crashed ones) until ``request_stop``. Every part is
        stopped before this returns or raises (SupervisorError: a part that never came up or crashed too often)."""
        deadline = time.monotonic() + timeout
        try:
            self._write()
            while self.stop_reason is None:
                on_events(self.tick())
                if self.state == "starting" and self.all_healthy():
                    self.state = "running"
                    self._write()
                    on_ready()
                elif self.state == "starting" and time.monotonic() > deadline:
                    raise SupervisorError(self._not_up(timeout))
                on_tick()
                time.sleep(TICK_SECONDS)
        except SupervisorError as error:
            self.state, self.message = "failed", error.message
            raise
        finally:
            if self.state != "failed":
                self.message = f"stopped by {self.stop_reason}" if self.stop_reason else None
            self.stop(on_events)

    # -- one round --------------------------------------------------------------------------------------------
    def tick(self) -> list[str]:
        """One round: notice exits (restart or give up), start what is due, probe health. Returns what happened,
        one message each."""
        events: list[str] = []
        now = time.monotonic()
        for part in self.parts:
            if part.process is not None and part.process.poll() is not None:
                events.append(self._crashed(part, now))
        for part in self.parts:
            if part.process is None and part.state in ("waiting", "restarting") and now >= part.due:
                if all(self.part(name).state == "healthy" for name in part.spec.after):
                    self._start(part)
                    events.append(f"{part.spec.name}: starting (pid {part.pid})")
            elif part.running:
                events.extend(self._probe(part, now))
        self._write()
        return events

    def _start(self, part: Part) -> None:
        spec = part.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with spec.log.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"--- {stamp} {spec.name} starts: {' '.join(spec.command)}\n".encode())
            log.flush()
            parent = os.getpid()
            _prctl()  # looked up here, not in the child
            part.process = subprocess.Popen(
                spec.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"},
                # A group of its own: Ctrl-C in the terminal reaches only this process, which stops the parts in
                # order, and a part's own children are stopped with it.
                start_new_session=True,
                preexec_fn=lambda: _tie_to(parent),
            )
        part.started, part.started_at = time.monotonic(), time.time()
        part.state, part.probed = "starting", 0.0

    def _probe(self, part: Part, now: float) -> list[str]:
        spec = part.spec
        if spec.health_url is None:
            healthy = True
        elif part.state == "healthy" and now - part.probed < PROBE_SECONDS:
            return []
        else:
            part.probed = now
            healthy = answers(spec.health_url, timeout=1.0 if part.state == "starting" else 2.0)
        if healthy and part.state != "healthy":
            took = f" after {_duration(now - part.started)}" if part.state == "starting" else ""
            part.state = "healthy"
            where = f" on port {spec.port}" if spec.port else ""
            return [f"{spec.name}: healthy{where} (pid {part.pid}){took}"]
        if not healthy and part.state == "healthy":
            part.state = "unhealthy"
            return [f"{spec.name}: no answer from {spec.health_url} (pid {part.pid} still runs)"]
        return []

    def _crashed(self, part: Part, now: float) -> str:
        spec, code = part.spec, part.process.returncode
        lived = now - part.started
        _kill_group(part.process.pid)  # what the part left behind in its group goes with it
        part.process = None
        part.quick_crashes = part.quick_crashes + 1 if lived < self.quick_seconds else 1
        tail = log_tail(spec.log)
        what = f"{spec.name} {_exit_reason(code)} after {_duration(lived)}"
        if part.quick_crashes >= self.restart_limit:
            part.state = "failed"
            raise SupervisorError(
                f"{what}: giving up, it crashed {part.quick_crashes} times in a row, each within "
                f"{self.quick_seconds:.0f} s of starting. Last lines of {spec.log}:\n{tail}"
            )
        part.restarts += 1
        backoff = min(2.0 ** (part.quick_crashes - 1), 16.0)
        part.state, part.due = "restarting", now + backoff
        return f"{what}; restarting it in {backoff:.0f} s (restart {part.restarts}). Last lines of {spec.log}:\n{tail}"

    def _not_up(self, timeout: float) -> str:
        late = [part for part in self.parts if part.state != "healthy"]
        lines = [f"not up after {timeout:.0f} s (--timeout):"]
        for part in late:
            spec = part.spec
            if part.state == "waiting":
                lines.append(f"  {spec.name}: not started, waiting for {', '.join(spec.after)}")
                continue
            check = f"no answer from {spec.health_url}" if spec.health_url else "not running"
            lines.append(
                f"  {spec.name} ({part.state}, {check}); last lines of {spec.log}:\n{log_tail(spec.log)}"
            )
        return "\n".join(lines)

    # -- stopping ---------------------------------------------------------------------------------------------
    def stop(self, on_events: Callable[[list[str]], None] = lambda events: None) -> None:
        """Stop every part, stage by stage (SIGTERM to its group, SIGKILL after its stop_seconds); nothing of a
        part's group is left running. ``on_events`` hears of the stop's start and of each part stopped."""
        if self.state != "failed":
            self.state = "stopping"
        self._write()
        stages = sorted({part.spec.stop_stage for part in self.parts})
        announce = any(part.running for part in self.parts)
        for stage in stages:
            group = [part for part in self.parts if part.spec.stop_stage == stage]
            for part in group:
                if part.running:
                    part.state = "stopping"
                    _signal_group(part.process.pid, signal.SIGTERM)
            self._write()
            if announce:  # once, with the first stage's parts already stopping
                announce = False
                why = self.stop_reason or ("giving up" if self.state == "failed" else None)
                first = ", ".join(part.spec.name for part in group)
                order = f"{first} first, then the rest" if len(stages) > 1 else "all at once"
                on_events([f"stopping{f' ({why})' if why else ''}: {order}"])
            for part in group:
                on_events(self._reap(part))
        if self.state != "failed":
            self.state = "stopped"
        self._write()

    def _reap(self, part: Part) -> list[str]:
        if part.process is None:
            part.state = "failed" if part.state == "failed" else "stopped"
            return []
        pid, began = part.process.pid, time.monotonic()
        deadline = began + part.spec.stop_seconds
        while part.process.poll() is None and not self.forced and time.monotonic() < deadline:
            time.sleep(0.1)
        code = part.process.poll()
        if code is None:
            _signal_group(pid, signal.SIGKILL)
            part.process.wait()
            waited = "stop asked again" if self.forced else f"{part.spec.stop_seconds:.0f} s"
            how = f"killed: still running after SIGTERM ({waited})"
        else:
            how = "stopped" if code in (0, -signal.SIGTERM) else _exit_reason(code)
        _kill_group(pid)
        part.process, part.state = None, "stopped"
        return [f"{part.spec.name}: {how} ({_duration(time.monotonic() - began)})"]

    def _write(self) -> None:
        text = json.dumps(self.snapshot(), indent=2)
        if text != self._written:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_file, text)
            self._written = text


def _tie_to(parent: int) -> None:
    """In a part, before it runs its command: SIGTERM when the supervisor dies, and none of this when it
    already has (the supervisor died between the fork and here)."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def _kill_group(pgid: int) -> None:
    """SIGKILL to whatever is left of a part's process group once its leader has exited."""
    _signal_group(pgid, signal.SIGKILL)


# -- the group's lock and state file, for the commands that look at a running group --------------------------------
class GroupLock:
    """An exclusive lock held by the process that supervises the group, for as long as it lives (the kernel drops
    it when that process dies, however it dies): a second group is refused while it is held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def group_running(lock_path: Path) -> bool:
    """Whether a supervisor holds the lock now."""
    probe = GroupLock(lock_path)
    if probe.acquire():
        probe.release()
        return False
    return True


def read_state(state_file: Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def uptime(started_at: float | None) -> str:
    return _duration(time.time() - started_at) if started_at else "-"


# -- the background supervisor ------------------------------------------------------------------------------------
def main() -> int:
    """Run the group the plan on stdin describes, holding the lock inherited as the plan's ``lock_fd``; log lines
    go to stdout (the caller points it at a log file)."""
    plan = json.loads(sys.stdin.read())
    sys.stdin.close()
    lock_fd = plan[
        "lock_fd"
    ]  # held: inherited from `finetune up --detach`, kept open for this process's life
    supervisor = Supervisor(
        [PartSpec.from_plan(spec) for spec in plan["parts"]],
        Path(plan["state_file"]),
        restart_limit=plan["restart_limit"],
        info=plan["info"],
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, frame: supervisor.request_stop(signal.Signals(number).name))

    def say(events: list[str]) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for event in events:
            print(f"{stamp} {event}", flush=True)

    try:
        supervisor.run(plan["timeout"], on_events=say, on_ready=lambda: say(["every part is up"]))
    except SupervisorError as error:
        say([f"error: {error.message}"])
        return 1
    finally:
        os.close(lock_fd)
    say([supervisor.message or "stopped"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
