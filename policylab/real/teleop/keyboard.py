"""Key input: pynput on an X display, or a scripted timeline (tests, headless runs).

Key names are normalised: printable keys are their character ("c", "s", "q"); others are
pynput's names ("space", "backspace", "enter", "esc").
"""

from __future__ import annotations

import collections
import threading
import time

from policylab.common.extras import require
from policylab.real.teleop.base import KeyInput


class PynputKeys(KeyInput):
    """Global key presses through pynput; needs an X display (`DISPLAY`), e.g. Xvfb in CI."""

    def __init__(self):
        self._events: collections.deque[str] = collections.deque()
        self._held: set[str] = set()
        self._listener = None

    def start(self, wait: bool = True) -> None:
        require("pynput", extra="real")  # not installed: the hint; installed, X missing: the error below
        try:
            from pynput import keyboard
        except ImportError as err:  # pynput raises ImportError when it cannot reach X
            raise RuntimeError(f"pynput keys need an X display (DISPLAY); {err}. "
                               "Use keyboard=scripted for a headless run.") from err
        self._listener = keyboard.Listener(on_press=self._on_press, on_release=self._on_release)
        self._listener.start()
        if wait:
            self._listener.wait()

    @staticmethod
    def _name(key) -> str:
        char = getattr(key, "char", None)
        return char if char else getattr(key, "name", str(key))

    def _on_press(self, key) -> None:
        name = self._name(key)
        if name not in self._held:  # auto-repeat while held is not a new press
            self._events.append(name)
        self._held.add(name)

    def _on_release(self, key) -> None:
        self._held.discard(self._name(key))

    def held_keys(self) -> set[str]:
        return set(self._held)

    def stop(self, wait: bool = True) -> None:
        if self._listener is not None:
            self._listener.stop()
            if wait:
                self._listener.join(1.0)
            self._listener = None

    @property
    def is_ready(self) -> bool:
        return self._listener is not None and self._listener.running

    def get_press_events(self) -> list[str]:
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events


class ScriptedKeys(KeyInput):
    """Presses keys at fixed offsets from `start()`: `events = [[0.5, "c"], [2.0, "s"], ...]` (s, key).

    `"+name"` holds a key down from then on (one press of it), `"-name"` releases it.
    """

    def __init__(self, events=()):
        self.events = sorted((float(t), str(k)) for t, k in events)
        self._t0 = None
        self._next = 0
        self._lock = threading.Lock()

    def start(self, wait: bool = True) -> None:
        self._t0, self._next = time.monotonic(), 0

    def stop(self, wait: bool = True) -> None:
        self._t0 = None

    @property
    def is_ready(self) -> bool:
        return self._t0 is not None

    def get_press_events(self) -> list[str]:
        if self._t0 is None:
            return []
        now = time.monotonic() - self._t0
        with self._lock:
            out = []
            while self._next < len(self.events) and self.events[self._next][0] <= now:
                key = self.events[self._next][1]
                self._next += 1
                if not key.startswith("-") or len(key) == 1:
                    out.append(key[1:] if key.startswith("+") and len(key) > 1 else key)
        return out

    def held_keys(self) -> set[str]:
        if self._t0 is None:
            return set()
        now, held = time.monotonic() - self._t0, set()
        for t, key in self.events:
            if t > now:
                break
            if len(key) > 1 and key[0] == "+":
                held.add(key[1:])
            elif len(key) > 1 and key[0] == "-":
                held.discard(key[1:])
        return held
