"""A training run's directory: its config and config history, and an exclusive lock.

    workdir/config.json            the config the run trains with now (what `sample`,
                                   `likelihood` and `evaluate` read)
    workdir/config_history.jsonl   one JSON line per start or resume: the changes it made
                                   to config.json ({"key": [old, new]}), or a revert
    workdir/lock                   held (flock) by the trainer; it names the holder's PID
    workdir/checkpoints*/, metrics.jsonl, tensorboard/, samples/   (see train, checkpoints)

Every write here is atomic (a temporary file, then `os.replace`), so a crash or a full
disk leaves the previous file whole. The lock is an `fcntl.flock` on an open file: the
kernel drops it when its process dies, even by `kill -9`, so a stale lock never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time

import ml_collections

from scoresde.errors import UserError

CONFIG = "config.json"
HISTORY = "config_history.jsonl"
LOCK = "lock"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG)


def _atomic_write(path: str, text: str):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def check_writable(directory: str) -> str:
    """Make `directory` (and its parents) and check that a file can be written there, before
    any long work whose result would go there; a UserError in one line otherwise."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise UserError(f"Cannot write to {directory!r}: {err.strerror}. Choose another output with --out.") from None
    return directory


def save_config(workdir: str, config):
    os.makedirs(workdir, exist_ok=True)
    _atomic_write(config_path(workdir), config.to_json(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The (locked) config.json of a workdir; a missing, empty or garbled one is a UserError."""
    if not os.path.isdir(workdir):
        raise UserError(f"No workdir {workdir!r}. Train first: scoresde train --config <name> --workdir {workdir}")
    path = config_path(workdir)
    if not os.path.exists(path):
        raise UserError(f"{workdir!r} has no config.json: it is not a scoresde workdir (train into it first).")
    try:
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({type(err).__name__}: {err}); its history is in "
                        f"{os.path.join(workdir, HISTORY)}.") from None
    config.lock()
    return config


def flat(config) -> dict:
    """{"section.key": value} of a config (values as JSON would hold them)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = value

    walk("", json.loads(config.to_json()))
    return out


def changes(old, new) -> dict:
    """{"key": [old value, new value]} for every key whose value differs (None: absent)."""
    a, b = flat(old), flat(new)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def record(workdir: str, event: str, **fields):
    """Append one line to config_history.jsonl (a torn last line is ignored by `history`)."""
    line = json.dumps({"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields})
    with open(os.path.join(workdir, HISTORY), "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def history(workdir: str) -> list[dict]:
    """The readable lines of config_history.jsonl, oldest first."""
    try:
        with open(os.path.join(workdir, HISTORY)) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


class Lock:
    """An exclusive lock on a workdir for one writer (a trainer), as a context manager.

    A second holder gets a UserError naming the first one's PID. Nothing is taken on a
    process other than jax's process 0 (multi-host runs share one directory).
    """

    def __init__(self, workdir: str, purpose: str = "train", enabled: bool = True):
        self.path, self.purpose, self.enabled, self._fd = os.path.join(workdir, LOCK), purpose, enabled, None

    def __enter__(self):
        if not self.enabled:
            return self
        workdir = os.path.dirname(self.path)
        try:
            os.makedirs(workdir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"Cannot write to the workdir {workdir!r}: {err.strerror}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{workdir!r} is in use by {holder}; wait for it to finish or use another --workdir.") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} ({self.purpose})\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
