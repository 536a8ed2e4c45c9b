"""Jobs several docks start: load a checkpoint, embed the current dataset.

They run in workers and land in the shared state on the GUI thread; the canvas shows the
results (see :mod:`.canvas`), whichever dock started them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from . import backend
from .state import StemState
from .workers import Failure, ProgressRelay, alive, start_function


def _if_alive(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    """Call ``callback`` unless it is a method of a widget that has been deleted meanwhile."""

    def call(*args: Any) -> None:
        if callback is not None and alive(getattr(callback, "__self__", None)):
            callback(*args)

    return call


def load_model(state: StemState, path: str, *, on_loaded: Callable[[Any], None] | None = None,
               on_failure: Callable[[Failure], None] | None = None,
               on_finished: Callable[[], None] | None = None) -> Any:
    """Load a checkpoint in a worker, then make it the state's model."""

    def loaded(model: Any) -> None:
        state.set_model(model)
        _if_alive(on_loaded)(model)

    state.busy_changed.emit("load", True)

    def finished() -> None:
        state.busy_changed.emit("load", False)
        _if_alive(on_finished)()

    return start_function(backend.load_checkpoint, str(path), "cpu",
                          what=f"Loading the checkpoint {path}", on_result=loaded,
                          on_failure=_if_alive(on_failure), on_finished=finished)


class EmbeddingJob:
    """Embeds the state's dataset with the state's model (one at a time; stoppable).

    The pass keeps its reconstructions (float16; in memory up to ``memory_budget`` bytes, else
    a memory-mapped file under ``directory``, a temporary folder by default), which land in the
    state with the embeddings, so the Inspector shows them without decoding again.
    """

    def __init__(self, state: StemState) -> None:
        self.state = state
        self.keep_reconstructions = True
        self.memory_budget: int | None = None  # None: the store's default
        self.directory: str | None = None
        self.relay = ProgressRelay()
        self.worker: Any = None
        self.stop_event = threading.Event()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, on_finished: Callable[[], None] | None = None) -> Any:
        state = self.state
        if state.model is None or state.dataset is None:
            raise RuntimeError("embedding needs a dataset and a model")
        if self.worker is not None:
            return self.worker
        self.stop_event = threading.Event()
        loaded, dataset = state.model, state.dataset

        def result(out: tuple | None) -> None:
            if out is None:
                return
            embeddings, maps, store = out
            if state.model is loaded and state.dataset is dataset:
                state.set_reconstructions(store)
                state.set_embeddings(embeddings, maps)
            elif store is not None:  # made for a model or dataset no longer shown
                store.close()

        def finished() -> None:
            self.worker = None
            state.busy_changed.emit("embed", False)
            _if_alive(on_finished)()

        state.busy_changed.emit("embed", True)
        self.worker = start_function(
            backend.embed_and_score, loaded, dataset, state.device, self.relay, self.stop_event,
            keep_reconstructions=self.keep_reconstructions, memory_budget=self.memory_budget,
            directory=self.directory, what=f"Embedding {dataset.name}", on_result=result,
            on_finished=finished)
        return self.worker

    def stop(self) -> None:
        self.stop_event.set()


def embedding_job(state: StemState) -> EmbeddingJob:
    """The state's one embedding job (so every dock sees the same progress)."""
    job = getattr(state, "_embedding_job", None)
    if job is None:
        job = EmbeddingJob(state)
        state._embedding_job = job  # type: ignore[attr-defined]
    return job
