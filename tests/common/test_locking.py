"""Writer locks: a second writer fails naming the holder; a dead holder's lock is recovered."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from policylab.common.locking import LockError, RunDirLock, WriterLock, read_holder

HOLDER = textwrap.dedent("""
    import sys
    from policylab.common.locking import RunDirLock
    lock = RunDirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
""")


def _start_holder(run_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_naming_the_holder_then_gets_the_lock(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(LockError) as err:
            RunDirLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {holder.pid}" in message
        assert socket.gethostname() in message
        assert str(tmp_path) in message
        assert ".writer.lock" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / ".writer.lock").exists()  # released on exit
    with RunDirLock(tmp_path) as lock:
        assert read_holder(lock.path)["pid"] == os.getpid()
    assert not (tmp_path / ".writer.lock").exists()


def test_lock_of_a_killed_holder_is_recovered(tmp_path):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert read_holder(tmp_path / ".writer.lock")["pid"] == holder.pid  # the stale lock file is left
    with pytest.warns(UserWarning, match=f"stale writer lock.*pid {holder.pid}"):
        lock = RunDirLock(tmp_path).acquire()
    assert read_holder(lock.path)["pid"] == os.getpid()
    lock.release()


def test_one_process_shares_its_lock_and_releases_on_the_last_release(tmp_path):
    first, second = WriterLock(tmp_path / "x.lock").acquire(), WriterLock(tmp_path / "x.lock").acquire()
    first.release()
    assert (tmp_path / "x.lock").exists()
    second.release()
    assert not (tmp_path / "x.lock").exists()
    lock = WriterLock(tmp_path / "x.lock").acquire()
    del lock  # garbage collection releases it too
    assert not (tmp_path / "x.lock").exists()
