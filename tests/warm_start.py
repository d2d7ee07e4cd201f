"""Warm start-ups for the end-to-end tests: `fairseq-train` and `fairseq-generate` forked from one
interpreter that has already imported torch, torchvision, timm and fairseq.

Why: on 2 cores a fresh fairseq-train spends about 14 s importing before it reads its first option, while the
micro runs of the tests train for one or two seconds; start-ups were most of the end-to-end suite's time.

What stays as in a fresh process: the command line (sys.argv, argv[0] included), the working directory, the
environment, stdin/stdout/stderr (the caller's own file descriptors, passed over a Unix socket), the
process group, the exit status (a code, or death by the same signal), and the signals the caller's process
receives (forwarded). Nothing of fairseq_cli or of the plugin is imported before the fork: each run imports
fairseq_cli.train / fairseq_cli.generate and `--user-dir ofa_prompt` itself, so fairseq_cli's logging set-up
and the plugin's registration happen in the run as they do in a fresh one. The thread count follows
OMP_NUM_THREADS as it would at torch's import.

What differs: the pid of the process that was started is the shim's, not the run's (the tests of signals
and locks that look at pids call the real entry points), and fairseq's import-time notice "Please install
tensorboardX" is printed once by the server, not by each run.

Without a server (the unit tests, or OFA_PROMPT_COLD_START=1) the shims exec the real entry points.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import time

ENTRIES = {"fairseq-train": "fairseq_cli.train", "fairseq-generate": "fairseq_cli.generate"}

SHIM = r'''#!{python} -S
# fairseq's {name}, forked from the warm interpreter of tests/warm_start.py if one runs, else the real one
import json, os, signal, socket, struct, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.connect({socket_path!r})
except OSError:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
message = json.dumps(dict(name={name!r}, argv=sys.argv, cwd=os.getcwd(), env=dict(os.environ),
                          pgid=os.getpgrp())).encode()
socket.send_fds(s, [struct.pack("!Q", len(message)) + message], [0, 1, 2])
replies = s.makefile("r")
pid = int(replies.readline())
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, lambda sig, frame: os.kill(pid, sig))
kind, value = replies.readline().split()
if kind == "signal":  # die the way the run died
    signal.signal(int(value), signal.SIG_DFL)
    os.kill(os.getpid(), int(value))
sys.exit(int(value))
'''


def write_shims(bin_dir: str, socket_path: str, real_bin: str) -> None:
    """The shims in `bin_dir`: the server at `socket_path` if it runs, else the entry points in `real_bin`."""
    os.makedirs(bin_dir, exist_ok=True)
    for name in ENTRIES:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(SHIM.format(python=sys.executable, name=name, socket_path=socket_path,
                                real=os.path.join(real_bin, name)))
        os.chmod(path, 0o755)


def start_server(socket_path: str, timeout: float = 300) -> subprocess.Popen:
    """The warm interpreter, listening at `socket_path` once its imports are done."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    server = subprocess.Popen([sys.executable, __file__, socket_path], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not os.path.exists(socket_path):
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            raise RuntimeError("the warm interpreter did not start: " + server.stderr.read().decode()[-3000:])
        time.sleep(0.1)
    return server


# --- the server ---------------------------------------------------------------------------------------
def _serve(socket_path: str) -> None:
    import logging

    pristine = (list(logging.root.handlers), logging.root.level)
    import fairseq  # noqa: F401  (its import configures the root logger: the state a fresh run starts from)

    after_fairseq = (list(logging.root.handlers), logging.root.level)
    # what fairseq_cli and the plugin import, without importing either: they are imported in each run
    import fairseq_cli.generate  # noqa: F401
    import fairseq_cli.train  # noqa: F401
    import timm.layers  # noqa: F401
    import timm.models.resnet  # noqa: F401
    for name in [m for m in sys.modules if m.startswith("fairseq_cli.")]:
        del sys.modules[name]
    del sys.modules["fairseq_cli"].train, sys.modules["fairseq_cli"].generate
    logging.root.handlers[:] = pristine[0]
    logging.root.setLevel(pristine[1])  # setLevel: also drops the loggers' cached levels

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path + ".tmp")
    listener.listen(16)
    os.rename(socket_path + ".tmp", socket_path)  # the shims connect once the imports are done
    while True:
        conn, _ = listener.accept()
        sys.stdout.flush(), sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            _handle(conn, after_fairseq)  # never returns
        conn.close()
        while True:  # reap the handlers that are done
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _handle(conn, after_fairseq) -> None:
    """One run: fork it, tell the shim its pid, wait, tell the shim how it ended. A shim that goes away
    (killed) takes its run with it."""
    header, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = struct.unpack("!Q", header[:8])[0]
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    request = json.loads(body)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run(request, fds, after_fairseq)  # never returns
    for fd in fds:
        os.close(fd)
    conn.sendall(b"%d\n" % pid)
    conn.setblocking(False)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        try:
            if conn.recv(1) == b"":  # the shim is gone
                os.kill(pid, 9)
        except BlockingIOError:
            pass
        time.sleep(0.05)
    conn.setblocking(True)
    reply = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    try:
        conn.sendall(reply.encode() + b"\n")
    except OSError:
        pass
    os._exit(0)


def _run(request, fds, after_fairseq) -> None:
    import atexit
    import importlib
    import logging
    import signal

    import torch

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    try:
        os.setpgid(0, request["pgid"])  # the caller's process group: its killpg and Ctrl-C reach the run
    except OSError:
        pass
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:  # torch read the server's (unset) value at import
        torch.set_num_threads(int(threads))
    sys.argv = request["argv"]
    code = 0
    try:
        entry = importlib.import_module(ENTRIES[request["name"]])
        if not logging.root.handlers:  # fairseq_cli.train configures logging first; others get fairseq's
            logging.root.handlers[:] = after_fairseq[0]
            logging.root.setLevel(after_fairseq[1])
        entry.cli_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # as the interpreter does: sys.excepthook (the plugin may have set its own)
        sys.excepthook(type(e), e, e.__traceback__)
        code = -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush(), sys.stderr.flush()
    if code < 0:  # like a fresh interpreter interrupted by Ctrl-C: die by the signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    _serve(sys.argv[1])
