"""One client connection, start to end: greet → authenticate → resolve →
connect → back-end login → relay, with perdition's log lines.

The protocol engines decide what to say (perditionpy.protocol), the resolver
decides where to go (perditionpy.resolve), the relay moves bytes
(perditionpy.relay, perditionpy.relay_hub).  The session decides when to wait
for what: :meth:`Session.steps` is a generator of waits (perditionpy.waits),
driven either by the relay hub's event loop (the daemon: no thread per login)
or by :func:`perditionpy.waits.run_blocking` (:meth:`Session.run`: inetd mode).
"""

from __future__ import annotations

# socket.gethostbyaddr() imports this codec on first use; after the privilege
# drop (inetd mode binds nothing, so nothing imported it before) the new user
# may not be able to read the standard library: import it now.
import encodings.idna  # noqa: F401
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from perditionpy import limits, pam
from perditionpy.log import NOTICE
from perditionpy.log import line as log_line
from perditionpy.maps.base import LookupContext
from perditionpy.protocol import imap4, managesieve, pop3
from perditionpy.protocol.base import (
    NEED_DATA,
    ClientClosed,
    Credentials,
    LoginResult,
    LoginStatus,
    Send,
    StartTLS,
    ToBackend,
    ToClient,
)
from perditionpy.relay import RelayResult, relay
from perditionpy.relay_hub import hub as relay_hub
from perditionpy.resolve import ConnectTargetError, ResolveError, Route
from perditionpy.tls import TlsContexts, TlsError, TlsMode
from perditionpy.tls import close as close_socket
from perditionpy.usernames import UsernameError
from perditionpy.waits import (
    Blocking,
    Connect,
    Converse,
    Recv,
    SendAll,
    Sleep,
    Steps,
    run_blocking,
)

__all__ = ["GreetingHosts", "Session", "SessionServices", "greeting_host"]

log = logging.getLogger("perditionpy.session")

Address = tuple[Any, ...] | None
_NO_TLS = TlsMode()  # (frozen: one for every session without SSL/TLS)


@dataclass(frozen=True, slots=True)
class SessionServices:
    """What every session shares: built once by perditionpy.app."""

    options: Any
    checksum: int
    resolver: Any                 # perditionpy.resolve.Resolver
    current_map: Any              # callable returning the current Map or None
    sleep: Any = field(default=time.sleep)
    tls: TlsContexts | None = None  # perditionpy.tls.contexts(options): None without SSL/TLS
    greeting_hosts: GreetingHosts = field(default_factory=lambda: GreetingHosts())


def greeting_host(options: Any, local: Address) -> str:
    """The host name in our greeting: the reverse lookup of the address the
    client connected to (numeric with -n), or the node name with -B."""
    if options.no_bind_banner or local is None:
        return os.uname().nodename
    address = str(local[0])
    if not options.no_lookup:
        try:
            return str(socket.gethostbyaddr(address)[0])
        except OSError:
            pass
    return address


# Local addresses whose greeting host is remembered (a listener on :: sees every
# address of the host).
_GREETING_HOSTS_CACHED = 1024


class GreetingHosts:
    """:func:`greeting_host` per local address, looked up once: a reverse lookup
    reads files and resolves on every call. ``clear`` (SIGHUP) forgets them all."""

    def __init__(self) -> None:
        self._hosts: dict[Any, str] = {}

    def get(self, options: Any, local: Address) -> str:
        key = None if local is None else local[0]
        host = self._hosts.get(key)
        if host is None:
            host = greeting_host(options, local)
            if len(self._hosts) >= _GREETING_HOSTS_CACHED:
                self._hosts.clear()  # a host with very many addresses: start again
            self._hosts[key] = host
        return host

    def cached(self, local: Address) -> str | None:
        """The host name if already looked up (no I/O), else ``None``."""
        return self._hosts.get(None if local is None else local[0])

    def clear(self) -> None:
        self._hosts = {}


def _from_to(client: Address, local: Address) -> str:
    if client is None or local is None:
        return ""
    return f" {client[0]}:{client[1]}->{local[0]}:{local[1]}"


class _ClientGone(Exception):
    """The client closed or timed out; the session ends without a reply."""


class _BackendFailed(Exception):
    """The back-end broke the login dialogue; perdition exits the child."""


class Session:
    """Drives one connection.  Not shared between threads."""

    def __init__(self, services: SessionServices, conn: socket.socket,
                 client: Address, local: Address, *, inetd_pid: int | None = None) -> None:
        self._s = services
        self._opt = services.options
        self._conn = conn
        self._handed_over = False  # the relay hub owns the client socket now
        self._client = client
        self._local = local
        self._from_to = _from_to(client, local)
        self._inetd_pid = inetd_pid
        self._tls = services.tls
        self._mode = self._tls.mode if self._tls is not None else _NO_TLS
        self._client_secure = "ssl" if self._mode.ssl_listen else "plaintext"
        self._server_secure = "ssl" if self._mode.ssl_outgoing else "plaintext"
        self._engine: Any = None  # made once the greeting's host name is known
        self._resolver = services.resolver.new_session()
        self._quick = services.resolver.quick(services.current_map())
        self._timeout = self._opt.authenticate_timeout or None
        self._tag = b"flim07"  # perdition's back-end tag sequence, per connection
        # Back-end lines for the client not written yet: they go out with the
        # next write to the client, or before the session next waits on anything
        # else (so a client sees them when perdition would have sent them).
        self._for_client = b""

    def _make_engine(self, host: str) -> Any:
        kind = (managesieve.ManageSieveFrontEnd if self._opt.protocol == "MANAGESIEVE"
                else imap4.Imap4FrontEnd if self._opt.protocol.startswith("IMAP")
                else pop3.Pop3FrontEnd)
        return kind(self._opt, greeting_host=host, checksum=self._s.checksum,
                    tls_listen=self._mode.tls_listen, tls_force=self._mode.tls_listen_force)

    @property
    def label(self) -> str:
        """`` client->local`` for log lines about this connection."""
        return self._from_to

    # -- the journey --------------------------------------------------------

    def run(self) -> None:
        """The whole connection in this thread."""
        run_blocking(self.steps())

    def steps(self) -> Steps[None]:
        """The whole connection, as waits for a driver (perditionpy.waits)."""
        try:
            self._log_connect()
            host = self._s.greeting_hosts.cached(self._local)
            if host is None:  # a reverse lookup, once per local address
                host = yield Blocking(self._s.greeting_hosts.get, (self._opt, self._local))
            self._engine = self._make_engine(host)
            if self._mode.ssl_listen:
                yield from self._start_client_tls("SSL connection to client")
            yield from self._write(self._engine.greeting())
            backend = yield from self._authenticate()
            if backend is not None:
                self._relay(*backend)
        except _ClientGone:
            pass
        except _BackendFailed as exc:
            log.error("Fatal error authenticating user%s: %s. Exiting child.", self._from_to, exc)
        except Exception:  # a bug must cost one connection, never the daemon
            log.exception("Fatal error in session%s", self._from_to)
        finally:
            if not self._handed_over:
                close_socket(self._conn)

    def _log_connect(self) -> None:
        if self._inetd_pid is not None:
            log.info("Connect: %s inetd_pid=%d", self._from_to, self._inetd_pid)
        else:
            log_line(log, logging.INFO, "Connect: %s", self._from_to)

    def _authenticate(self) -> Steps[tuple[socket.socket, Credentials, Route] | None]:
        """Read commands until a login succeeds (→ back-end socket) or the client leaves."""
        while True:
            event = self._engine.next_event()
            if event is NEED_DATA:
                self._engine.receive_data((yield from self._read()))
            elif isinstance(event, Send):
                yield from self._send(event)
                if event.close:
                    self._log_close_null()
                    return None
            elif isinstance(event, ClientClosed):
                self._fatal_read_error()
            elif isinstance(event, StartTLS):
                yield from self._start_client_tls("TLS connection")
                self._client_secure = "starttls"
            elif isinstance(event, Credentials):
                result = yield from self._login(event)
                if result is not None:
                    return result

    def _read(self) -> Steps[bytes]:
        try:
            data: bytes = yield Recv(self._conn, limits.MAX_LINE_LENGTH, self._timeout)
            return data
        except TimeoutError:
            log.error("Fatal Error: Timeout reading authentication information from "
                      "client%s: Exiting child", self._from_to)
            raise _ClientGone from None
        except OSError:
            return b""

    def _start_client_tls(self, what: str) -> Steps[None]:
        """Replace the client socket by its TLS session (the handshake is bounded
        by --authenticate_timeout); a failure ends the connection."""
        assert self._tls is not None
        try:
            self._conn = yield Blocking(self._tls.accept, (self._conn, self._timeout), hold=True)
        except TlsError as exc:
            log.error("Fatal error establishing %s%s: %s", what, self._from_to, exc)
            raise _ClientGone from None

    def _fatal_read_error(self) -> None:
        log.error("Fatal Error reading authentication information from client%s: "
                  "Exiting child", self._from_to)
        raise _ClientGone

    def _send(self, event: Send) -> Steps[None]:
        if event.delay:
            yield self._delay()
        yield from self._write(event.data)

    def _delay(self) -> Sleep:
        return Sleep(limits.AUTH_FAIL_DELAY, self._s.sleep)

    def _write(self, data: bytes) -> Steps[None]:
        if self._for_client:
            data, self._for_client = self._for_client + data, b""
        try:
            yield SendAll(self._conn, data, self._timeout)
        except OSError:
            raise _ClientGone from None

    def _log_close_null(self) -> None:
        log.info('Closing NULL session:%s authorisation_id=NONE authentication_id="(null)"',
                 self._from_to)

    # -- one login attempt ---------------------------------------------------

    def _login(self, cred: Credentials) -> Steps[tuple[socket.socket, Credentials, Route] | None]:
        self._server_secure = "ssl" if self._mode.ssl_outgoing else "plaintext"
        if self._opt.login_disabled or self._tls_required_first():
            yield from self._fail(cred, None, "Login Disabled", port="(null)")
            return None
        try:
            # The SASL authzid, when the client gave one, is the name perdition maps.
            args = (cred.authzid or cred.user, self._s.current_map(), self._context())
            if self._quick:  # no server to ask, no DNS: cheaper than a thread hand-off
                route = self._resolver.resolve(*args)
            else:
                route = yield Blocking(self._resolver.resolve, args)
        except ResolveError as exc:
            yield from self._fail(cred, None, exc.client_text)
            return None
        except ConnectTargetError as exc:
            yield from self._fail(cred, None, exc.client_text)
            return None
        except UsernameError as exc:
            log.error('Fatal error manipulating username for client "%s": %s',
                      self._client[0] if self._client else "", exc)
            raise _ClientGone from None
        if self._opt.authenticate_in and not (yield from self._local_auth(cred, route)):
            return None
        backend = yield from self._connect(route)
        if backend is None:
            yield from self._fail(cred, route, "Could not connect to server")
            return None
        return (yield from self._backend_login(cred, route, backend))

    def _local_auth(self, cred: Credentials, route: Route) -> Steps[bool]:
        """``-a``: PAM must accept the client before the back-end is contacted."""
        try:
            text = pam.failure_text(self._opt.protocol)
            user = self._resolver.local_auth_user(route.authorisation_id, self._context())
            result = yield Blocking(partial(pam.authenticate, rhost=pam.rhost(self._client)),
                                    (user, cred.password))
        except (pam.PamError, UsernameError) as exc:
            log.error("Fatal error authenticating to client locally%s: %s. Exiting child.",
                      self._from_to, exc)
            raise _ClientGone from None
        if result.ok:
            return True
        yield self._delay()
        yield from self._write(self._engine.reply_failure(text))
        log.info("Local authentication failure for client: Allowing retry.")
        self._log_auth(cred, route, "failed: local authentication failure")
        return False

    def _tls_required_first(self) -> bool:
        """tls_listen_force: no login before STARTTLS/STLS."""
        return self._mode.tls_listen_force and self._client_secure == "plaintext"

    def _context(self) -> LookupContext:
        return LookupContext(client=self._client, local=self._local,
                             domain_delimiter=self._opt.domain_delimiter)

    def _connect(self, route: Route) -> Steps[socket.socket | None]:
        try:
            sock: socket.socket = yield Connect(route.server, route.port, self._timeout,
                                                greeted=not self._mode.ssl_outgoing)
        except OSError as exc:
            log.debug("connect to %s:%s failed: %s", route.server, route.port, exc)
            return None
        self._tune_backend(sock)
        if self._mode.ssl_outgoing:
            try:
                return (yield from self._server_tls(sock, route, "SSL"))
            except TlsError:
                return None
        return sock

    def _tune_backend(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._opt.tcp_keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _server_tls(self, sock: socket.socket, route: Route, what: str,
                    again: Any = None) -> Steps[socket.socket]:
        """Our TLS session with the back-end, its certificate checked; a failure
        is logged with its reason and closes ``sock``.  ``again(timeout)`` opens
        a new connection up to the same point, should a self-signed certificate
        the options accept call for a retry (by default: the same TCP connection)."""
        assert self._tls is not None
        try:
            tls: socket.socket = yield Blocking(
                partial(self._tls.connect, reconnect=again), (sock, route.server, self._timeout),
                hold=True)
            return tls
        except TlsError as exc:
            log.error("Error establishing %s connection to server %s:%s%s: %s",
                      what, route.server, route.port, self._from_to, exc)
            raise

    def _backend_login(self, cred: Credentials, route: Route, sock: socket.socket
                       ) -> Steps[tuple[socket.socket, Credentials, Route] | None]:
        login = self._make_backend_login(route.login_user, cred.password, cred=cred)
        holder = [sock]  # _drive swaps in the TLS socket after STARTTLS/STLS
        again = partial(self._starttls_again, route, cred)
        try:
            result = yield from self._drive(login, holder, route, again)
        except TlsError:
            yield from self._fail(cred, route, "Could not connect to server")
            return None
        except (OSError, _BackendFailed) as exc:
            holder[0].close()
            raise _BackendFailed(str(exc) or type(exc).__name__) from None
        sock = holder[0]
        if result.status is LoginStatus.OK:
            yield from self._succeed(cred, route, result)
            pipelined = self._engine.pending_data()
            if pipelined:  # perdition drops these; a pipelining client expects them sent
                try:
                    yield SendAll(sock, pipelined, self._timeout)
                except OSError as exc:
                    close_socket(sock)
                    raise _BackendFailed(str(exc) or type(exc).__name__) from None
            return sock, cred, route
        yield from self._backend_refused(cred, route, sock, login, result)
        return None

    def _make_backend_login(self, user: str, password: str, *, cred: Credentials) -> Any:
        ours = self._engine.greeting_line
        tls = {"starttls": self._mode.tls_outgoing, "require_tls": self._mode.tls_outgoing_force}
        if self._opt.protocol == "MANAGESIEVE":
            # perdition puts the mapped name in place of the client's authzid
            # when it gave one, and passes its authentication id on unchanged.
            authzid, authcid = (user, cred.user) if cred.authzid is not None else (None, user)
            return managesieve.ManageSieveBackendLogin(authcid, password, our_greeting=ours,
                                                       authzid=authzid, **tls)
        if self._opt.protocol.startswith("IMAP"):
            return imap4.Imap4BackendLogin(user, password, our_greeting=ours, tag=self._tag,
                                           **tls)
        return pop3.Pop3BackendLogin(user, password, our_greeting=ours, **tls)

    def _drive(self, login: Any, holder: list[socket.socket], route: Route,
               again: Any = None) -> Steps[LoginResult]:
        event = login.next_event()
        while True:
            if type(event) is ToClient:
                # Held for the reply that usually follows in the same read: the
                # client then gets both in one segment (a lone untagged line
                # and the OK as two small writes cost it a wake-up each).
                self._for_client += event.data
                event = login.next_event()
                continue
            if self._for_client and not (type(event) is LoginResult
                                         and event.status is LoginStatus.OK):
                yield from self._write(b"")
            if event is NEED_DATA or type(event) is ToBackend:
                # The reads and writes up to the engine's next other event: the
                # driver carries them (one wait, not one per line).
                event = yield Converse(holder[0], login, event, limits.MAX_LINE_LENGTH,
                                       self._timeout)
                continue
            if isinstance(event, StartTLS):
                holder[0] = yield from self._server_tls(holder[0], route, "TLS", again)
                self._server_secure = "starttls"
                event = login.next_event()
            elif event.status is LoginStatus.PROTOCOL_ERROR:
                raise _BackendFailed(f"unexpected reply from the server: {event.server_line!r}")
            else:
                result: LoginResult = event
                return result

    def _starttls_again(self, route: Route, cred: Credentials, timeout: float | None
                        ) -> socket.socket:
        """(on a worker thread) A new connection to the back-end, brought to where
        the TLS handshake starts: its greeting read and STARTTLS/STLS accepted."""
        return run_blocking(self._up_to_starttls(route, cred, timeout))

    def _up_to_starttls(self, route: Route, cred: Credentials, timeout: float | None
                        ) -> Steps[socket.socket]:
        sock: socket.socket = yield Connect(route.server, route.port, timeout)
        self._tune_backend(sock)
        login = self._make_backend_login(route.login_user, cred.password, cred=cred)
        try:
            while True:
                event = login.next_event()
                if event is NEED_DATA:
                    data = yield Recv(sock, limits.MAX_LINE_LENGTH, timeout)
                    login.receive_data(data)
                elif isinstance(event, ToBackend):
                    yield SendAll(sock, event.data, timeout)
                elif isinstance(event, StartTLS):
                    return sock
                elif not isinstance(event, ToClient):  # the client heard it the first time
                    raise OSError("the server did not take STARTTLS again")
        except BaseException:
            sock.close()
            raise

    def _backend_refused(self, cred: Credentials, route: Route, sock: socket.socket,
                         login: Any, result: LoginResult) -> Steps[None]:
        yield from self._quit(sock, login)
        if result.status is LoginStatus.LOOP:
            yield from self._fail(cred, route, "Connection Negotiation Failure")
            return None
        if result.status is LoginStatus.TLS_NOT_PRESENT:
            yield from self._fail(cred, route, "TLS not present")
            return None
        if result.status is LoginStatus.LOGIN_DISABLED:
            yield self._delay()  # perdition sleeps twice here
            yield from self._fail(cred, route, "Login Disabled")
            return None
        if result.status is LoginStatus.MECHANISM_UNAVAILABLE:
            yield self._delay()  # perdition sleeps twice here too
            yield from self._fail(cred, route, "SASL mechanism unavailable")
            return None
        if self._opt.server_resp_line:
            yield self._delay()
            yield from self._write(self._engine.reply_raw(result.server_line))
            self._log_auth(cred, route, "failed: Re-Authentication Failure")
            return None
        yield from self._fail(cred, route, "Re-Authentication Failure")
        return None

    def _quit(self, sock: socket.socket, login: Any) -> Steps[None]:
        """Say goodbye to the back-end and read its answer, as perdition does."""
        try:
            yield SendAll(sock, login.quit_bytes(), self._timeout)
            yield Recv(sock, limits.MAX_LINE_LENGTH, limits.AUTH_FAIL_DELAY)
        except OSError:
            pass
        finally:
            sock.close()
        if hasattr(login, "tag"):
            self._tag = imap4.next_tag(login.tag)

    def _fail(self, cred: Credentials, route: Route | None, reason: str,
              *, port: str | None = None) -> Steps[None]:
        text = f"failed: {reason}"
        yield self._delay()
        yield from self._write(self._engine.reply_failure(text))
        self._log_auth(cred, route, text, port=port)
        return None

    def _succeed(self, cred: Credentials, route: Route, result: LoginResult) -> Steps[None]:
        """The OK and whatever the back-end sent after its own, in one write."""
        if self._opt.server_resp_line:
            reply = self._engine.reply_raw(result.server_line)
        else:
            reply = self._engine.reply_ok(self._opt.ok_line)
        yield from self._write(reply + result.trailing if result.trailing else reply)
        self._log_auth(cred, route, "ok")

    # -- log lines ---------------------------------------------------------

    def _auth_line(self, cred: Credentials, route: Route | None, status: str,
                   port: str | None = None) -> str:
        # Without a route perdition prints "(null)" for the server and its
        # default port text (or "(null)" when it never got that far).
        authorisation_id, user = _ids(cred, route)
        server = route.server if route is not None else "(null)"
        if port is None:
            port = route.port_text if route is not None else self._opt.outgoing_port_text
        return (f'Auth:{self._from_to} client-secure={self._client_secure} '
                f'authorisation_id={authorisation_id} '
                f'authentication_id="{user}"{self._password_part(cred, status)} '
                f'server="{server}:{port}" protocol={self._opt.protocol} '
                f'server-secure={self._server_secure} status="{status}"')

    def _password_part(self, cred: Credentials, status: str) -> str:
        states = self._opt.log_passwd
        wanted = ("ok" in states) if status == "ok" else ("fail" in states)
        if self._opt.debug and wanted:
            return f' passwd="{cred.password}"'
        return ""

    def _log_auth(self, cred: Credentials, route: Route | None, status: str,
                  *, port: str | None = None) -> None:
        log_line(log, NOTICE, "%s", self._auth_line(cred, route, status, port))

    # -- after login -------------------------------------------------------

    def _relay(self, backend: socket.socket, cred: Credentials, route: Route) -> None:
        """Hand the pair to the process's relay hub (this thread then ends); in
        inetd mode, where the process is this one session, relay right here."""
        authorisation_id, user = _ids(cred, route)

        def closing(result: RelayResult) -> None:
            if result.timed_out:
                log.info("Timeout piping data.")
            log_line(log, logging.INFO,
                     'Closing session:%s authorisation_id=%s authentication_id="%s" '
                     'received=%d sent=%d', self._from_to, authorisation_id, user,
                     result.received, result.sent)

        timeout = self._opt.timeout or None
        if self._inetd_pid is not None:
            try:
                result = relay(self._conn, backend, timeout=timeout)
            finally:
                close_socket(backend)
            closing(result)
            return
        # Out of inetd mode nothing else holds the client socket (the server
        # hands connections to the event loop): the hub takes it as it is.
        self._handed_over = True
        relay_hub().add(self._conn, backend, timeout=timeout, on_done=closing,
                        label=self._from_to)


def _ids(cred: Credentials, route: Route | None) -> tuple[str, str]:
    """perdition's ``authorisation_id=`` value (``NONE`` or quoted) and
    ``authentication_id``: the name carried on (mapped, ``-U``) takes the
    place of the SASL authzid if the client gave one, else of the login name."""
    name = route.authorisation_id if route is not None else (cred.authzid or cred.user)
    if cred.authzid is None:
        return "NONE", name
    return f'"{name}"', cred.user
