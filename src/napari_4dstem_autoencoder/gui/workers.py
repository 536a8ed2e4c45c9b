"""Background work for the docks: napari thread workers that report errors as notifications.

Worker functions never touch widgets or layers. Their results come back to the GUI thread
through the worker's signals; progress from library callbacks (``progress(done, total)``) is
relayed through a Qt signal, which Qt queues to the GUI thread.

Exceptions are caught inside the worker and turned into a :class:`Failure`, so the dock shows
one clear notification (``show_error``) and re-enables its buttons, instead of napari's generic
traceback dialog.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal


@dataclass(frozen=True)
class Failure:
    """What a worker returns or yields instead of raising."""

    message: str
    exception: BaseException | None = None


class ProgressRelay(QObject):
    """``relay(done, total)`` may be called from any thread; ``progressed`` fires on the GUI thread."""

    progressed = Signal(int, int)

    def __call__(self, done: int, total: int) -> None:
        self.progressed.emit(int(done), int(total))


def alive(obj: Any) -> bool:
    """False once the C++ side of a Qt object is gone (a closed dock), for any Qt binding."""
    if obj is None or not hasattr(obj, "objectName"):
        return True
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _guarded(fn: Callable[..., Any], what: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # every failure becomes a notification, never a crash
            return Failure(f"{what} failed: {describe(exc)}", exc)

    return run


def _guarded_gen(gen_fn: Callable[..., Iterator[Any]], what: str) -> Callable[..., Iterator[Any]]:
    def run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from gen_fn(*args, **kwargs)
        except Exception as exc:
            yield Failure(f"{what} failed: {describe(exc)}", exc)

    return run


def _finish_and_release(worker: Any, on_finished: Callable[[], None] | None, owner: Any,
                        signals: tuple[str, ...]) -> None:
    """Run ``on_finished`` when the worker ends, then drop every slot connected here.

    Qt keeps connected slots (and what their closures hold, e.g. a dock) alive as long as the
    worker's signal object lives; disconnecting lets a closed viewer be freed at once.
    """

    def finished() -> None:
        try:
            if on_finished is not None and alive(owner):
                on_finished()
        finally:
            for name in signals:
                try:
                    getattr(worker, name).disconnect()
                except (TypeError, RuntimeError):
                    pass

    worker.finished.connect(finished)


def start_function(fn: Callable[..., Any], *args: Any, what: str,
                   on_result: Callable[[Any], None],
                   on_failure: Callable[[Failure], None] | None = None,
                   on_finished: Callable[[], None] | None = None, owner: Any = None,
                   **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in a worker; ``on_result`` gets its return value on the GUI thread.

    Failures are shown with ``show_error`` and passed to ``on_failure``; ``on_finished``
    runs in every case (use it to re-enable buttons). With ``owner`` (a widget), the
    callbacks are skipped once it has been deleted (its dock closed meanwhile).
    """
    worker = create_worker(_guarded(fn, what), *args, _start_thread=False, **kwargs)

    def returned(value: Any) -> None:
        if not alive(owner):
            return
        if isinstance(value, Failure):
            show_error(value.message)
            if on_failure is not None:
                on_failure(value)
        else:
            on_result(value)

    worker.returned.connect(returned)
    _finish_and_release(worker, on_finished, owner, ("returned", "finished"))
    worker.start()
    return worker


def start_generator(gen_fn: Callable[..., Iterator[Any]], *args: Any, what: str,
                    on_yield: Callable[[Any], None],
                    on_finished: Callable[[], None] | None = None, owner: Any = None,
                    **kwargs: Any) -> Any:
    """Run a generator in a worker; each yielded value goes to ``on_yield`` on the GUI thread.

    An exception ends the generator with a yielded :class:`Failure` (shown with ``show_error``
    before ``on_yield`` sees it).
    """
    worker = create_worker(_guarded_gen(gen_fn, what), *args, _start_thread=False, **kwargs)

    def yielded(value: Any) -> None:
        if isinstance(value, Failure):
            show_error(value.message)
        if alive(owner):
            on_yield(value)

    worker.yielded.connect(yielded)
    _finish_and_release(worker, on_finished, owner, ("yielded", "finished"))
    worker.start()
    return worker


class LatestOnly:
    """Run one request at a time in a worker; requests made meanwhile collapse to the newest.

    Used where the user can ask faster than the work runs (inspector clicks, traversal
    sliders): stale requests are dropped, the last one always runs.
    """

    def __init__(self, fn: Callable[..., Any], on_result: Callable[[Any, Any], None],
                 what: str, owner: Any = None) -> None:
        self._owner = owner
        self._fn = fn
        self._on_result = on_result
        self._what = what
        self._pending: tuple[Any, tuple, dict] | None = None
        self._worker: Any = None
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def submit(self, key: Any, *args: Any, **kwargs: Any) -> None:
        self._pending = (key, args, kwargs)
        if self._worker is None:
            self._next()

    def _next(self) -> None:
        if self._pending is None:
            self._worker = None
            return
        key, args, kwargs = self._pending
        self._pending = None

        def result(value: Any, key: Any = key) -> None:
            # only deliver when no newer request is waiting (it will deliver instead)
            if self._pending is None:
                self._on_result(key, value)

        self._worker = start_function(self._fn, *args, what=self._what, on_result=result,
                                      on_finished=self._next, owner=self._owner, **kwargs)

    def quit(self) -> None:
        self._pending = None
