"""perditionpy.task with a loop that only records what it is asked: one alarm per
session however many waits it goes through, deadlines, pauses, the end."""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from perditionpy import task as task_module
from perditionpy.protocol import imap4
from perditionpy.protocol.base import LoginResult, LoginStatus, ToClient
from perditionpy.task import Task
from perditionpy.waits import Connect, Converse, Recv, Sleep, Steps, run_blocking


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


# -- a back-end login dialogue as one wait (waits.Converse)

# What a Dovecot-like back-end answers to each line Imap4BackendLogin writes
# after the greeting, in order; the last answer ends the login.
_DIALOGUE = [
    (b"flim07 CAPABILITY\r\n", b"* CAPABILITY IMAP4rev1 LITERAL+\r\nflim07 OK done\r\n"),
    (b"flim08 LOGIN {3}\r\n", b"+ OK\r\n"),
    (b"bob {6}\r\n", b"+ OK\r\n"),
    (b"secret\r\n", b"flim08 OK Logged in\r\n"),
]


def _login_engine() -> imap4.Imap4BackendLogin:
    return imap4.Imap4BackendLogin("bob", "secret", our_greeting=b"perditionpy ready")


def _converse(sock: socket.socket, engine: imap4.Imap4BackendLogin, timeout: float,
              seen: list[object]) -> Steps[None]:
    try:
        seen.append((yield Converse(sock, engine, engine.next_event(), 4096, timeout)))
    except TimeoutError:
        seen.append("timeout")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_a_back_end_dialogue_is_one_wait_and_one_resumption(
        pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop reads and writes each line of the login itself, in the order
    the engine asks; the session is resumed once, with the engine's result.
    Each read or write gets the whole timeout from when it starts."""
    near, far = pair
    clock = _Clock()
    monkeypatch.setattr(task_module, "time", clock)
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    resumed = 0

    def counted(steps: Steps[None]) -> Steps[None]:
        nonlocal resumed
        value = None
        while True:
            resumed += 1
            try:
                wait = steps.send(value)
            except StopIteration:
                return
            value = yield wait

    task = Task(counted(_converse(near, _login_engine(), 10.0, seen)), near)
    task.resume(loop)
    assert loop.watching == (near, 1) and task.deadline == 1010.0  # waits for the greeting
    far.sendall(b"* OK Dovecot ready.\r\n")
    for asked, answer in _DIALOGUE:
        clock.now += 1.0
        task.ready(loop)
        assert far.recv(100) == asked
        assert task.deadline == clock.now + 10.0  # a new read: a new deadline
        clock.now += 1.0
        task.ready(loop)  # readiness with nothing to read yet: the same deadline
        assert task.deadline == clock.now - 1.0 + 10.0 and seen == []
        far.sendall(answer)
    task.ready(loop)
    assert len(seen) == 1 and isinstance(seen[0], LoginResult)
    assert seen[0].status is LoginStatus.OK and task.done
    assert resumed == 2  # started, then resumed with the result


def _asked_for_capability(near: socket.socket, far: socket.socket
                          ) -> tuple[RecordingLoop, Task, list[object]]:
    """A dialogue driven by a task up to the CAPABILITY the back-end got."""
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    task = Task(_converse(near, _login_engine(), 10.0, seen), near)
    task.resume(loop)
    far.sendall(b"* OK Dovecot ready.\r\n")
    task.ready(loop)
    assert far.recv(100) == _DIALOGUE[0][0] and seen == []
    return loop, task, seen


def test_a_back_end_that_stops_answering_times_the_dialogue_out(
        pair: tuple[socket.socket, socket.socket]) -> None:
    loop, task, seen = _asked_for_capability(*pair)
    assert task.deadline is not None
    task.alarm(loop, loop.alarms[0])  # rings early: set again for the read's deadline
    task.alarm(loop, loop.alarms[-1])
    assert seen == ["timeout"] and task.done


def test_a_dialogue_run_blocking_says_and_gets_the_same(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """On a worker (a TLS socket, or run_blocking) the same wait is blocking calls."""
    near, far = pair
    near.setblocking(True)
    heard: list[bytes] = []

    def back_end() -> None:
        far.sendall(b"* OK Dovecot ready.\r\n")
        for _asked, answer in _DIALOGUE:
            heard.append(far.recv(100))
            far.sendall(answer)

    server = threading.Thread(target=back_end)
    server.start()
    seen: list[object] = []
    run_blocking(_converse(near, _login_engine(), 10.0, seen))
    server.join(10)
    assert heard == [asked for asked, _ in _DIALOGUE]
    assert len(seen) == 1 and isinstance(seen[0], LoginResult)
    assert seen[0].status is LoginStatus.OK


def test_a_line_for_the_client_ends_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    """Anything but a read or a write goes back to the session: here an untagged
    line the engine passes on to the client."""
    loop, task, seen = _asked_for_capability(*pair)
    pair[1].sendall(b"* BYE going down\r\n")
    task.ready(loop)
    assert seen == [ToClient(b"* BYE going down\r\n")]


def test_a_write_the_back_end_cannot_take_at_once_is_finished_on_readiness(
        pair: tuple[socket.socket, socket.socket]) -> None:
    near, far = pair
    password = "p" * 2_000_000  # more than the socket pair's buffers hold
    engine = imap4.Imap4BackendLogin("bob", password, our_greeting=b"perditionpy ready")
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    task = Task(_converse(near, engine, 10.0, seen), near)
    task.resume(loop)
    far.sendall(b"* OK Dovecot ready.\r\n")
    for answer in (_DIALOGUE[0][1], b"+ OK\r\n", b"+ OK\r\n"):
        task.ready(loop)
        far.recv(100)
        far.sendall(answer)
    task.ready(loop)  # the password: more than fits
    assert loop.watching == (near, 2) and isinstance(task.pending, memoryview)
    received = b""
    while not received.endswith(b"\r\n"):
        chunk = far.recv(1 << 20)
        received += chunk
        task.ready(loop)
    assert received == password.encode() + b"\r\n"
    assert loop.watching == (near, 1) and task.pending is None  # now waits for the answer
    far.sendall(b"flim08 OK Logged in\r\n")
    task.ready(loop)
    assert len(seen) == 1 and seen[0].status is LoginStatus.OK


# -- connects: epoll's answer says whether it worked

def _connects(host: str, port: int, seen: list[object]) -> Steps[None]:
    try:
        seen.append((yield Connect(host, port, 10.0)))
    except OSError as exc:
        seen.append(exc.errno)


def _epoll_answer(sock: socket.socket, events: int = select.EPOLLOUT) -> int:
    """What the relay hub's epoll says of ``sock`` once it is ready for ``events``
    (writable, by default) or failed."""
    poller = select.epoll()
    try:
        poller.register(sock.fileno(), events)
        (_, mask), = poller.poll(10.0)
        return mask
    finally:
        poller.close()


def test_a_connect_epoll_reports_writable_is_taken_as_made() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
        task = Task(_connects("127.0.0.1", listener.getsockname()[1], seen), client)
        task.resume(loop)
        connecting = task.pending
        assert isinstance(connecting, socket.socket) and loop.watching == (connecting, 2)
        mask = _epoll_answer(connecting)
        assert mask == select.EPOLLOUT
        task.ready(loop, mask)
        assert seen == [connecting] and task.done
        accepted, peer = listener.accept()
        with accepted, connecting:
            assert peer == connecting.getsockname()


@pytest.mark.parametrize("greeted", [False, True])
def test_a_refused_connect_is_the_error_the_socket_holds(greeted: bool) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as client:
        port = listener.getsockname()[1]
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    steps = _greeted("127.0.0.1", port, seen) if greeted else _connects("127.0.0.1", port, seen)
    task = Task(steps, client)  # nobody listens there now
    task.resume(loop)
    if not seen:  # (refused later, as usual, rather than at once)
        connecting = task.pending
        assert isinstance(connecting, socket.socket)
        mask = _epoll_answer(connecting, select.EPOLLIN if greeted else select.EPOLLOUT)
        assert mask & select.EPOLLERR
        task.ready(loop, mask)
    assert seen == [errno.ECONNREFUSED] and task.done


# -- a connect to a server that greets: its first bytes say it is made

def _greeted(host: str, port: int, seen: list[object]) -> Steps[None]:
    try:
        sock = yield Connect(host, port, 10.0, greeted=True)
        seen.append(sock)
        seen.append((yield Recv(sock, 100, 20.0)))
    except TimeoutError:
        seen.append("timeout")
    except OSError as exc:
        seen.append(exc.errno)


@contextlib.contextmanager
def _greeted_connect(listener: socket.socket
                     ) -> Iterator[tuple[RecordingLoop, list[object], Task, socket.socket]]:
    """A task connecting to ``listener`` with ``greeted``, the connect in progress."""
    loop, seen = RecordingLoop(), []  # type: ignore[var-annotated]
    with socket.socket() as client:
        task = Task(_greeted("127.0.0.1", listener.getsockname()[1], seen), client)
        task.resume(loop)
        connecting = task.pending
        assert isinstance(connecting, socket.socket)
        assert loop.watching == (connecting, 1)  # readable, not writable
        with connecting:
            yield loop, seen, task, connecting


def test_a_greeted_connect_waits_for_the_greeting_and_reads_it_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            _greeted_connect(listener) as (loop, seen, task, connecting):
        accepted, _ = listener.accept()
        with accepted:
            accepted.sendall(b"+OK hello\r\n")
            mask = _epoll_answer(connecting, select.EPOLLIN)
            assert mask == select.EPOLLIN
            task.ready(loop, mask)
            # made, and the greeting read in the same resumption: no wait between
            assert seen == [connecting, b"+OK hello\r\n"] and task.done


def test_a_greeted_connect_made_but_silent_at_its_deadline_times_the_greeting_out() -> None:
    """The connect succeeds and the read of the greeting times out: a silent
    server, not a failed connect (the session answers the two differently)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            _greeted_connect(listener) as (loop, seen, task, connecting):
        _epoll_answer(connecting, select.EPOLLOUT)  # made by now, and silent
        accepted, _ = listener.accept()
        with accepted:
            task.alarm(loop, loop.alarms[0])
            assert seen == [connecting, "timeout"] and task.done
            assert connecting.fileno() != -1  # the session's to close, as after any read


def test_a_greeted_connect_still_in_progress_at_its_deadline_times_out() -> None:
    # A listener whose accept queue is full drops further SYNs: a connect to it
    # stays in progress (on loopback, with nothing else to arrange).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname(), timeout=10.0):  # fills it
            with _greeted_connect(listener) as (loop, seen, task, connecting):
                task.alarm(loop, loop.alarms[0])
                assert seen == ["timeout"] and task.done
                assert connecting.fileno() == -1  # closed


