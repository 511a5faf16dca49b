"""Usage: seccomp_exec.py ALLOWED_FILE PROGRAM ARG...

Loads a seccomp filter that allows the system calls named in ALLOWED_FILE (one a line) and fails
every other one with EPERM, then execs PROGRAM: what systemd does for `SystemCallFilter=` with
`SystemCallErrorNumber=EPERM`, for a test without a running systemd. Needs no_new_privs (or
CAP_SYS_ADMIN), as a filter may not be loaded otherwise. libseccomp through ctypes: plain
system calls only, so it runs under any Python the test's user can start.
"""

import ctypes
import errno
import os
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
NR_SCMP_ERROR = -1


def scmp_act_errno(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


def main() -> None:
    allowed_file, argv = sys.argv[1], sys.argv[2:]
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(errno.EPERM))
    if not ctx:
        sys.exit("seccomp_init failed")
    with open(allowed_file) as f:
        names = [line.strip() for line in f if line.strip()]
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == NR_SCMP_ERROR:
            continue  # not a system call of this architecture
        rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
        if rc < 0:
            sys.exit(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        sys.exit(f"seccomp_load failed: {os.strerror(-rc)}")
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
