"""A lock on a training run's folder, so that two runs never write into the same `project/name` at once.

Two trainings with `exist_ok=True` and the same name would otherwise share `weights/` and `results.csv`: one reads the
other's half-written `best.pt`, and the csv interleaves both runs under one header. The lock is a file in the run
folder holding the owner's PID and host, created atomically (O_CREAT | O_EXCL). A lock whose process is gone (a killed
run, before its resume) is taken over with a warning; a live one stops the second run before it writes anything.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ultralytics.utils import LOGGER

LOCK_NAME = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another live process is training into this run folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


class RunLock:
    """`RunLock(folder).acquire()` ... `.release()`; re-acquiring in the owning process is allowed (a trainer rebuilt in
    the same Python session, e.g. a resume after an exception)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def owner(self) -> dict | None:
        """The recorded owner {'pid', 'host', 'started'}, or None when there is no lock (or an unreadable one)."""
        try:
            owner = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError, OSError):
            return None
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale(me)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunFolderLocked(f"could not take the lock {self.path}: other processes keep creating it")

    def _clear_stale(self, me: dict) -> None:
        """Remove the existing lock if its owner is gone (or is this process); raise if it is alive."""
        owner = self.owner()
        if owner is None:  # unreadable: a writer between create and write, or a torn file; treat as stale if old
            if time.time() - self.path.stat().st_mtime < 5:
                time.sleep(0.5)
                return
            LOGGER.warning(f"{self.path} is unreadable; taking the run folder over")
        elif owner["pid"] == me["pid"] and owner.get("host") == me["host"]:
            pass  # this process's own lock, left by a trainer that did not finish
        elif owner.get("host") != me["host"]:
            raise RunFolderLocked(
                f"run folder {self.folder} is in use by process {owner['pid']} on host {owner.get('host')} (since "
                f"{owner.get('started')}). Use another name= (or exist_ok=False), or delete {self.path} if that "
                f"process is gone"
            )
        elif pid_alive(owner["pid"]):
            raise RunFolderLocked(
                f"run folder {self.folder} is in use by another training, process {owner['pid']} (since "
                f"{owner.get('started')}). Wait for it to finish, or use another name= (or exist_ok=False)"
            )
        else:
            LOGGER.warning(
                f"run folder {self.folder} was locked by process {owner['pid']}, which is gone (a killed run?); "
                f"taking it over"
            )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            owner = self.owner()
            if owner and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
