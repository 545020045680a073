"""Real QEMU as an interpreter of traces (design §10): the same actions, run on Debian's
``qemu-system-x86_64`` through qtest and QMP, with the server played on real fds.

``qtest.py`` speaks the two control protocols, ``machine.py`` owns one QEMU process and the
guest-side programming of its ivshmem device (``../shared/qemu-qtest-notes.md``),
``channel.py`` is the socket between the server and one endpoint (it holds messages until the
trace delivers them), and ``backend.py`` maps each action onto them.
"""
