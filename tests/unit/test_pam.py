"""perditionpy.pam in-process against the real libpam (no mocks).

Each test writes its own PAM service into a directory of its own and points
libpam at it with ``pam_start_confdir`` (the ``confdir`` argument), so nothing
in /etc/pam.d is read or touched.  Passwords are checked by pam_matrix (from
Debian's libpam-wrapper; only the module is used here, not the preload), the
client address by pam_succeed_if, refusals by pam_deny.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from perditionpy import _pam_ffi as raw
from perditionpy import pam
from tests.conftest import require
from tests.support.pamwrap import matrix_service, pam_matrix_module

USERS = {"alice": "alice-pw", "bob": "bob-pw", "dave": "dave-pw"}


def service(tmp_path: Path, text: str, name: str = "pam.d") -> str:
    confdir = tmp_path / name
    confdir.mkdir()
    (confdir / "perdition").write_text(text)
    return str(confdir)


@pytest.fixture
def matrix(tmp_path: Path) -> str:
    """A confdir whose ``perdition`` service is pam_matrix with ``USERS``; dave may
    authenticate but his account is for another service."""
    require(pam_matrix_module() is not None, "libpam-wrapper (pam_matrix.so)")
    return str(matrix_service(tmp_path / "matrix", USERS, services={"dave": "imap"}).service_dir)


def check(user: str, password: str, confdir: str, rhost: str | None = "192.0.2.7"
          ) -> pam.PamResult:
    return pam.authenticate(user, password, rhost=rhost, confdir=confdir)


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("protocol", "text"), [
    ("IMAP4", "Authentication failure"), ("IMAP4S", "Authentication failure"),
    ("POP3", "Authentication failure, mate"), ("POP3S", "Authentication failure, mate"),
])
def test_failure_texts_are_perditions(protocol: str, text: str) -> None:
    assert pam.failure_text(protocol) == text


def test_managesieve_has_no_local_authentication() -> None:
    with pytest.raises(pam.PamError, match="MANAGESIEVE"):
        pam.failure_text("MANAGESIEVE")


@pytest.mark.parametrize(("client", "expected"), [
    (None, None), (("192.0.2.1", 4000), "192.0.2.1"), (("2001:db8::1", 4000, 0, 0), "2001:db8::1"),
    (("::ffff:192.0.2.9", 4000, 0, 0), "192.0.2.9"), (("::FFFF:192.0.2.9", 1), "192.0.2.9"),
])
def test_rhost(client: tuple[object, ...] | None, expected: str | None) -> None:
    assert pam.rhost(client) == expected


# --------------------------------------------------------------------------- verdicts


def test_permit_and_deny(tmp_path: Path) -> None:
    permit = service(tmp_path, "auth required pam_permit.so\naccount required pam_permit.so\n")
    assert check("anyone", "x", permit).ok
    deny = service(tmp_path, "auth required pam_deny.so\naccount required pam_permit.so\n",
                   "deny")
    result = check("anyone", "x", deny)
    assert (result.ok, result.step, result.reason) == (False, "pam_authenticate",
                                                       "Authentication failure")


def test_right_password_passes_both_steps(matrix: str) -> None:
    result = check("alice", "alice-pw", matrix)
    assert result == pam.PamResult(True, messages=((raw.PAM_PROMPT_ECHO_OFF, "Password: "),))


@pytest.mark.parametrize(("user", "password"), [
    ("alice", "bob-pw"), ("alice", ""), ("alice", "alice-pw "), ("nobody-here", "x"),
    ("Alice", "alice-pw"),
])
def test_wrong_credentials_are_refused(matrix: str, user: str, password: str) -> None:
    result = check(user, password, matrix)
    assert not result.ok
    assert result.step == "pam_authenticate"


def test_account_management_can_refuse_a_right_password(matrix: str) -> None:
    result = check("dave", "dave-pw", matrix)
    assert (result.ok, result.step) == (False, "pam_acct_mgmt")


def test_nul_bytes_never_reach_pam(matrix: str) -> None:
    # C would cut "alice-pw\0junk" to "alice-pw", the right password.
    for user, password in (("alice", "alice-pw\0junk"), ("alice\0x", "alice-pw")):
        result = check(user, password, matrix)
        assert (result.ok, result.step, result.messages) == (False, "input", ())


def test_eight_bit_passwords_reach_pam_byte_for_byte(tmp_path: Path) -> None:
    require(pam_matrix_module() is not None, "libpam-wrapper (pam_matrix.so)")
    confdir = matrix_service(tmp_path / "m", {"utf": "caf\u00e9 \"q\" \\"}).service_dir
    passdb = tmp_path / "m.passdb"
    passdb.write_bytes(passdb.read_bytes() + b"latin:\xe9t\xe9\xff:perdition\n")
    assert check("utf", "caf\u00e9 \"q\" \\", str(confdir)).ok
    # What the protocol engines hand over for the non-UTF-8 bytes e9 74 e9 ff.
    assert check("latin", b"\xe9t\xe9\xff".decode("utf-8", "surrogateescape"), str(confdir)).ok
    assert not check("latin", "\u00e9t\u00e9\u00ff", str(confdir)).ok


def test_client_address_is_pam_rhost(tmp_path: Path) -> None:
    confdir = service(tmp_path, "auth required pam_succeed_if.so rhost = 192.0.2.7\n"
                                "account required pam_permit.so\n")
    assert check("alice", "x", confdir, rhost="192.0.2.7").ok
    assert not check("alice", "x", confdir, rhost="192.0.2.8").ok
    assert not check("alice", "x", confdir, rhost=None).ok


# --------------------------------------------------------------------------- the conversation


def test_notices_are_heard_not_answered(tmp_path: Path) -> None:
    require(pam_matrix_module() is not None, "libpam-wrapper (pam_matrix.so)")
    confdir = str(matrix_service(tmp_path / "m", USERS, module_options="verbose").service_dir)
    good = check("alice", "alice-pw", confdir)
    assert good.ok
    assert (raw.PAM_TEXT_INFO, "Authentication succeeded") in good.messages
    bad = check("alice", "nope", confdir)
    assert not bad.ok
    assert (raw.PAM_ERROR_MSG, "Authentication failed") in bad.messages


def test_a_visible_prompt_is_not_answered_with_the_password(tmp_path: Path) -> None:
    require(pam_matrix_module() is not None, "libpam-wrapper (pam_matrix.so)")
    confdir = str(matrix_service(tmp_path / "m", USERS, module_options="echo").service_dir)
    result = check("alice", "alice-pw", confdir)
    assert not result.ok
    assert result.messages == ((raw.PAM_PROMPT_ECHO_ON, "Password: "),)
    assert "only a person could answer" in result.reason


def test_concurrent_transactions_keep_their_own_passwords(matrix: str) -> None:
    """Each thread's conversation answers with its own password (appdata_ptr)."""
    results: dict[int, bool] = {}
    start = threading.Barrier(32)

    def login(index: int) -> None:
        user = ("alice", "bob")[index % 2]
        right = index % 3 != 0
        password = USERS[user] if right else USERS["bob" if user == "alice" else "alice"]
        start.wait()
        for _ in range(10):
            if check(user, password, matrix).ok != right:
                results[index] = False
                return
        results[index] = True

    threads = [threading.Thread(target=login, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == dict.fromkeys(range(32), True)


# --------------------------------------------------------------------------- PAM unusable


def test_a_missing_libpam_is_an_error_not_a_pass() -> None:
    with pytest.raises(pam.PamError, match="cannot load libpam-not-here.so.0"):
        pam.authenticate("alice", "x", rhost=None, soname="libpam-not-here.so.0")


def test_pam_start_failing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(pam.PamError, match="pam_start"):
        check("alice", "x", str(tmp_path / "no-such-dir"))


def test_a_broken_stack_refuses_and_says_so(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    confdir = service(tmp_path, "auth required pam_no_such_module.so\n"
                                "account required pam_permit.so\n")
    with caplog.at_level(logging.ERROR, logger="perditionpy.pam"):
        result = check("alice", "x", confdir)
    assert not result.ok
    assert "PAM service perdition is not usable" in caplog.text
