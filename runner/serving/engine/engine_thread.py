"""The engine on a thread of its own, for the server: other threads (the asyncio server's)
submit requests and get their tokens through callbacks, called on the engine thread.

    engine_thread = EngineThread(engine)
    engine_thread.start()
    def on_event(event):                  # called on the engine thread
        loop.call_soon_threadsafe(queue.put_nowait, event)
    seq_id = engine_thread.submit(prompt_ids, max_tokens=64, ignore_eos=False, on_event=on_event)
    engine_thread.cancel(seq_id)          # the client went away
    engine_thread.stop()

Only the engine thread touches the engine (and so the learner's scheduler): submit and cancel
put commands on a queue it drains between steps, so each request's events come in order.
The first exception in a step (a SchedulerError, a bug in the learner's code, anything) stops
the engine for good: it is kept in `failure`, and every pending and later request gets it as
its event, so no client waits for ever.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from runner.serving.engine.engine import LLMEngine, TokenEvent
from runner.serving.engine.scheduling import SchedulerError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineFailure:
    """Why the engine stopped: `message` for a client or the learner, `traceback` for logs,
    `rule` when a SchedulerError named one."""

    message: str
    traceback: str
    rule: str | None = None


EventCallback = Callable[[TokenEvent | EngineFailure], None]


class EngineThread:
    def __init__(self, engine: LLMEngine, *, idle_sleep_s: float = 0.05) -> None:
        # The idle wait ends as soon as a command arrives; idle_sleep_s only bounds it.
        self.engine = engine
        self.idle_sleep_s = idle_sleep_s
        self.failure: EngineFailure | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._ids_lock = threading.Lock()
        self._callbacks: dict[int, EventCallback] = {}  # engine thread only
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this EngineThread was already started")
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5) -> None:
        """End the thread after the current step. Requests still pending get no more events."""
        self._stopping.set()
        self._commands.put(None)  # wake it if idle
        # From a callback (on the engine thread itself) there is nothing to wait for.
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def submit(
        self,
        prompt_ids,
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        on_event: EventCallback,
    ) -> int:
        """Queue a request; its events go to on_event, on the engine thread. Raises ValueError
        at once for a request that cannot run (empty, too long...). Thread-safe."""
        prompt = self.engine.check_request(prompt_ids, max_tokens=max_tokens)
        if not self.is_running:
            raise RuntimeError("the engine thread is not running")
        with self._ids_lock:
            seq_id = next(self._ids)
        self._commands.put(("add", seq_id, prompt, max_tokens, ignore_eos, on_event))
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """Stop a request; no event follows the ones already delivered. Thread-safe."""
        self._commands.put(("cancel", seq_id))

    # --- the engine thread ---

    def _run(self) -> None:
        while not self._stopping.is_set():
            busy = self.failure is None and self.engine.has_unfinished()
            self._drain(wait=not busy)
            if self._stopping.is_set():
                break
            if self.failure is None and self.engine.has_unfinished():
                self._guarded(self._step)

    def _drain(self, *, wait: bool) -> None:
        try:
            command = self._commands.get(timeout=self.idle_sleep_s) if wait else None
            while True:
                if command is not None:
                    self._apply(command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _apply(self, command: tuple) -> None:
        if command[0] == "add":
            _, seq_id, prompt, max_tokens, ignore_eos, on_event = command
            if self.failure is not None:
                self._deliver(seq_id, on_event, self.failure)
                return
            try:
                self.engine.add_request(
                    prompt, max_tokens=max_tokens, ignore_eos=ignore_eos, seq_id=seq_id
                )
            except ValueError as exc:
                self._deliver(seq_id, on_event, EngineFailure(str(exc), traceback.format_exc()))
                return
            self._callbacks[seq_id] = on_event
        elif command[0] == "cancel":
            seq_id = command[1]
            if self._callbacks.pop(seq_id, None) is not None and self.failure is None:
                self._guarded(lambda: self.engine.abort(seq_id))

    def _step(self) -> None:
        for event in self.engine.step():
            on_event = self._callbacks.get(event.seq_id)
            if on_event is None:
                continue  # added to the engine directly, not through submit
            if event.finished:
                del self._callbacks[event.seq_id]
            self._deliver(event.seq_id, on_event, event)

    def _guarded(self, action: Callable[[], None]) -> None:
        # The learner's code runs inside: whatever it raises (even SystemExit) stops the
        # engine, never the thread, so later requests still get an answer.
        try:
            action()
        except BaseException as exc:
            message = (
                str(exc) if isinstance(exc, SchedulerError) else f"{type(exc).__name__}: {exc}"
            )
            self.failure = EngineFailure(
                message, traceback.format_exc(), getattr(exc, "rule", None)
            )
            logger.error("the engine failed: %s", message)
            pending, self._callbacks = self._callbacks, {}
            for seq_id, on_event in pending.items():
                self._deliver(seq_id, on_event, self.failure)

    def _deliver(self, seq_id: int, on_event: EventCallback, event) -> None:
        try:
            on_event(event)
        except Exception:
            # A broken listener loses its request, not the engine.
            logger.exception("event callback for request %s failed; cancelling it", seq_id)
            if self._callbacks.pop(seq_id, None) is not None and self.failure is None:
                self._guarded(lambda: self.engine.abort(seq_id))
