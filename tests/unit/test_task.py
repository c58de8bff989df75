"""perditionpy.task with a loop that only records what it is asked: one alarm per
session however many waits it goes through, deadlines, pauses, the end."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from perditionpy.task import Task
from perditionpy.waits import Recv, Sleep, Steps


class RecordingLoop:
    def __init__(self) -> None:
        self.alarms: list[float] = []
        self.watching: tuple[socket.socket | None, int] = (None, 0)
        self.ends: list[tuple[socket.socket | None, int]] = []

    def watch_socket(self, task: Task, sock: socket.socket | None, events: int,
                     old: socket.socket | None) -> None:
        self.watching = (sock, events)

    def wake_at(self, task: Task, when: float) -> None:
        self.alarms.append(when)

    def offload(self, task: Task, wait: Any) -> None:
        raise AssertionError("nothing here blocks")

    def hand_over(self, task: Task, wait: Any) -> None:
        raise AssertionError("nothing here blocks")

    def ended(self, task: Task) -> None:
        self.ends.append((task.sock, task.events))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    near, far = socket.socketpair()
    near.setblocking(False)
    with near, far:
        yield near, far


def _reads(sock: socket.socket, timeouts: list[float], seen: list[object]) -> Steps[None]:
    for timeout in timeouts:
        try:
            seen.append((yield Recv(sock, 100, timeout)))
        except TimeoutError:
            seen.append("timeout")
            return


def test_later_deadlines_share_the_first_alarm(pair: tuple[socket.socket, socket.socket]
                                               ) -> None:
    near, far = pair
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    task = Task(_reads(near, [10.0, 20.0, 30.0], seen), near)
    task.resume(loop)
    assert len(loop.alarms) == 1 and task.deadline == loop.alarms[0]
    for line in (b"one", b"two"):
        far.sendall(line)
        task.ready(loop)
    assert seen == [b"one", b"two"]
    assert len(loop.alarms) == 1  # the third read's deadline is later: no new alarm
    first = loop.alarms[0]
    assert task.deadline is not None and task.deadline > first
    task.alarm(loop, first)  # rings early for this wait: set again for its deadline
    assert loop.alarms == [first, task.deadline] and seen == [b"one", b"two"]
    task.alarm(loop, loop.alarms[-1])
    assert seen == [b"one", b"two", "timeout"]
    assert task.done and loop.ends == [(near, 1)]  # its socket is left to the loop


def test_an_earlier_deadline_gets_an_alarm_of_its_own(
        pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    task = Task(_reads(near, [30.0, 1.0], seen), near)
    task.resume(loop)
    far.sendall(b"one")
    task.ready(loop)
    assert len(loop.alarms) == 2 and loop.alarms[1] < loop.alarms[0]
    task.alarm(loop, loop.alarms[0])  # the replaced one: nothing happens
    assert seen == [b"one"] and not task.done
    task.alarm(loop, loop.alarms[1])
    assert seen == [b"one", "timeout"]


def test_a_pause_ends_at_its_alarm() -> None:
    slept: list[float] = []

    def pause() -> Steps[None]:
        yield Sleep(3.0, slept.append)
        slept.append(-1.0)

    loop = RecordingLoop()
    near, far = socket.socketpair()
    with near, far:
        task = Task(pause(), near)
        task.resume(loop)
        assert len(loop.alarms) == 1 and not task.done
        task.alarm(loop, loop.alarms[0])
    assert slept == [-1.0] and task.done  # resumed by the loop, never slept in a thread


def test_a_blocking_socket_is_made_non_blocking_once_and_read_by_the_loop() -> None:
    """A socket from a connect by name (made on a worker) is still blocking: the
    task makes it non-blocking the first time it waits on it, never again."""
    seen: list[object] = []
    near, far = socket.socketpair()
    with near, far:
        assert near.gettimeout() is None
        task = Task(_reads(near, [10.0, 10.0], seen), near)
        loop = RecordingLoop()
        task.resume(loop)
        assert near.gettimeout() == 0.0 and near in task.plain
        assert loop.watching == (near, 1)  # nothing to read yet: it waits on epoll
        far.sendall(b"one")
        task.ready(loop)
        assert seen == [b"one"] and task.plain == {near}
        assert loop.watching == (near, 1) and not task.done  # the second read waits
