"""The supervisor behind `finetune up`, with real processes (tests/integration/supervised_part.py: a small HTTP
server that records the signals it gets): start order, health, restart of a killed part with its count and log
lines, giving up after quick crashes, a part that never answers, stopping in stages with SIGKILL for what ignores
SIGTERM (its group included), parts that die with a killed supervisor, and port choice."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from finetune_platform.supervisor import (
    GroupLock,
    PartSpec,
    Supervisor,
    SupervisorError,
    choose_ports,
    group_running,
    read_state,
)
from tests.conftest import ROOT, free_port
from tests.integration.queue_harness import wait_for

PART = str(Path(__file__).with_name("supervised_part.py"))


# -- what is left running, looked up in /proc ----------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def processes_in_groups(groups: set[int]) -> list[int]:
    """Live processes whose process group is one of ``groups``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) in groups:
                found.append(int(entry.name))
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


# -- parts -----------------------------------------------------------------------------------------------------------
def part(tmp_path: Path, name: str, *extra: str, port: int | None = None, **spec) -> PartSpec:
    port = port or free_port()
    command = (sys.executable, PART, "--name", name, "--port", str(port), "--record", str(tmp_path / "record"),
               *extra)  # fmt: skip
    return PartSpec(name, command, tmp_path / "logs" / f"{name}.log", port=port,
                    health_url=f"http://127.0.0.1:{port}/health", **spec)  # fmt: skip


def records(tmp_path: Path) -> list[str]:
    path = tmp_path / "record"
    return path.read_text().splitlines() if path.exists() else []


def tick_until(supervisor: Supervisor, condition: Callable[[], bool], timeout: float = 60) -> list[str]:
    events: list[str] = []

    def done() -> bool:
        events.extend(supervisor.tick())
        return condition()

    wait_for(done, timeout, "the supervisor", interval=0.1)
    return events


@pytest.fixture
def supervisors():
    """Every supervisor a test makes is stopped at its end, whatever happened."""
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        supervisor.stop()


def test_parts_wait_for_their_dependencies_then_a_killed_part_is_restarted_with_its_count(
    tmp_path, supervisors
):
    store, app = part(tmp_path, "store"), part(tmp_path, "app", after=("store",))
    supervisor = Supervisor([store, app], tmp_path / "up.json")
    supervisors.append(supervisor)
    events = tick_until(supervisor, supervisor.all_healthy)
    starts = [line.split(":")[0] for line in events if ": starting (pid" in line]
    assert starts == ["store", "app"]
    assert events.index(next(e for e in events if e.startswith("store: healthy"))) < events.index(
        next(e for e in events if e.startswith("app: starting"))
    )  # app started only once store answered
    first = supervisor.part("app").pid

    os.kill(first, signal.SIGKILL)
    events = tick_until(supervisor, lambda: supervisor.part("app").state == "restarting")
    (crash,) = [line for line in events if line.startswith("app was killed by SIGKILL")]
    assert "restarting it in 1 s (restart 1). Last lines of" in crash
    assert f"app serving on port {app.port}" in crash  # the part's own last log line
    tick_until(supervisor, supervisor.all_healthy)
    again = supervisor.part("app")
    assert (again.restarts, again.pid != first, port_open(app.port)) == (1, True, True)
    state = read_state(tmp_path / "up.json")
    assert [(p["name"], p["restarts"], p["pid"]) for p in state["parts"]] == [
        ("store", 0, supervisor.part("store").pid), ("app", 1, again.pid)
    ]  # fmt: skip

    groups = {supervisor.part(name).pid for name in ("store", "app")}
    supervisor.stop()
    assert not port_open(store.port) and not port_open(app.port)
    assert processes_in_groups(groups) == []
    assert read_state(tmp_path / "up.json")["state"] == "stopped"


def test_a_part_crashing_quickly_again_and_again_is_given_up_and_everything_stops(tmp_path):
    good = part(tmp_path, "good")
    crash = PartSpec("bad", (sys.executable, "-c", "print('cannot open the database'); raise SystemExit(3)"),
                     tmp_path / "logs" / "bad.log")  # fmt: skip
    supervisor = Supervisor([good, crash], tmp_path / "up.json", restart_limit=3)
    heard: list[str] = []
    with pytest.raises(SupervisorError) as failed:
        supervisor.run(60, on_events=heard.extend)
    message = failed.value.message
    assert re.match(
        r"bad exited with code 3 after \d+s: giving up, it crashed 3 times in a row, each within 30 s of starting\. "
        f"Last lines of {re.escape(str(tmp_path / 'logs' / 'bad.log'))}:\n",
        message,
    ), message
    assert (
        message.splitlines().count("    cannot open the database") == 3
    )  # one line per start, all in the tail
    restarts = [
        re.sub(r"after \d+s", "after Ns", line.split(" (")[0]) for line in heard if "(restart" in line
    ]
    assert restarts == [
        "bad exited with code 3 after Ns; restarting it in 1 s", "bad exited with code 3 after Ns; restarting it in 2 s"
    ]  # fmt: skip
    assert "stopping (giving up): all at once" in heard
    assert not port_open(good.port)
    state = read_state(tmp_path / "up.json")
    assert (state["state"], state["message"]) == ("failed", message)
    assert {p["name"]: p["state"] for p in state["parts"]} == {"good": "stopped", "bad": "failed"}


def test_a_part_that_never_answers_its_health_check_fails_the_start_naming_it(tmp_path):
    silent = PartSpec(
        "slow", (sys.executable, "-c", "import time; print('still loading the model', flush=True); time.sleep(600)"),
        tmp_path / "logs" / "slow.log", health_url=f"http://127.0.0.1:{free_port()}/health",
    )  # fmt: skip
    supervisor = Supervisor([silent], tmp_path / "up.json")
    with pytest.raises(SupervisorError) as failed:
        supervisor.run(3)
    lines = failed.value.message.splitlines()
    assert lines[0] == "not up after 3 s (--timeout):"
    assert lines[1] == (
        f"  slow (starting, no answer from {silent.health_url}); last lines of {tmp_path / 'logs' / 'slow.log'}:"
    )
    assert lines[-1] == "    still loading the model"
    assert processes_in_groups({supervisor.part("slow").pid or -1}) == []
    assert supervisor.part("slow").state == "stopped"


def test_stop_goes_in_stages_and_kills_a_part_that_ignores_sigterm_with_its_group(tmp_path):
    worker = part(tmp_path, "worker", "--term-delay", "1.5", stop_stage=0)
    api = part(tmp_path, "api")
    stubborn = part(tmp_path, "stubborn", "--ignore-term", "--grandchild", stop_seconds=1.0)
    supervisor = Supervisor([worker, api, stubborn], tmp_path / "up.json")
    tick_until(supervisor, supervisor.all_healthy)
    grandchild = int(Path(f"{tmp_path / 'record'}.child").read_text())
    groups = {p.pid for p in supervisor.parts}
    assert alive(grandchild)

    heard: list[str] = []
    supervisor.stop(heard.extend)
    # the worker had finished (after its 1.5 s) before the next stage was even asked to stop
    assert records(tmp_path)[:2] == ["worker TERM", "worker exit"]
    assert sorted(records(tmp_path)[2:]) == ["api TERM", "api exit", "stubborn TERM"]
    assert heard[0] == "stopping: worker first, then the rest"
    assert next(line for line in heard if line.startswith("stubborn:")).startswith(
        "stubborn: killed: still running after SIGTERM (1 s)"
    )
    assert not alive(grandchild)  # it was in the stubborn part's group
    assert processes_in_groups(groups) == []
    assert not any(port_open(p.port) for p in (worker, api, stubborn))


def test_asked_again_while_stopping_it_waits_no_longer(tmp_path):
    """A second Ctrl-C: a part still inside its stop time (a worker saving a checkpoint) is killed at once."""
    stubborn = part(tmp_path, "stubborn", "--ignore-term", stop_seconds=600.0)
    supervisor = Supervisor([stubborn], tmp_path / "up.json")
    tick_until(supervisor, supervisor.all_healthy)
    supervisor.request_stop("SIGINT")
    supervisor.force_stop()
    heard: list[str] = []
    supervisor.stop(heard.extend)
    assert heard[0] == "stopping (SIGINT): all at once"
    assert heard[1].startswith("stubborn: killed: still running after SIGTERM (stop asked again)")
    assert records(tmp_path) == ["stubborn TERM"] and not port_open(stubborn.port)


def test_the_parts_get_sigterm_when_the_supervisor_itself_is_killed(tmp_path):
    """`python -m finetune_platform.supervisor` (what `finetune up --detach` runs) SIGKILLed: the kernel sends each
    part SIGTERM (PR_SET_PDEATHSIG); they stop and the group's lock is free again."""
    lock = GroupLock(tmp_path / "up.lock")
    assert lock.acquire()
    specs = [part(tmp_path, "api"), part(tmp_path, "worker", stop_stage=0)]
    plan = {"parts": [spec.as_plan() for spec in specs], "state_file": str(tmp_path / "up.json"),
            "lock_fd": lock.fd, "restart_limit": 5, "timeout": 60, "info": {"detached": True}}  # fmt: skip
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "finetune_platform.supervisor"], stdin=subprocess.PIPE,
        stdout=(tmp_path / "up.log").open("wb"), stderr=subprocess.STDOUT, pass_fds=(lock.fd,), cwd=ROOT,
    )  # fmt: skip
    supervisor.stdin.write(json.dumps(plan).encode())
    supervisor.stdin.close()
    lock.release()
    try:
        state = wait_for(lambda: (s := read_state(tmp_path / "up.json")) and s["state"] == "running" and s, 60,
                         "the group to run")  # fmt: skip
        assert group_running(tmp_path / "up.lock")
        pids = [p["pid"] for p in state["parts"]]
        supervisor.kill()
        supervisor.wait(timeout=10)
        wait_for(lambda: not any(alive(pid) for pid in pids), 20, "the parts to stop")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert sorted(records(tmp_path)) == ["api TERM", "api exit", "worker TERM", "worker exit"]
    assert not group_running(tmp_path / "up.lock")
    assert not any(port_open(spec.port) for spec in specs)


def test_ports_are_chosen_in_order_skipping_taken_ones_and_too_few_is_an_error():
    taken, second, third = free_port(), free_port(), free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        assert choose_ports("127.0.0.1", [taken, second, third], ["api", "ui"], "--ports x") == {
            "api": second,
            "ui": third,
        }
        with pytest.raises(SupervisorError) as exhausted:
            choose_ports("127.0.0.1", [taken, second], ["api", "ui"], f"--ports {taken},{second}")
    assert exhausted.value.message == (
        f"no free port left in --ports {taken},{second} for ui: 2 needed, 1 of its 2 taken on 127.0.0.1; give "
        "more with --ports START-END"
    )


def test_a_second_lock_on_the_group_is_refused_while_the_first_is_held(tmp_path):
    first, second = GroupLock(tmp_path / "up.lock"), GroupLock(tmp_path / "up.lock")
    assert first.acquire()
    assert (second.acquire(), group_running(tmp_path / "up.lock")) == (False, True)
    first.release()
    assert (group_running(tmp_path / "up.lock"), second.acquire()) == (False, True)
    second.release()
