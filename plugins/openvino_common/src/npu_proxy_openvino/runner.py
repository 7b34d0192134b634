"""What a loaded language model runs generations with.

:class:`TextGenerator` is the narrow seam between the async model wrapper and OpenVINO:
one blocking call per generation that streams pieces through a callback. The
``LLMPipeline`` implementation serves one stream at a time; a
``ContinuousBatchingPipeline`` implementation (several streams per device) fits the
same protocol, since each call is independent and owns its own config and callback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import tokens
from .options import GenerationSpec, apply_options
from .streaming import Finished, PieceCallback, stream_in_thread


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one finished (or cancelled) generation produced, with measured figures.

    ``finish`` is ``"stop"``, ``"length"`` or ``"cancelled"``. Durations are ns;
    token counts are ``None`` when the pipeline did not report them. ``cached_tokens``
    of the prompt were read from the prefix cache (at least that many; 0 when the
    generator cannot vouch for any). ``logprobs``: each generated token's text and
    log-probability, when asked for and reported.
    """

    text: str
    finish: str
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ns: int
    generate_ns: int
    cached_tokens: int = 0
    logprobs: tuple[tuple[str, float], ...] = ()


class GenerationStream(Protocol):
    """One generation's text pieces, then exactly one ``Finished(outcome)``.

    A device error is raised while iterating. ``aclose()`` stops the generation at the
    next token and returns once the device no longer holds it; :attr:`outcome` is set
    once the device is done, also when the consumer left early.
    """

    @property
    def outcome(self) -> Outcome | None: ...

    def __aiter__(self) -> AsyncIterator[str | Finished[Outcome]]: ...

    async def aclose(self) -> None: ...


class TextGenerator(Protocol):
    """A model resident on a device that can generate text.

    ``reports_logprobs``: its outcomes carry each token's log-probability when asked.
    """

    reports_logprobs: bool

    def configure(self, spec: GenerationSpec) -> Any:
        """The per-request config :meth:`stream` takes, built from ``spec`` (blocking).

        Starts from the model's own ``GenerationConfig`` so its EOS and stop token ids
        survive; a generator whose pipeline lives in another process may return ``spec``.
        """

    def stream(self, prompt: tuple[int, ...], config: Any) -> GenerationStream:
        """Start generating from ``prompt``, the rendered prompt's token ids (call on
        the loop)."""

    def close(self) -> None:
        """Release the device memory (blocking). No call follows."""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """What :meth:`LLMPipelineGenerator.stream` takes: the request's
    ``GenerationConfig`` and whether its text keeps the special tokens."""

    generation: Any
    special_tokens: bool = False


class ThreadedStream:
    """A :class:`GenerationStream` over a blocking ``run(on_piece)`` on its own thread."""

    def __init__(self, run: Callable[[PieceCallback], Outcome]) -> None:
        self.outcome: Outcome | None = None

        def recorded(on_piece: PieceCallback) -> Outcome:
            self.outcome = run(on_piece)  # also seen when the consumer left early
            return self.outcome

        self._inner = stream_in_thread(recorded)

    def __aiter__(self) -> ThreadedStream:
        return self

    async def __anext__(self) -> str | Finished[Outcome]:
        return await self._inner.__anext__()

    async def aclose(self) -> None:
        await self._inner.aclose()


class LLMPipelineGenerator:
    """:class:`TextGenerator` over ``openvino_genai.LLMPipeline`` (or an imitation).

    The pipeline handles one generation at a time (openvino.genai#2480): callers
    serialise, which the model wrapper does with a semaphore. Its results give one
    score per sequence, not per token, so it reports no logprobs.
    """

    reports_logprobs = False

    def __init__(self, pipeline: Any) -> None:
        import openvino_genai

        self._pipe = pipeline
        self._running = openvino_genai.StreamingStatus.RUNNING
        self._cancel = openvino_genai.StreamingStatus.CANCEL
        self._length = openvino_genai.GenerationFinishReason.LENGTH
        self._stop = openvino_genai.GenerationFinishReason.STOP

    def new_config(self) -> Any:
        return self._pipe.get_generation_config()

    def configure(self, spec: GenerationSpec) -> PipelineConfig:
        generation = apply_options(self.new_config(), spec.options,
                                   max_new_tokens=spec.max_new_tokens,
                                   structured_schema=spec.structured_schema)
        return PipelineConfig(generation, spec.special_tokens)

    def stream(self, prompt: tuple[int, ...], config: PipelineConfig) -> ThreadedStream:
        return ThreadedStream(lambda on_piece: self.run(prompt, config, on_piece))

    def run(self, prompt: tuple[int, ...], config: PipelineConfig,
            on_piece: PieceCallback) -> Outcome:
        """Generate from the token ids ``prompt``; blocking. ``on_piece`` returns False
        to stop."""
        import openvino_genai

        first_piece = 0
        cancelled = False
        pieces: list[str] = []

        def streamer(piece: str) -> Any:
            nonlocal first_piece, cancelled
            if not first_piece:
                first_piece = time.perf_counter_ns()
            pieces.append(piece)
            if on_piece(piece):
                return self._running
            cancelled = True
            return self._cancel

        start = time.perf_counter_ns()
        # Token ids in: EncodedResults out (finish reasons, perf metrics); the text is
        # what was streamed.
        text_streamer: Any = streamer
        if config.special_tokens:
            # GenAI's own detokenizer, told to keep the special tokens
            text_streamer = openvino_genai.TextStreamer(
                self._pipe.get_tokenizer(), streamer, {"skip_special_tokens": False})
        result = self._pipe.generate(tokens.ids_tensor(prompt), config.generation,
                                     text_streamer)
        end = time.perf_counter_ns()
        text = "".join(pieces)
        reason = result.finish_reasons[0] if getattr(result, "finish_reasons", None) else None
        if cancelled:
            finish = "cancelled"
        elif reason == self._length:
            finish = "length"
        else:
            finish = "stop"
        metrics = getattr(result, "perf_metrics", None)
        prompt_tokens = completion_tokens = None
        ttft_ns = (first_piece or end) - start
        generate_ns = end - start
        if metrics is not None:
            prompt_tokens = int(metrics.get_num_input_tokens())
            completion_tokens = int(metrics.get_num_generated_tokens())
            # GenAI times the first token itself; the first streamed piece can lag it
            # because the detokenizer holds back incomplete words.
            ttft_ns = int(metrics.get_ttft().mean * 1e6) or ttft_ns
            generate_ns = int(metrics.get_generate_duration().mean * 1e6) or generate_ns
        return Outcome(text, finish, prompt_tokens, completion_tokens, ttft_ns, generate_ns)

    def close(self) -> None:
        self._pipe = None
