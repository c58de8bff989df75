"""pam_wrapper for tests: a private PAM service directory and the environment that makes
a child process use it instead of /etc/pam.d.

``matrix_service(dir, {"alice": "pw"})`` writes a ``perdition`` service that checks
passwords with pam_matrix against a password file of its own (Debian package
``libpam-wrapper``); ``stack_service(dir, text)`` writes any service text (our
etc/pam.d/perdition, say) beside copies of the system's ``common-*`` files it
includes, so the real modules run on a stack we chose.  ``wrapped.env()`` is what
the child needs: ``LD_PRELOAD=libpam_wrapper.so PAM_WRAPPER=1
PAM_WRAPPER_SERVICE_DIR=<dir>``.

pam_wrapper only intercepts ``pam_*`` calls that are looked up through the global
symbol scope; perditionpy.pam does exactly that.
"""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PamWrapper",
    "matrix_service",
    "pam_matrix_module",
    "pam_wrapper_library",
    "stack_service",
]

SERVICE = "perdition"
_LIBRARY_GLOBS = ("/usr/lib/*/libpam_wrapper.so", "/usr/lib/libpam_wrapper.so",
                  "/usr/lib64/libpam_wrapper.so", "/usr/local/lib/libpam_wrapper.so")


def pam_wrapper_library() -> Path | None:
    """The preloadable ``libpam_wrapper.so``, or ``None`` when it is not installed."""
    for pattern in _LIBRARY_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def pam_matrix_module() -> Path | None:
    """``pam_matrix.so`` (shipped beside libpam_wrapper.so), or ``None``."""
    library = pam_wrapper_library()
    if library is None:
        return None
    module = library.parent / "pam_wrapper" / "pam_matrix.so"
    return module if module.exists() else None


@dataclass(frozen=True)
class PamWrapper:
    """A service directory for pam_wrapper and, for pam_matrix, its password file."""

    service_dir: Path
    passdb: Path | None = None

    def env(self) -> dict[str, str]:
        library = pam_wrapper_library()
        if library is None:
            raise RuntimeError("libpam_wrapper.so is not installed (libpam-wrapper)")
        return {"LD_PRELOAD": str(library), "PAM_WRAPPER": "1",
                "PAM_WRAPPER_SERVICE_DIR": str(self.service_dir)}


def _fallback(service_dir: Path) -> None:
    # An explicit "other" that refuses keeps libpam from complaining that it has none.
    (service_dir / "other").write_text("auth required pam_deny.so\n"
                                       "account required pam_deny.so\n")


def matrix_service(service_dir: Path, users: Mapping[str, str], *,
                   services: Mapping[str, str] | None = None,
                   module_options: str = "") -> PamWrapper:
    """A ``perdition`` service where pam_matrix knows ``users`` (name → password).

    ``services`` gives a user another allowed service than ``perdition``, which makes
    pam_matrix's account check (pam_acct_mgmt) refuse them.  ``module_options`` is
    appended to the auth line (``verbose``, ``echo``).
    """
    module = pam_matrix_module()
    if module is None:
        raise RuntimeError("pam_matrix.so is not installed (libpam-wrapper)")
    service_dir.mkdir(parents=True, exist_ok=True)
    passdb = service_dir.parent / f"{service_dir.name}.passdb"
    lines = []
    for name, password in users.items():
        if ":" in name or ":" in password or "\n" in name + password:
            raise ValueError(f"pam_matrix cannot store {name!r}")
        lines.append(f"{name}:{password}:{(services or {}).get(name, SERVICE)}\n")
    passdb.write_text("".join(lines))
    (service_dir / SERVICE).write_text(
        f"auth required {module} passdb={passdb} {module_options}\n"
        f"account required {module} passdb={passdb}\n")
    _fallback(service_dir)
    return PamWrapper(service_dir, passdb)


def stack_service(service_dir: Path, text: str, *,
                  includes: Iterable[str] = ("common-auth", "common-account"),
                  system_dir: Path = Path("/etc/pam.d")) -> PamWrapper:
    """A ``perdition`` service with ``text``, beside copies of the system's ``includes``."""
    service_dir.mkdir(parents=True, exist_ok=True)
    (service_dir / SERVICE).write_text(text)
    for name in includes:
        shutil.copyfile(system_dir / name, service_dir / name)
    _fallback(service_dir)
    return PamWrapper(service_dir)
