#!/usr/bin/env bash
# The one list of Debian packages the test suite and the demo need, and their
# installation. Idempotent and silent when everything is present.
#
# As root: installs what is missing (apt-get update + install, non-interactive),
# with a temporary policy-rc.d so package scripts do not start system daemons.
# (Where one already runs it does not matter: the tests start private servers on
# free high ports, and the demo uses ports 14110 and 14143.)
# As another user: lists what is missing and how to install it, then exits 0 so
# the parts of the suite that need no system package still run.
set -euo pipefail

PACKAGES=(
    make                 # the Makefile itself (not part of Debian's gcc)
    python3-venv         # python3 -m venv on Debian
    python3-dev          # Python.h: mysqlclient (pip) builds against Debian's python3
    ca-certificates      # pip talking to PyPI
    dovecot-imapd        # the real back-end: IMAP ...
    dovecot-pop3d        # ... POP3 ...
    dovecot-managesieved # ... and ManageSieve
    perdition            # perdition 2.2, the reference for differential tests
    perdition-ldap       # ... and its map libraries
    perdition-mysql
    perdition-postgresql
    mariadb-server       # real map servers, started privately by the tests
    mariadb-client
    libmariadb-dev       # mysqlclient (pip) builds against it
    pkg-config
    postgresql
    slapd
    ldap-utils
    libdb5.3             # the Berkeley DB map (loaded with cffi)
    libnsl2              # the NIS map (yp_match, loaded with cffi)
    tinycdb              # cdb(1), to cross-check the CDB map
    ypserv               # a real NIS server for the NIS map (run in private namespaces)
    rpcbind
    libpam-wrapper       # pam_wrapper + pam_matrix for the PAM tests
    sieve-connect        # a real ManageSieve client
    nginx                # make bench: NGINX mail proxy side by side
    libnginx-mod-mail
    libgdbm6             # the GDBM map (loaded with cffi)
    openssl              # test certificates
    curl                 # the demo's ready-to-paste client commands
)

missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
            echo "$package"
        fi
    done
}

main() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "install-deps: not a Debian system; install the equivalents of: ${PACKAGES[*]}" >&2
        return 0
    fi
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing Debian packages: ${missing[*]}" >&2
        echo "install-deps: as root run: $0   (tests that need them are skipped)" >&2
        return 0
    fi
    install_packages "${missing[@]}"
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# added by perditionpy scripts/install-deps.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        trap "rm -f '$policy'" EXIT  # expanded now: $policy is local
    fi
    echo "install-deps: installing: $*" >&2
    local log
    log=$(mktemp)
    if ! { apt-get update -q &&
        apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef \
            -o Dpkg::Options::=--force-confold "$@"; } >"$log" 2>&1 </dev/null; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-deps: apt-get failed" >&2
        return 1
    fi
    rm -f "$log"
}

main "$@"
