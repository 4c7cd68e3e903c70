"""The llama.cpp worker behind `LlamaCppBackend`: a loaded model, its one worker thread, and
the jobs the event loop hands it (see `backends/llamacpp.py` for the threading invariants).

A model is loaded once per process per (file, context, threads) and shared; its worker takes
jobs from a queue in order, posts tokens back with `call_soon_threadsafe`, and stops after the
token it is computing when a job's stop flag is set.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tokenrelay.backends.base import FinishChunk, GenerationSettings
from tokenrelay.backends.machine import Threads, cpu_has_amx
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import Usage
from tokenrelay.progress import human_size, note

#: models this large get "loading..." / "loaded in" notes on stderr
_NOTE_LOAD_BYTES = 200_000_000

#: free text (not grammar-bound output) is sampled with a mild penalty on the last 64 tokens:
#: small models otherwise fall into loops ("a city that's so special, and it's a city that's…")
#: that run to max_tokens. Grammar-bound output (JSON actions) keeps 1.0: it must repeat keys.
REPEAT_PENALTY = 1.1


@dataclass
class _Job:
    """One generation request, shared between the event loop and the model's worker."""

    messages: list[dict[str, str]] | None
    prompt: str | None
    settings: GenerationSettings
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[str | FinishChunk | BaseException]
    stop: threading.Event = field(default_factory=threading.Event)
    generated: int = 0

    def post(self, item: str | FinishChunk | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stop.set()


@dataclass
class _Call:
    """A function to run on the model's worker thread (scoring, constrained completion)."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    stop: threading.Event = field(default_factory=threading.Event)

    def post(self, ok: bool, value: Any) -> None:
        def settle() -> None:
            if not self.future.done():
                if ok:
                    self.future.set_result(value)
                else:
                    self.future.set_exception(value)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed
            pass


class _LoadedModel:
    """A `Llama` plus its chat formatter and its single worker thread."""

    def __init__(self, path: Path, n_ctx: int, threads: Threads) -> None:
        from llama_cpp import Llama, llama_chat_format

        from tokenrelay.backends.llamacpp_local import PromptStates

        self.path = path
        self.threads = threads
        with _no_extra_buffer_types() if cpu_has_amx() else contextlib.nullcontext():
            self.llama = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads.decode,
                n_threads_batch=threads.batch,
                verbose=False,
            )
        self.n_ctx = n_ctx
        self.states = PromptStates(self.llama)
        eos_id = self.llama.token_eos()
        bos_id = self.llama.token_bos()
        model = self.llama._model
        template = self.llama.metadata.get("tokenizer.chat_template")
        if template is None:
            raise ConfigError(f"{path.name} has no chat template in its metadata; use an instruct/chat model")
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        self._grammars: dict[str, Any] = {}
        self._pieces: dict[int, bytes] = {}
        self._jobs: queue.SimpleQueue[_Job | _Call] = queue.SimpleQueue()
        self.tokens_generated = 0
        self.busy = False
        self._thread = threading.Thread(target=self._work, name=f"llamacpp-{path.stem}", daemon=True)
        self._thread.start()

    def submit(self, job: _Job | _Call) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if isinstance(job, _Call):
                self._call(job)
                continue
            if job.stop.is_set():
                job.post(FinishChunk("cancelled"))
                continue
            self.busy = True
            try:
                self._generate(job)
            except BaseException as exc:  # reported to the consumer, never kills the worker
                job.post(exc)
            finally:
                self.busy = False

    def _call(self, call: _Call) -> None:
        if call.stop.is_set():
            return
        self.busy = True
        try:
            value = call.fn()
        except BaseException as exc:  # reported to the caller, never kills the worker
            call.post(False, exc)
        else:
            call.post(True, value)
        finally:
            self.busy = False

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.formatter(messages=cast(Any, messages)).prompt

    def _grammar(self, settings: GenerationSettings) -> Any:
        if settings.grammar is None and settings.json_schema is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar

        key = settings.grammar or json.dumps(settings.json_schema, sort_keys=False)
        grammar = self._grammars.get(key)
        if grammar is None:
            if settings.grammar is not None:
                grammar = LlamaGrammar.from_string(settings.grammar, verbose=False)
            else:
                grammar = LlamaGrammar.from_json_schema(key, verbose=False)
            self._grammars[key] = grammar
        return grammar

    def piece(self, token: int) -> bytes:
        """The bytes of one token (memoised: pieces never change for a loaded model)."""
        cached = self._pieces.get(token)
        if cached is None:
            import ctypes

            import llama_cpp

            size = 64
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(self.llama._model.vocab, token, buf, size, 0, False)
                if n >= 0:
                    break
                size = -n
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def tokenize_prompt(self, job: _Job) -> list[int]:
        """The prompt's tokens. llama-cpp-python's Jinja formatter always reports its special
        tokens as added (so no extra BOS): a rendered prompt is tokenized the same way."""
        text = job.prompt if job.prompt is not None else self.render(job.messages or [])
        tokens: list[int] = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def _generate(self, job: _Job) -> None:
        import llama_cpp

        settings = job.settings
        prompt = self.tokenize_prompt(job)
        room = self.n_ctx - len(prompt)
        if room < min(settings.max_tokens or 16, 16):
            raise BackendError(
                f"the prompt is {len(prompt)} tokens, which does not fit the model's context of {self.n_ctx}"
            )
        max_tokens = min(settings.max_tokens or room, room)
        self.llama.set_seed(settings.seed if settings.seed is not None else random.getrandbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = settings.stop
        pending = ""  # text held back because it may be the start of a stop sequence
        vocab = self.llama._model.vocab
        piece = self.piece
        reason = "length"
        free_text = settings.grammar is None and settings.json_schema is None
        generator = self.llama.generate(
            prompt,
            temp=settings.temperature,
            top_p=settings.top_p,
            top_k=40,
            min_p=0.05,
            repeat_penalty=REPEAT_PENALTY if free_text else 1.0,
            grammar=self._grammar(settings),
        )
        try:
            for token in generator:
                if job.stop.is_set():
                    reason = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                job.generated += 1
                self.tokens_generated += 1
                text = decoder.decode(piece(token))
                if text:
                    if stops:
                        pending += text
                        cut, stopped = _hold_back(pending, stops)
                        if cut:
                            job.post(cut)
                        pending = pending[len(cut) :]
                        if stopped:
                            pending = ""
                            decoder.reset()
                            reason = "stop"
                            break
                    else:
                        job.post(text)
                if job.generated >= max_tokens:
                    break
        finally:
            generator.close()
        tail = pending + decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            job.post(tail)
        job.post(FinishChunk(reason, Usage(prompt_tokens=len(prompt), completion_tokens=job.generated)))


def _hold_back(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Split `text` into what can be emitted now and whether a stop sequence was hit.

    Emits everything before a stop sequence; otherwise everything except a suffix that
    could still grow into one.
    """
    first = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if first >= 0:
        return text[:first], True
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return text[: len(text) - keep], False


@contextlib.contextmanager
def _no_extra_buffer_types() -> Iterator[None]:
    """Load with `use_extra_bufts = false`: no weights repacked for AMX. llama.cpp's AMX matmul
    crashes (a general protection fault at `ldtilecfg`) on some AMX machines, this project's CI
    VMs among them: the tile config can be optimised away and worker threads never ask the
    kernel for AMX state (ggml-org/llama.cpp#20824, PR #26954). `Llama()` builds its model
    parameters from `llama_model_default_params()` and loads at once, so that function is
    swapped for the load (under `_MODELS_LOCK`, the only place this process loads a model)."""
    import llama_cpp.llama_cpp as lib

    defaults = lib.llama_model_default_params

    def without_extra() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without_extra
    try:
        yield
    finally:
        lib.llama_model_default_params = defaults


_MODELS: dict[tuple[str, int, Threads], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _load(path: Path, n_ctx: int, threads: Threads) -> _LoadedModel:
    key = (str(path), n_ctx, threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            try:
                size = path.stat().st_size
            except OSError:
                size = 0
            started = time.monotonic()
            if size >= _NOTE_LOAD_BYTES:
                note(f"loading {path.name} ({human_size(size)})...")
            try:
                model = _LoadedModel(path, n_ctx, threads)
            except (ValueError, RuntimeError, OSError) as exc:
                raise ConfigError(f"cannot load GGUF model {path}: {exc}") from None
            if size >= _NOTE_LOAD_BYTES:
                note(
                    f"{path.name} loaded in {time.monotonic() - started:.1f} s "
                    f"(context {n_ctx} tokens, threads {threads.decode}/{threads.batch})"
                )
            _MODELS[key] = model
        return model
