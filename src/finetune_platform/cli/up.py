"""`finetune up`, `finetune status`, `finetune down`: the whole local platform (API, workers, inference server, web
UI, MLflow UI) as one supervised process group, with its admin account, from one command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from finetune_platform.cli.common import JsonFlag, audit, fail, open_database, settings
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.supervisor import (
    GroupLock,
    PartSpec,
    Supervisor,
    SupervisorError,
    answers,
    choose_ports,
    group_running,
    log_tail,
    read_state,
    uptime,
)

DEFAULT_PORTS = "8700-8799"
WORKER_STOP_SECONDS = 120.0  # a running job checkpoints at its next step before its worker exits
LOCAL_ACCOUNT = "local"  # the command line's own account (db.accounts.LOCAL_USER): it never logs in


@dataclass(frozen=True)
class Home:
    """Where a group keeps its lock, state and logs: under FINETUNE_HOME."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "up.lock"

    @property
    def state(self) -> Path:
        return self.root / "up.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


@dataclass(frozen=True)
class Login:
    username: str
    password: str | None  # only when this start created the account

    def describe(self) -> str:
        reset = f"finetune users set-password {self.username}"
        if self.password is not None:
            return (
                f"{self.username} / {self.password}   (shown this once: keep it; to change it later: {reset})"
            )
        return f"{self.username}   (password as set at its first start; forgotten? {reset})"


def up(
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, max=32, help="Training workers to run (each runs one job at a time)."
        ),
    ] = 1,
    with_ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Run the web UI (Streamlit).")] = True,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            metavar="URL",
            help="Queue jobs through this Redis (redis://host:6379/0) instead of the filesystem queue under "
            "FINETUNE_HOME (REDIS_URL).",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            metavar="URL",
            help="Keep accounts and jobs in this database (postgresql+psycopg://user@host/db) instead of SQLite "
            "under FINETUNE_HOME (DATABASE_URL).",
        ),
    ] = None,
    ports: Annotated[
        str,
        typer.Option(
            "--ports",
            help="Ports to choose from, in order: START-END or a comma-separated list. Each part takes the next "
            "free one (API, inference, UI, MLflow UI, then one per worker for its metrics); a taken port is "
            "skipped.",
        ),
    ] = DEFAULT_PORTS,
    host: Annotated[
        str, typer.Option("--host", help="Address every part listens on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    admin_user: Annotated[
        str, typer.Option("--admin-user", help="The admin account created on the first start.")
    ] = "admin",
    admin_password: Annotated[
        str | None,
        typer.Option(
            "--admin-password",
            envvar="FINETUNE_ADMIN_PASSWORD",
            help="Password of the admin account when this start creates it (default: a generated one, shown "
            "once). An existing account keeps its password. Arguments show in ps: prefer the variable.",
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Run in the background once every part is up; `finetune status` shows it, `finetune down` "
            "stops it.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=5.0,
            help="Seconds the parts have to answer their health checks before up gives up.",
        ),
    ] = 300.0,
    restart_limit: Annotated[
        int,
        typer.Option(
            "--restart-limit",
            min=1,
            max=100,
            help="Give up (and stop everything) when a part crashes this many times in a row, each within 30 s "
            "of its start; slower crashes are restarted without end.",
        ),
    ] = 5,
    stop_timeout: Annotated[
        float,
        typer.Option(
            "--stop-timeout",
            min=1.0,
            help="Seconds a worker has, after SIGTERM, to checkpoint its job and hand it back before it is killed.",
        ),
    ] = WORKER_STOP_SECONDS,
) -> None:
    """Start the whole platform here: the REST API, training workers, the inference server, the web UI and the
    MLflow UI, on free ports, supervised as one group (a crashed part is restarted). The first start creates the
    admin account and shows its password once. Ctrl-C or SIGTERM stops everything: the workers first (a running job
    checkpoints and goes back to the queue), then the rest. Logs: FINETUNE_HOME/logs/<part>.log."""
    config = _with_backends(settings(), database, redis)
    home = Home(config.FINETUNE_HOME.resolve())
    lock = GroupLock(home.lock)
    try:
        candidates, described = _port_candidates(ports)
        config.check_secrets()  # every part would refuse to start on a weak secret: say so once, now
        if redis is not None:
            _check_redis(redis)
        if not lock.acquire():
            raise _already_running(home)
        names = [
            "api",
            "inference",
            *(["ui"] if with_ui else []),
            *(["mlflow"] if _mlflow_part(config) else []),
        ]
        worker_ports = [f"worker-{n}" for n in range(1, workers + 1)] if config.METRICS_ENABLED else []
        chosen = choose_ports(host, candidates, names + worker_ports, described)
        login = _admin_account(config, admin_user, admin_password)
    except PlatformError as error:
        lock.release()
        raise fail(error) from None
    parts = plan_parts(config, home, host=host, ports=chosen, workers=workers, stop_timeout=stop_timeout)
    info = {"detached": detach, "host": host, "urls": _urls(config, host, chosen), "home": str(home.root)}
    typer.echo(f"starting {', '.join(spec.name for spec in parts)} (logs in {home.logs})")
    launch = Launch(home, lock, parts, info, timeout, restart_limit, login, config)
    (_run_detached if detach else _run_here)(launch)


def _with_backends(config, database: str | None, redis: str | None):
    """The settings with --database and --redis in place of DATABASE_URL and REDIS_URL."""
    update: dict[str, Any] = {}
    if database is not None:
        # lazy: sqlalchemy, kept off the start of every finetune command
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(database)
        except ArgumentError:
            raise fail(
                ConfigError(
                    f"--database {database!r} is not a database URL: give postgresql+psycopg://USER@HOST/DB "
                    "or sqlite:////ABSOLUTE/PATH"
                )
            ) from None
        update["DATABASE_URL"] = database
    if redis is not None:
        if not redis.startswith(("redis://", "rediss://")):
            raise fail(ConfigError(f"--redis {_safe(redis)!r} is not a Redis URL: give redis://HOST:6379/0"))
        update["REDIS_URL"] = redis
    return config.model_copy(update=update) if update else config


def _port_candidates(option: str) -> tuple[list[int], str]:
    """The ports --ports names, in order, and how to name them in an error."""
    try:
        if "-" in option:
            start, end = (int(part) for part in option.split("-", 1))
            candidates = list(range(start, end + 1))
        else:
            candidates = [int(part) for part in option.split(",") if part.strip()]
    except ValueError:
        candidates = []
    if not candidates or any(not 1 <= port <= 65535 for port in candidates):
        raise ConfigError(
            f"--ports {option!r}: give START-END (e.g. {DEFAULT_PORTS}) or a comma-separated list of ports 1-65535"
        )
    return candidates, f"--ports {option}"


def _check_redis(url: str) -> None:
    # lazy: the Redis client, only for --redis
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).ping()
    except (redis.RedisError, OSError, ValueError) as error:
        raise ConfigError(f"--redis {_safe(url)}: no answer ({error.__class__.__name__}: {error})") from None


def _safe(url: str) -> str:
    """A URL without its password, for messages and tables."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def _already_running(home: Home) -> PlatformError:
    state = read_state(home.state) or {}
    since = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(state["started_at"]))
        if state.get("started_at")
        else "?"
    )
    return PlatformError(
        f"finetune up already runs for {home.root} (pid {state.get('pid', '?')}, since {since}): "
        "`finetune status` shows it, `finetune down` stops it",
        ErrorCode.CONFLICT,
    )


def _mlflow_part(config) -> bool:
    """An MLflow UI of our own for an embedded store; a tracking server has its own UI."""
    return config.MLFLOW_ENABLED and not config.mlflow_tracking_uri.startswith(("http://", "https://"))


def _admin_account(config, username: str, password: str | None) -> Login:
    """The admin account: created on the first start (with ``password`` or a generated one), else kept as it is."""
    # lazy: sqlalchemy and the account services, kept off the start of every finetune command
    from finetune_platform.security import password_problem, signing_secret
    from finetune_platform.services.users import create_user, get_user

    if username.lower() == LOCAL_ACCOUNT:
        raise ConfigError(
            f"--admin-user {username!r} is the command line's own account, which cannot log in: choose another name"
        )
    if (
        config.ENVIRONMENT == "local"
    ):  # the local JWT key, written before the API and the inference server read it
        signing_secret(config)
    with open_database(config) as session:
        try:
            existing = get_user(session, username)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.role != "admin":
                raise ConfigError(
                    f"the account {existing.username!r} exists and is not an admin: choose another --admin-user, or "
                    f"make it one (PATCH /users/{existing.id} with role admin)"
                )
            if password is not None:
                typer.secho(
                    f"warning: the admin {existing.username!r} exists: its password is kept, --admin-password "
                    f"is ignored (to change it: finetune users set-password {existing.username})",
                    err=True,
                )
            return Login(existing.username, None)
        if password is None:
            password = secrets.token_urlsafe(15)
            while password_problem(password, username):  # a random 20 characters passes, but be sure
                password = secrets.token_urlsafe(15)
        user = create_user(session, username, password, "admin")
        audit(session, "user.create", target=f"user:{user.id}", role=user.role, by="finetune up")
    return Login(user.username, password)


def plan_parts(
    config, home: Home, *, host: str, ports: dict[str, int], workers: int, stop_timeout: float
) -> list[PartSpec]:
    """The processes of the platform: what each runs, its port, its health check and its stop stage (the workers
    first, so that a running job checkpoints; MLflow's UI last)."""
    local = _probe_host(host)
    shared = {"FINETUNE_HOME": str(home.root)}
    shared.update(
        {name: getattr(config, name) for name in ("DATABASE_URL", "REDIS_URL") if getattr(config, name)}
    )
    # A fresh SQLite store is created by whoever opens it first, and two creators at once collide inside MLflow's
    # migrations: on the first start, MLflow's UI creates it before anything else starts.
    store = config.mlflow_tracking_uri
    fresh_store = "mlflow" in ports and not Path(store.removeprefix("sqlite:///")).exists()
    after = ("mlflow",) if fresh_store else ()

    def url(name: str, path: str = "") -> str:
        return f"http://{local}:{ports[name]}{path}"

    def platform(
        name: str, *args: str, health: str | None, env: dict[str, str] = shared, **spec: Any
    ) -> PartSpec:
        command = (sys.executable, "-m", "finetune_platform", *args)
        return PartSpec(name, command, home.logs / f"{name}.log", env=env, port=ports.get(name), health_url=health,
                        after=after, **spec)  # fmt: skip

    def serving(name: str, command: str) -> tuple[str, ...]:
        return (command, "--host", host, "--port", str(ports[name]))

    parts = []
    if "mlflow" in ports:
        command = (sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(ports["mlflow"]),
                   "--workers", "1", "--backend-store-uri", store)  # fmt: skip
        if store.startswith("sqlite:///"):
            command += ("--default-artifact-root", config.mlflow_artifact_root)
        env = {**shared, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as deployed: no GenAI job runners
        parts.append(PartSpec("mlflow", command, home.logs / "mlflow.log", env=env, port=ports["mlflow"],
                              health_url=url("mlflow", "/health"), stop_stage=2))  # fmt: skip
    api_env = {**shared, "MLFLOW_UI_URL": url("mlflow")} if "mlflow" in ports else shared
    parts.append(platform("api", *serving("api", "api"), health=url("api", "/health"), env=api_env))
    for n in range(1, workers + 1):
        name = f"worker-{n}"
        metrics = ("--metrics-port", str(ports[name])) if name in ports else ()
        health = f"http://127.0.0.1:{ports[name]}/metrics" if name in ports else None  # its metrics: loopback
        parts.append(platform(name, "worker", "--name", f"up-{name}", *metrics, health=health, stop_stage=0,
                              stop_seconds=stop_timeout))  # fmt: skip
    parts.append(platform("inference", *serving("inference", "serve"), health=url("inference", "/health")))
    if "ui" in ports:
        ui_env = {**shared, "FINETUNE_SERVE_URL": url("inference")}
        parts.append(platform("ui", *serving("ui", "ui"), "--api-url", url("api"),
                              health=url("ui", "/_stcore/health"), env=ui_env))  # fmt: skip
    return parts


def _probe_host(host: str) -> str:
    """The address this machine reaches a part on."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _urls(config, host: str, ports: dict[str, int]) -> dict[str, str | None]:
    local = _probe_host(host)

    def at(name: str, path: str = "") -> str | None:
        return f"http://{local}:{ports[name]}{path}" if name in ports else None

    mlflow = at("mlflow")
    if mlflow is None and config.MLFLOW_ENABLED:
        mlflow = config.MLFLOW_UI_URL or _safe(config.mlflow_tracking_uri)
    return {
        "ui": at("ui"),
        "api": at("api"),
        "api_docs": at("api", "/docs"),
        "inference": at("inference"),
        "mlflow": mlflow,
    }


def _table(info: dict[str, Any], login: Login | None, config, workers: int) -> str:
    urls = info["urls"]
    queue = (
        f"Redis {_safe(config.REDIS_URL)}"
        if config.REDIS_URL
        else f"filesystem queue under {config.queue_dir.resolve()}"
    )
    rows = [
        ("web UI", urls["ui"] or "off (--no-ui)"),
        ("API docs", urls["api_docs"]),
        (
            "inference",
            f"{urls['inference']}  (the Production model, else the newest registered one; none yet: POST "
            "/predict answers 404 until a job registers one)",
        ),
        ("MLflow UI", urls["mlflow"] or "off (MLFLOW_ENABLED=false)"),
        ("login", login.describe() if login else "-"),
        ("database", _safe(config.database_url)),
        ("queue", f"{queue}, {workers} worker{'s' if workers != 1 else ''}"),
        ("logs", f"{Path(info['home']) / 'logs'}/<part>.log"),
    ]
    return "\n".join(f"  {name:<10} {value}" for name, value in rows)


# -- in the foreground --------------------------------------------------------------------------------------------
class Board:
    """The parts' status lines. On a terminal they are redrawn in place under whatever is printed; elsewhere (a log
    file, a pipe) each change of state is printed as a line of its own (the events already say it)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.live = sys.stdout.isatty()
        self.drawn, self.at = 0, 0.0

    def say(self, lines: list[str]) -> None:
        if not lines:
            return
        self._erase()
        for line in lines:
            typer.echo(line)
        self._draw()

    def tick(self) -> None:
        if self.live and time.monotonic() - self.at >= 1.0:
            self._erase()
            self._draw()

    def _lines(self) -> list[str]:
        lines = []
        for part in self.supervisor.parts:
            port = f":{part.spec.port}" if part.spec.port else "-"
            lines.append(
                f"  {part.spec.name:<10} {part.state:<10} pid {part.pid or '-':<8} {port:<7} "
                f"restarts {part.restarts:<3} up {uptime(part.started_at) if part.process else '-'}"
            )
        return lines

    def _draw(self) -> None:
        if not self.live:
            return
        lines = self._lines()
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn, self.at = len(lines), time.monotonic()

    def _erase(self) -> None:
        if self.live and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")  # to the board's first line, then clear below
            self.drawn = 0


@dataclass(frozen=True)
class Launch:
    """A group ready to run, here or in the background: its parts and where it keeps its state."""

    home: Home
    lock: GroupLock  # held
    parts: list[PartSpec]
    info: dict[str, Any]
    timeout: float
    restart_limit: int
    login: Login
    config: Any

    def table(self) -> str:
        workers = sum(1 for spec in self.parts if spec.name.startswith("worker-"))
        return _table(self.info, self.login, self.config, workers)


def _run_here(launch: Launch) -> None:
    supervisor = Supervisor(
        launch.parts, launch.home.state, restart_limit=launch.restart_limit, info=launch.info
    )
    board = Board(supervisor)

    def stop(number: int, frame: Any) -> None:
        if supervisor.stop_reason is not None:  # asked again while stopping: no more waiting
            supervisor.force_stop()
        supervisor.request_stop(signal.Signals(number).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    def ready() -> None:
        up = f"finetune-platform is up (pid {os.getpid()}); Ctrl-C stops it"
        board.say(["", up, "", launch.table(), ""])

    try:
        supervisor.run(launch.timeout, on_events=board.say, on_ready=ready, on_tick=board.tick)
    except SupervisorError as error:
        raise fail(error) from None
    finally:
        launch.lock.release()
    typer.echo(supervisor.message or "stopped")


# -- in the background --------------------------------------------------------------------------------------------
def _run_detached(launch: Launch) -> None:
    """Start the supervisor as a background process holding our lock, follow it until every part is up (or it
    gave up), then print the table and return."""
    home = launch.home
    home.state.unlink(missing_ok=True)
    home.logs.mkdir(parents=True, exist_ok=True)
    plan = {"parts": [spec.as_plan() for spec in launch.parts], "state_file": str(home.state),
            "lock_fd": launch.lock.fd, "restart_limit": launch.restart_limit, "timeout": launch.timeout,
            "info": launch.info}  # fmt: skip
    log_path = home.logs / "up.log"
    with log_path.open("ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "finetune_platform.supervisor"], stdin=subprocess.PIPE,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 pass_fds=(launch.lock.fd,))  # fmt: skip
    child.stdin.write(json.dumps(plan).encode("utf-8"))  # on a pipe: a database password is never on disk
    child.stdin.close()
    launch.lock.release()  # the supervisor holds it now
    shown: dict[str, str] = {}
    deadline = time.monotonic() + launch.timeout + WORKER_STOP_SECONDS + 60
    while True:
        state = read_state(home.state)
        if state is not None and state.get("pid") == child.pid:
            for part in state["parts"]:
                if shown.get(part["name"]) != part["state"]:
                    shown[part["name"]] = part["state"]
                    typer.echo(f"  {part['name']}: {part['state']}")
            if state["state"] == "running":
                break
            if state["state"] in ("failed", "stopped") or child.poll() is not None:
                child.wait()  # until it has stopped what it started
                raise fail(SupervisorError(state.get("message") or f"stopped; see {log_path}"))
        elif child.poll() is not None:
            raise fail(
                SupervisorError(f"the supervisor exited with code {child.returncode}:\n{log_tail(log_path)}")
            )
        if time.monotonic() > deadline:
            raise fail(SupervisorError(f"no answer from the supervisor (pid {child.pid}); see {log_path}"))
        time.sleep(0.5)
    typer.echo(f"\nfinetune-platform is up in the background (pid {child.pid}): `finetune status` shows it, "
               "`finetune down` stops it\n")  # fmt: skip
    typer.echo(launch.table())


# -- looking at a running group -----------------------------------------------------------------------------------
def status(as_json: JsonFlag = False) -> None:
    """What `finetune up` runs now: each part's pid, port, health, restarts and uptime, and the addresses.
    Exit 1 when it does not run."""
    home = Home(settings().FINETUNE_HOME.resolve())
    state = read_state(home.state)
    if not group_running(home.lock) or state is None:
        last = f" ({_last_run(state)})" if state else ""
        typer.echo(f"finetune up is not running for {home.root}{last}", err=as_json)
        raise typer.Exit(code=1)
    rows = [
        {**part, "health": _health(part), "uptime": uptime(part["started_at"]) if part["pid"] else "-"}
        for part in state["parts"]
    ]
    if as_json:
        typer.echo(json.dumps({**state, "parts": rows}, indent=2))
        return
    where = "in the background" if state.get("detached") else "in a terminal"
    typer.echo(
        f"finetune up: {state['state']}, {where} (pid {state['pid']}, up {uptime(state['started_at'])})"
    )
    typer.echo(f"  {'part':<10} {'pid':<8} {'port':<6} {'health':<12} {'restarts':<9} uptime")
    for row in rows:
        typer.echo(
            f"  {row['name']:<10} {row['pid'] or '-':<8} {row['port'] or '-':<6} {row['health']:<12} "
            f"{row['restarts']:<9} {row['uptime']}"
        )
    urls = state.get("urls", {})
    for label, key in (
        ("web UI", "ui"),
        ("API docs", "api_docs"),
        ("inference", "inference"),
        ("MLflow UI", "mlflow"),
    ):
        if urls.get(key):
            typer.echo(f"  {label:<10} {urls[key]}")
    typer.echo(f"  {'logs':<10} {home.logs}/<part>.log")


def _last_run(state: dict[str, Any]) -> str:
    if state["state"] in (
        "starting",
        "running",
        "stopping",
    ):  # its supervisor died without stopping the parts
        return f"its supervisor, pid {state['pid']}, died; its parts were sent SIGTERM as it did"
    return "last run: " + (state.get("message") or state["state"]).splitlines()[0]


def _health(part: dict[str, Any]) -> str:
    """A part's health now: its check asked again, unless it is not running."""
    if (
        part["state"] in ("waiting", "starting", "restarting", "stopping", "stopped", "failed")
        or not part["pid"]
    ):
        return part["state"]
    if part["health_url"] is None:
        return "running"
    return "ok" if answers(part["health_url"], timeout=1.0) else "no answer"


def down(
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds to wait for everything to stop.")
    ] = WORKER_STOP_SECONDS + 60,
) -> None:
    """Stop `finetune up` (in the background, or in another terminal) as Ctrl-C does: the workers first (a running
    job checkpoints and goes back to the queue), then the rest."""
    home = Home(settings().FINETUNE_HOME.resolve())
    state = read_state(home.state)
    if not group_running(home.lock):
        raise fail(NotFoundError(f"finetune up is not running for {home.root}: nothing to stop"))
    if state is None or not state.get("pid"):
        raise fail(
            PlatformError(f"finetune up runs but wrote no state to {home.state}: stop it where it runs")
        )
    pid = state["pid"]
    typer.echo(f"stopping finetune up (pid {pid}): the workers first, then the rest")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_running(home.lock):
        if time.monotonic() > deadline:
            raise fail(PlatformError(f"finetune up (pid {pid}) is still stopping after {timeout:.0f} s"))
        time.sleep(0.3)
    final = read_state(home.state) or {"parts": []}
    typer.echo(f"stopped: {', '.join(part['name'] for part in final['parts'])}")
