"""A minimal ctypes binding to libspnav (the spacenavd client library, Debian `libspnav0`).

PyPI's `spnav` 0.9 binds a Python 2 C-API symbol and cannot be imported on Python 3, so we
bind the four C calls we need ourselves. libspnav connects to `$SPNAV_SOCKET` when it is set,
else to spacenavd's default socket.
"""

from __future__ import annotations

import ctypes
import ctypes.util

EVENT_MOTION, EVENT_BUTTON = 1, 2


class MotionEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("x", ctypes.c_int), ("y", ctypes.c_int), ("z", ctypes.c_int),
                ("rx", ctypes.c_int), ("ry", ctypes.c_int), ("rz", ctypes.c_int),
                ("period", ctypes.c_uint), ("data", ctypes.POINTER(ctypes.c_int))]


class ButtonEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("press", ctypes.c_int), ("bnum", ctypes.c_int)]


class Event(ctypes.Union):
    # libspnav 1.0 adds device / config events to the union; the padding covers them.
    _fields_ = [("type", ctypes.c_int), ("motion", MotionEvent), ("button", ButtonEvent),
                ("_pad", ctypes.c_char * 256)]


class SpnavError(OSError):
    """libspnav is missing or spacenavd is not reachable."""


class Spnav:
    """An open connection to spacenavd. `poll()` never blocks."""

    def __init__(self):
        name = ctypes.util.find_library("spnav") or "libspnav.so.0"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError as err:
            raise SpnavError(f"cannot load libspnav ({name}): install the libspnav0 package") from err
        self._lib.spnav_poll_event.argtypes = [ctypes.POINTER(Event)]
        if self._lib.spnav_open() == -1:
            raise SpnavError("cannot connect to spacenavd: is the daemon running (or SPNAV_SOCKET set)?")
        self._event = Event()
        self._open = True

    def poll(self) -> Event | None:
        """The next pending event, or None."""
        return self._event if self._lib.spnav_poll_event(ctypes.byref(self._event)) else None

    def close(self) -> None:
        if self._open:
            self._lib.spnav_close()
            self._open = False
