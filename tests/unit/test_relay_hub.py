"""perditionpy.relay_hub over socketpairs: the path taken, back-pressure, EOF,
shutdown, TLS.  Nothing here asserts on time; waits are only bounded."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from perditionpy import relay_hub
from perditionpy.relay import RelayResult
from perditionpy.relay_hub import RelayHub, splice_available

DEADLINE = 20.0


class Ends:
    """A pair handed to a hub: ``client`` and ``server`` are the far ends we drive."""

    def __init__(self, hub: RelayHub, *, timeout: float | None = None,
                 wrap_client: ssl.SSLContext | None = None,
                 client_side: ssl.SSLContext | None = None) -> None:
        self.client, hub_client = socket.socketpair()
        hub_server, self.server = socket.socketpair()
        for sock in (self.client, self.server):
            sock.settimeout(DEADLINE)
        if wrap_client is not None and client_side is not None:
            hub_client, self.client = _tls_pair(wrap_client, client_side, hub_client,
                                                self.client)
        self.done = threading.Event()
        self.result: RelayResult | None = None
        hub.add(hub_client, hub_server, timeout=timeout, on_done=self._on_done, label=" test")

    def _on_done(self, result: RelayResult) -> None:
        self.result = result
        self.done.set()

    def finished(self) -> RelayResult:
        assert self.done.wait(DEADLINE), "the pair did not end"
        assert self.result is not None
        return self.result


def _tls_pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hub_end: socket.socket,
              far_end: socket.socket) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    hub_end.settimeout(DEADLINE)
    box: list[ssl.SSLSocket] = []
    accept = threading.Thread(target=lambda: box.append(
        server_ctx.wrap_socket(hub_end, server_side=True)))
    accept.start()
    far = client_ctx.wrap_socket(far_end, server_hostname="localhost")
    accept.join(DEADLINE)
    return box[0], far


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 16, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _pattern(size: int, seed: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


def _both_ways(ends: Ends, size: int, *, one_at_a_time: bool = False) -> None:
    """Send ``size`` bytes each way.  ``one_at_a_time``: the far client end is an
    SSLSocket, which one thread may not read while another writes it (OpenSSL
    objects are not thread-safe), so the two directions run one after the other."""
    up, down = _pattern(size, 1), _pattern(size, 7)
    got: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda: got.__setitem__("up", _read_exactly(ends.server, size))),
               threading.Thread(target=lambda: got.__setitem__("down",
                                                               _read_exactly(ends.client, size)))]
    writer = threading.Thread(target=ends.server.sendall, args=(down,))
    if one_at_a_time:
        readers[0].start()
        ends.client.sendall(up)
        readers[0].join(DEADLINE)
        writer.start()
        got["down"] = _read_exactly(ends.client, size)
        writer.join(DEADLINE)
    else:
        for thread in readers:
            thread.start()
        writer.start()
        ends.client.sendall(up)
        writer.join(DEADLINE)
        for thread in readers:
            thread.join(DEADLINE)
    assert got["up"] == up and got["down"] == down


@pytest.fixture
def hub() -> RelayHub:
    return RelayHub()


@pytest.mark.skipif(not splice_available(), reason="os.splice needs Linux")
def test_a_plain_pair_is_spliced_and_never_copied(hub: RelayHub,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="perditionpy.relay_hub")
    ends = Ends(hub)
    _both_ways(ends, 3 * 1024 * 1024 + 17)
    ends.client.close()
    result = ends.finished()
    assert result == RelayResult(3 * 1024 * 1024 + 17, 3 * 1024 * 1024 + 17, timed_out=False)
    assert hub.paths == {"splice": 1, "copy": 0}
    assert f"relay: splice test spliced={2 * (3 * 1024 * 1024 + 17)} copied=0" in caplog.text


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not splice_available(), reason="os.splice needs Linux")
def test_idle_spliced_pairs_hold_no_pipe(hub: RelayHub) -> None:
    """Each pair moves a line each way, then sits idle: it holds its two sockets,
    not the four descriptors of two pipes (10,000 idle sessions need that)."""
    count = 200
    before = _open_descriptors()
    pairs = [Ends(hub) for _ in range(count)]
    for ends in pairs:
        ends.client.sendall(b"a NOOP\r\n")
        assert _read_exactly(ends.server, 8) == b"a NOOP\r\n"
        ends.server.sendall(b"a OK\r\n")
        assert _read_exactly(ends.client, 6) == b"a OK\r\n"
    sockets = 4 * count  # our far ends and the hub's ends
    spare = 2 * relay_hub._SPARE_PIPES + 8  # pipes kept for reuse, the hub's waker
    deadline = time.monotonic() + DEADLINE
    while _open_descriptors() - before > sockets + spare and time.monotonic() < deadline:
        time.sleep(0.05)  # the hub returns a pipe just after its last write
    assert _open_descriptors() - before <= sockets + spare
    hub.close_all()
    assert all(ends.finished() == RelayResult(8, 6, timed_out=False) for ends in pairs)


def test_back_pressure_stops_reading_while_the_other_side_is_full(hub: RelayHub) -> None:
    ends = Ends(hub)
    ends.client.setblocking(False)
    offered, accepted = _pattern(1 << 16, 3), 0
    # Fill until the client's socket stays unwritable: the hub has stopped reading it.
    while accepted < 256 * 1024 * 1024:
        try:
            accepted += ends.client.send(offered)
        except BlockingIOError:
            if not select.select([], [ends.client], [], 1.0)[1]:
                break
    assert accepted < 64 * 1024 * 1024, "the hub buffered without bound"
    ends.client.settimeout(DEADLINE)
    ends.client.shutdown(socket.SHUT_WR)
    received = _read_exactly(ends.server, accepted + 1)
    assert len(received) == accepted  # everything read was written before the end
    assert ends.finished().received == accepted


def test_either_side_ending_ends_the_pair_after_writing_what_was_read(hub: RelayHub) -> None:
    ends = Ends(hub)
    ends.server.sendall(b"* BYE\r\n")
    ends.server.shutdown(socket.SHUT_WR)
    assert _read_exactly(ends.client, 100) == b"* BYE\r\n"  # then EOF: the hub closed it
    assert ends.finished() == RelayResult(0, 7, timed_out=False)
    assert hub.active() == 0


def test_close_all_ends_every_idle_pair_with_its_counts(hub: RelayHub) -> None:
    pairs = [Ends(hub) for _ in range(5)]
    pairs[0].client.sendall(b"a NOOP\r\n")
    assert _read_exactly(pairs[0].server, 8) == b"a NOOP\r\n"
    assert hub.active() == 5
    hub.close_all()
    results = [ends.finished() for ends in pairs]
    assert results[0] == RelayResult(8, 0, timed_out=False)
    assert all(result == RelayResult(0, 0, timed_out=False) for result in results[1:])
    assert hub.active() == 0
    assert all(ends.client.recv(10) == b"" for ends in pairs)


def test_the_idle_timeout_ends_a_quiet_pair(hub: RelayHub) -> None:
    busy, quiet = Ends(hub, timeout=None), Ends(hub, timeout=0.1)
    assert quiet.finished().timed_out
    assert not busy.done.is_set()
    assert hub.active() == 1


def test_watchers_hear_of_each_pair_that_ends(hub: RelayHub) -> None:
    heard = threading.Semaphore(0)
    hub.watch(heard.release)
    ends = Ends(hub)
    ends.client.close()
    ends.finished()
    assert heard.acquire(timeout=DEADLINE)


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    directory: Path = tmp_path_factory.mktemp("hub-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                        "-days", "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the openssl command could not make a test certificate")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


@pytest.fixture
def tls_ends(hub: RelayHub, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[Ends]:
    ends = Ends(hub, wrap_client=tls_contexts[0], client_side=tls_contexts[1])
    yield ends
    ends.client.close()


def test_a_tls_side_takes_the_copy_path_and_moves_everything(hub: RelayHub,
                                                             tls_ends: Ends) -> None:
    _both_ways(tls_ends, 2 * 1024 * 1024 + 5, one_at_a_time=True)
    tls_ends.client.unwrap()  # close_notify: a clean EOF for the hub
    result = tls_ends.finished()
    assert result == RelayResult(2 * 1024 * 1024 + 5, 2 * 1024 * 1024 + 5, timed_out=False)
    assert hub.paths == {"splice": 0, "copy": 1}


# ------------------------------------------------------------------ a step's reads


@pytest.mark.parametrize("splice", [True, False] if splice_available() else [False])
def test_a_step_reads_only_the_side_that_showed_readiness(splice: bool) -> None:
    with _bare_pair(splice=splice) as ends:
        pair, pipes = ends.pair, ends.pipes
        ends.client_far.sendall(b"a NOOP\r\n")
        ends.server_far.sendall(b"* OK\r\n")
        # Woken by the server only: its bytes move, the client's wait for their turn.
        assert pair.step(pipes, client_events=0, server_events=relay_hub._READ)
        assert _read_exactly(ends.client_far, 6) == b"* OK\r\n"
        assert (pair.up.moved, pair.down.moved) == (0, 6)
        assert pair.step(pipes, client_events=relay_hub._READ, server_events=0)
        assert _read_exactly(ends.server_far, 8) == b"a NOOP\r\n"
        assert (pair.up.moved, pair.down.moved) == (8, 6)


@pytest.mark.skipif(not splice_available(), reason="os.splice needs Linux")
def test_a_pair_reading_both_sides_keeps_its_registrations_through_quick_steps() -> None:
    """Once both sides are registered to read with nothing held, a quick step
    that leaves nothing held says so, and the hub touches no registration."""
    with _bare_pair() as ends:
        pair, pipes = ends.pair, ends.pipes
        assert pair.step(pipes, 0, 0) == relay_hub._GOING  # new: the hub registers it
        hub = relay_hub.RelayHub()
        hub._sel = relay_hub._Poller()
        hub._register(pair)
        assert pair.masks == [relay_hub._READ, relay_hub._READ]
        ends.client_far.sendall(b"a NOOP\r\n")
        assert pair.step(pipes, relay_hub._READ, 0) == relay_hub._AS_REGISTERED
        assert _read_exactly(ends.server_far, 8) == b"a NOOP\r\n"
        ends.server_far.close()  # an end: the hub must look again
        assert pair.step(pipes, 0, relay_hub._READ) == 0
        hub._sel._epoll.close()


def test_a_new_plain_pair_reads_both_sides_and_keeps_the_parked_back_end_registration() -> None:
    with _bare_pair() as ends:
        hub = relay_hub.RelayHub()
        hub._sel = poller = relay_hub._Poller()
        try:
            poller.register(ends.server, relay_hub._READ, "the session's task")
            poller.park(ends.server, relay_hub._READ)  # as the task ending leaves it
            hub._pairs.add(ends.pair)
            hub._start_plain(ends.pair)
            assert ends.pair.masks == [relay_hub._READ, relay_hub._READ]
            assert not poller._parked  # adopted: settle() will not drop it
            ends.server_far.sendall(b"* OK\r\n")
            ends.client_far.sendall(b"a NOOP\r\n")
            ready = {obj: data for obj, data, _ in poller.select(DEADLINE)}
            assert ready == {ends.client: ends.pair, ends.server: ends.pair}
        finally:
            poller._epoll.close()


@contextlib.contextmanager
def _bare_pair(*, splice: bool = True) -> Iterator[SimpleNamespace]:
    """A _Pair over two socketpairs, stepped by the test itself: ``pair``,
    ``pipes``, the hub's ends ``client``/``server`` and our far ends."""
    client, client_far = socket.socketpair()
    server, server_far = socket.socketpair()
    for sock in (client, server):
        sock.setblocking(False)
    pair = relay_hub._Pair(client, server, timeout=None, on_done=lambda result: None,
                           label="", splice=splice)
    try:
        yield SimpleNamespace(pair=pair, pipes=relay_hub._Pipes(), client=client,
                              server=server, client_far=client_far, server_far=server_far)
    finally:
        pair.up.release()
        pair.down.release()
        for sock in (client, client_far, server, server_far):
            sock.close()


@pytest.mark.skipif(not splice_available(), reason="os.splice needs Linux")
def test_what_the_other_side_cannot_take_yet_stays_held_in_the_pipe() -> None:
    """The quick path (read and pass on at once) keeps what the destination
    did not take, and the pair then drains it like any other."""
    with _bare_pair() as ends:
        pair, pipes = ends.pair, ends.pipes
        filler = 0  # fill the way to the server first: it takes nothing more for now
        with contextlib.suppress(BlockingIOError):
            while True:
                filler += ends.server.send(b"x" * 4096)
        data = _pattern(16 * 1024, 5)
        ends.client_far.sendall(data)
        assert pair.quick
        assert pair.step(pipes, client_events=relay_hub._READ, server_events=0)
        assert pair.up.held == len(data) and pair.up.pipe is not None
        assert pair.wanted(ends.server) & relay_hub._WRITE  # the hub waits to write the rest
        ends.server_far.settimeout(DEADLINE)
        assert _read_exactly(ends.server_far, filler) == b"x" * filler
        assert pair.step(pipes, client_events=0, server_events=relay_hub._WRITE)
        assert _read_exactly(ends.server_far, len(data)) == data
        assert pair.up.moved == len(data) and not pair.up.held and pair.up.pipe is None


@pytest.mark.skipif(not splice_available(), reason="os.splice needs Linux")
def test_a_failed_write_or_an_end_of_input_on_the_quick_path_ends_the_pair() -> None:
    with _bare_pair() as ends:
        ends.server_far.close()
        ends.client_far.sendall(b"a NOOP\r\n")
        assert not ends.pair.step(ends.pipes, client_events=relay_hub._READ, server_events=0)
    with _bare_pair() as ends:
        ends.client_far.close()
        assert not ends.pair.step(ends.pipes, client_events=relay_hub._READ, server_events=0)
        assert ends.pair.ending and ends.pipes.free  # the pipe went back unused


# ------------------------------------------------------------------ the poller


def test_a_parked_registration_is_adopted_without_an_epoll_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    poller = relay_hub._Poller()
    calls: list[str] = []
    real = poller._epoll

    def recorded(name: str) -> Callable[..., None]:
        def call(*args: int) -> None:
            calls.append(name)
            getattr(real, name)(*args)
        return call

    monkeypatch.setattr(poller, "_epoll", SimpleNamespace(
        register=recorded("register"), modify=recorded("modify"),
        unregister=recorded("unregister"), poll=real.poll))
    near, far = socket.socketpair()
    with near, far:
        poller.register(near, relay_hub._READ, "task")
        poller.park(near, relay_hub._READ)
        far.sendall(b"x")
        assert poller.select(0) == []  # a parked registration wakes nobody
        poller.register(near, relay_hub._READ, "pair")  # the same events: nothing to change
        assert poller.select(0) == [(near, "pair", select.EPOLLIN)]
        poller.settle()
        assert calls == ["register"]
        poller.park(near, relay_hub._READ)
        poller.register(near, relay_hub._READ | relay_hub._WRITE, "pair")
        assert calls == ["register", "modify"]


def test_what_stays_parked_is_unregistered_when_the_turn_settles() -> None:
    poller = relay_hub._Poller()
    near, far = socket.socketpair()
    with near, far:
        poller.register(near, relay_hub._READ, "task")
        poller.park(near, relay_hub._READ)
        poller.settle()
        far.sendall(b"x")
        assert poller.select(0) == []
        poller.register(near, relay_hub._READ, "again")  # known to nobody: a fresh registration
        assert poller.select(0) == [(near, "again", select.EPOLLIN)]


def test_a_closed_socket_can_be_forgotten_and_its_number_reused() -> None:
    poller = relay_hub._Poller()
    first, far = socket.socketpair()
    with far:
        poller.register(first, relay_hub._READ, "first")
        fd = first.fileno()
        assert poller.forget(first) == fd
        first.close()  # closing took it out of the epoll set
        second, other = socket.socketpair()
        with second, other:
            poller.register(second, relay_hub._READ, "second")
            other.sendall(b"x")
            assert poller.select(0) == [(second, "second", select.EPOLLIN)]
