"""Test infrastructure: real servers and processes the integration and compat tests drive.

* ``dovecot``    a private Dovecot (IMAP, POP3, ManageSieve) with test users and mailboxes;
* ``procs``      perditionpy and the reference perdition 2.2 as child processes;
* ``tap``        a recording TCP relay to see the exact bytes a back-end exchanged;
* ``badservers`` hostile back-ends for bad-input tests;
* ``ports``      free loopback ports and greeting-based readiness checks.
"""
