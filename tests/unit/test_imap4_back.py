"""Transcripts of the IMAP4 back-end login: what perdition 2.2 sends to the
real server, and how each answer is judged."""

from __future__ import annotations

from perditionpy.protocol.base import NEED_DATA, LoginResult, LoginStatus, ToBackend, ToClient
from perditionpy.protocol.imap4 import Imap4BackendLogin, next_tag

OURS = b"[CAPABILITY IMAP4 IMAP4REV1] perdition ready on localhost 0002bb46"


def talk(login: Imap4BackendLogin, data: bytes) -> list[object]:
    login.receive_data(data)
    events: list[object] = []
    while (ev := login.next_event()) is not NEED_DATA:
        events.append(ev)
        if isinstance(ev, LoginResult):
            break
    return events


def logged_in_until_password(user: str = "user", password: str = "pw") -> Imap4BackendLogin:
    """perdition's dialogue step by step, with a greeting that lists no capabilities."""
    login = Imap4BackendLogin(user, password, our_greeting=OURS)
    assert talk(login, b"* OK Dovecot ready.\r\n") == [ToBackend(b"flim07 CAPABILITY\r\n")]
    assert talk(login, b"* CAPABILITY IMAP4rev1 LITERAL+\r\nflim07 OK Pre-login capabilities\r\n") == [
        ToBackend(b"flim08 LOGIN {%d}\r\n" % len(user.encode("utf-8", "surrogateescape")))]
    return login


def test_a_greeting_that_allows_login_has_login_sent_with_capability() -> None:
    """The same bytes as perdition's dialogue, LOGIN written with CAPABILITY (one
    round trip fewer); CAPABILITY's answer is still read, and the "+" after it
    gets the user."""
    login = Imap4BackendLogin("user", "pw", our_greeting=OURS)
    assert talk(login, b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n") == [
        ToBackend(b"flim07 CAPABILITY\r\nflim08 LOGIN {4}\r\n")]
    assert talk(login, b"* CAPABILITY IMAP4rev1 LITERAL+\r\nflim07 OK Pre-login capabilities\r\n"
                       b"+ OK\r\n") == [ToBackend(b"user {2}\r\n")]
    assert talk(login, b"+ OK\r\n") == [ToBackend(b"pw\r\n")]
    assert talk(login, b"flim08 OK Logged in\r\n") == [
        LoginResult(LoginStatus.OK, server_line=b"OK Logged in")]
    assert login.quit_bytes() == b"flim09 LOGOUT\r\n"


def test_a_greeting_without_imap4rev1_or_with_logindisabled_waits_for_capability() -> None:
    for greeting in (b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n",
                     b"* OK [CAPABILITY IMAP4] hi\r\n",
                     b"* OK [ALERT] IMAP4rev1 hi\r\n",
                     b"* OK [CAPABILITY IMAP4rev1 hi\r\n"):  # no end to the list
        login = Imap4BackendLogin("u", "p", our_greeting=OURS)
        assert talk(login, greeting) == [ToBackend(b"flim07 CAPABILITY\r\n")], greeting


def test_logindisabled_after_a_greeting_that_allowed_login() -> None:
    """A server contradicting its greeting: LOGIN went out already; the attempt
    ends as perdition's does (login disabled), and the LOGOUT that follows does
    not reuse the tag of that LOGIN."""
    login = Imap4BackendLogin("u", "p", our_greeting=OURS)
    talk(login, b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
    (result,) = talk(login, b"* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nflim07 OK done\r\n")
    assert isinstance(result, LoginResult) and result.status is LoginStatus.LOGIN_DISABLED
    assert login.quit_bytes() == b"flim09 LOGOUT\r\n"


def test_with_starttls_the_greeting_capabilities_are_not_used() -> None:
    login = Imap4BackendLogin("u", "p", our_greeting=OURS, starttls=True)
    assert talk(login, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n") == [
        ToBackend(b"flim07 CAPABILITY\r\n")]


def test_full_login_uses_synchronising_literals() -> None:
    login = logged_in_until_password("us er", 'p"w\\')
    assert talk(login, b"+ OK\r\n") == [ToBackend(b'us er {4}\r\n')]
    assert talk(login, b"+ OK\r\n") == [ToBackend(b'p"w\\\r\n')]
    assert talk(login, b"flim08 OK [CAPABILITY IMAP4rev1 X] Logged in\r\n") == [
        LoginResult(LoginStatus.OK, server_line=b"OK [CAPABILITY IMAP4rev1 X] Logged in")]


def test_eight_bit_password_sent_verbatim() -> None:
    login = logged_in_until_password("u", "p\udcffw")
    talk(login, b"+ OK\r\n")
    assert talk(login, b"+ OK\r\n") == [ToBackend(b"p\xffw\r\n")]


def test_rejected_login_then_logout_with_next_tag() -> None:
    login = logged_in_until_password()
    talk(login, b"+ OK\r\n")
    talk(login, b"+ OK\r\n")
    assert talk(login, b"flim08 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n") == [
        LoginResult(LoginStatus.REJECTED, server_line=b"NO [AUTHENTICATIONFAILED] Authentication failed.")]
    assert login.quit_bytes() == b"flim09 LOGOUT\r\n"


def test_untagged_lines_during_login_reach_the_client() -> None:
    login = logged_in_until_password()
    talk(login, b"+ OK\r\n")
    talk(login, b"+ OK\r\n")
    events = talk(login, b"* OK [ALERT] hello\r\nflim08 OK done\r\n")
    assert events == [ToClient(b"* OK [ALERT] hello\r\n"),
                      LoginResult(LoginStatus.OK, server_line=b"OK done")]


def test_bytes_after_the_tagged_ok_are_kept_for_the_relay() -> None:
    login = logged_in_until_password()
    talk(login, b"+ OK\r\n")
    talk(login, b"+ OK\r\n")
    (result,) = talk(login, b"flim08 OK done\r\n* 3 EXISTS\r\n")
    assert isinstance(result, LoginResult) and result.trailing == b"* 3 EXISTS\r\n"


def test_our_own_greeting_is_a_loop() -> None:
    login = Imap4BackendLogin("u", "p", our_greeting=OURS)
    assert talk(login, b"* OK " + OURS + b"\r\n") == [
        LoginResult(LoginStatus.LOOP, server_line=b"* OK " + OURS)]


def test_logindisabled_backend() -> None:
    login = Imap4BackendLogin("u", "p", our_greeting=OURS)
    talk(login, b"* OK hi\r\n")
    (result,) = talk(login, b"* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nflim07 OK done\r\n")
    assert isinstance(result, LoginResult) and result.status is LoginStatus.LOGIN_DISABLED


def test_garbage_greeting_and_eof_are_protocol_errors() -> None:
    login = Imap4BackendLogin("u", "p", our_greeting=OURS)
    (result,) = talk(login, b"HTTP/1.0 200 OK\r\n")
    assert isinstance(result, LoginResult) and result.status is LoginStatus.PROTOCOL_ERROR
    login = Imap4BackendLogin("u", "p", our_greeting=OURS)
    talk(login, b"* OK hi\r\n")
    (result,) = talk(login, b"")
    assert isinstance(result, LoginResult) and result.status is LoginStatus.PROTOCOL_ERROR


def test_tag_sequence() -> None:
    assert next_tag(b"flim07") == b"flim08"
    assert next_tag(b"flim09") == b"flim0a"
    assert next_tag(b"flim0z") == b"flim0A"
    assert next_tag(b"flim0Z") == b"flim10"
