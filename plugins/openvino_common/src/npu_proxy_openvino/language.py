"""A language model resident on a device: requests in, core events out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from npu_proxy.engine.backend import LoadedModel
from npu_proxy.engine.errors import BackendError, InvalidRequestError, PromptTooLongError
from npu_proxy.engine.types import (
    Done,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

from .chat import ToolCallFilter, active_tools, forced_tool_schema, render_prompt
from .options import GenerationSpec, response_schema, validate_options
from .prompt import is_prepared, prompt_ids
from .reasoning import (
    ThinkingBudget,
    ThinkingSplitter,
    continuation,
    count_reasoning_tokens,
    markers_for,
    opens_thinking,
)
from .runner import Outcome, TextGenerator
from .stops import StopStringFilter
from .streaming import Finished

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Limits:
    """What the device accepts: ``prompt`` tokens (None: no own limit) and ``context``."""

    prompt: int | None
    context: int


@dataclass(frozen=True, slots=True)
class PreparedGeneration:
    """A request ready for the device: its prompt's token ids, counted, configured.
    ``spec`` is what ``config`` was made from and ``context`` the tokens prompt and
    answer may fill together (to configure a continuation)."""

    prompt: tuple[int, ...]
    prompt_tokens: int
    config: Any
    tool_names: frozenset[str]
    spec: GenerationSpec
    context: int


def prepare_generation(
    request: GenerationRequest,
    tokenizer: Any,
    limits: Limits,
    configure: Callable[[GenerationSpec], Any],
    where: str,
    special_tokens: bool = False,
) -> PreparedGeneration:
    """Check and configure ``request``; blocking when the prompt was not prepared by the
    engine (then rendered and tokenized here), no device work. ``special_tokens``: the
    answer is decoded with special tokens kept (see :class:`GenerationSpec`).

    Raises :class:`PromptTooLongError` when the prompt exceeds the device's prompt limit
    or leaves no room in the context, and ``InvalidRequestError`` for bad options.
    """
    options = validate_options(request.options)
    prompt = prompt_ids(tokenizer, request)
    count = len(prompt)
    if limits.prompt is not None and count > limits.prompt:
        raise PromptTooLongError(count, limits.prompt, where)
    context = min(limits.context, options.num_ctx or limits.context)
    if count >= context:
        raise PromptTooLongError(count, context - 1, f"the context of {request.model}")
    room = context - count
    max_new = min(options.max_tokens or room, room)
    tools = active_tools(request)
    schema = response_schema(request.response_format)
    if tools and request.tool_choice != "auto":
        # "required" or a named tool: constrain the answer to a well-formed call.
        schema = forced_tool_schema(tools)
    spec = GenerationSpec(options, max_new, schema, special_tokens)
    return PreparedGeneration(prompt, count, configure(spec), frozenset(t.name for t in tools),
                              spec, context)


class OpenVINOLanguageModel(LoadedModel):
    """A chat/completion model on one device.

    At most ``max_parallel`` generations touch the device at once (a semaphore, in
    addition to the engine's own guarantee, because a busy ``LLMPipeline`` fails a
    second request instead of queueing it): 1 over an ``LLMPipeline``, the batch size
    over a ``ContinuousBatchingPipeline``.
    """

    def __init__(
        self,
        info: ModelInfo,
        device: str,
        generator: TextGenerator,
        tokenizer: Any,
        limits: Limits,
        max_parallel: int = 1,
    ) -> None:
        self.info = info
        self.device = device
        self.size = info.size
        self._generator = generator
        self._tokenizer = tokenizer
        self._limits = limits
        self._slots = asyncio.Semaphore(max_parallel)
        #: Usage of the last generation that reached the device, cancelled ones included.
        self.last_usage: Usage | None = None
        self._opens_thinking: bool | None = None  # see _thinking_splitter

    def render_prompt(self, request: GenerationRequest) -> str:
        """The exact prompt text the device reads for ``request`` (blocking)."""
        return render_prompt(self._tokenizer, request)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream text (and tool calls), then one :class:`Done` with measured usage.

        Text ends before the first of the caller's stop strings, and ``Done.stop_sequence``
        names that string (None when the answer ended another way or became tool calls).

        See :meth:`LoadedModel.generate` for the contract. ``PromptTooLongError`` is
        raised before the device is touched; the device is free when ``aclose()``
        returns; ``FinishReason.TOOL_CALLS`` when the answer was parsed as tool calls.
        """
        start = time.perf_counter_ns()
        if request.options.logprobs and not self._generator.reports_logprobs:
            raise InvalidRequestError(
                f"logprobs are not available on the {self.device} for {self.info.name}: "
                "only continuous batching (CPU or GPU, NPU_PROXY_CONTINUOUS_BATCHING=1) "
                "reports each token's log-probability",
                param="logprobs",
            )
        splitter = await self._thinking_splitter(request)
        arguments = (request, self._tokenizer, self._limits, self._generator.configure,
                     f"the {self.device}", splitter is not None and splitter.markers.special)
        # A prompt the engine prepared needs no tokenizer here: only checks and a config,
        # done on the loop (a thread hop would only delay the first token).
        prepared = (prepare_generation(*arguments) if is_prepared(request)
                    else await asyncio.to_thread(prepare_generation, *arguments))
        tool_filter = ToolCallFilter(set(prepared.tool_names)) if prepared.tool_names else None
        budget = (ThinkingBudget(request.thinking_budget)
                  if splitter is not None and request.thinking_budget is not None else None)
        thinking: list[str] = []
        outcomes: list[Outcome] = []
        stops = StopStringFilter(request.options.stop) if request.options.stop else None
        prompt, config = prepared.prompt, prepared.config
        out_of_room = False  # the reasoning used every token the answer had
        async with self._slots:
            while True:
                generated: list[str] = []
                stream = self._generator.stream(prompt, config)
                try:
                    async for item in stream:
                        if isinstance(item, Finished):
                            break
                        generated.append(item)
                        if budget is not None and splitter is not None:
                            budget.spend(splitter)
                        text = stops.feed(item) if stops else item
                        for event in _split(text, splitter, tool_filter, thinking):
                            yield event
                        if stops and stops.hit is not None:
                            # The answer is over; closing the stream stops the device at
                            # the next token even if GenAI's own stop check did not fire.
                            break
                        if budget is not None and splitter is not None and budget.spent(
                                splitter):
                            break
                except (PromptTooLongError, asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:
                    raise _device_error(exc, self.device, prepared.prompt_tokens) from exc
                finally:
                    await stream.aclose()
                    if stream.outcome is not None:
                        outcomes.append(stream.outcome)
                        self.last_usage = _usage(
                            joined(outcomes), prepared.prompt_tokens, start)
                if budget is None or not budget.cut:
                    break
                # The reasoning used its budget: close it as the model would have, and
                # let the model answer from there (the prompt's part is read from the
                # prefix cache where there is one).
                budget = None
                assert splitter is not None
                for event in _split(splitter.markers.close, splitter, tool_filter, thinking):
                    yield event
                continued = await asyncio.to_thread(
                    continuation, self._tokenizer, prompt, "".join(generated),
                    splitter.markers)
                left = min(prepared.spec.max_new_tokens - sum(
                    o.completion_tokens or 0 for o in outcomes), prepared.context - len(
                    continued))
                if left <= 0:
                    out_of_room = True
                    break
                prompt = continued
                config = self._generator.configure(replace(prepared.spec, max_new_tokens=left))
        outcome = joined(outcomes)
        assert self.last_usage is not None
        usage = self.last_usage
        stop_sequence = stops.hit if stops else None
        if stop_sequence is not None:
            finish = FinishReason.STOP
        elif out_of_room or outcome.finish == "length":
            finish = FinishReason.LENGTH
        else:
            finish = FinishReason.STOP
        held = stops.finish() if stops else ""
        for event in _split(held, splitter, tool_filter, thinking, last=True):
            yield event
        if tool_filter is not None:
            text, calls = tool_filter.finish()
            if text:
                yield TextDelta(text)
            for call in calls:
                yield ToolCallDelta(call)
            if calls:
                finish = FinishReason.TOOL_CALLS
                stop_sequence = None
        reasoning = await asyncio.to_thread(
            count_reasoning_tokens, self._tokenizer, "".join(thinking)
        ) if thinking else 0
        logprobs = tuple(TokenLogprob(t, lp) for t, lp in outcome.logprobs)
        yield Done(finish_reason=finish, usage=usage, stop_sequence=stop_sequence,
                   reasoning_tokens=reasoning, logprobs=logprobs)

    async def _thinking_splitter(self, request: GenerationRequest) -> ThinkingSplitter | None:
        """A splitter for a reasoning model's chat; None for a raw prompt or a model
        that does not reason. Whether its template opens the thinking is learnt once."""
        markers = markers_for(self.info.family, self.info.template)
        if markers is None or request.messages is None:
            return None
        if self._opens_thinking is None:
            self._opens_thinking = await asyncio.to_thread(
                opens_thinking, self._tokenizer, markers
            )
        return ThinkingSplitter(markers, inside=self._opens_thinking)

    async def unload(self) -> None:
        async with self._slots:
            await asyncio.to_thread(self._generator.close)


def _split(
    text: str,
    splitter: ThinkingSplitter | None,
    tool_filter: ToolCallFilter | None,
    thinking: list[str],
    *,
    last: bool = False,
) -> list[TextDelta | ThinkingDelta]:
    """The events of a piece of answer: reasoning (kept in ``thinking`` too) split off
    first, then the rest through the tool-call filter. ``last``: the generation ended."""
    parts = splitter.feed(text) if splitter and text else [("text", text)] if text else []
    if last and splitter:
        parts += splitter.finish()
    events: list[TextDelta | ThinkingDelta] = []
    for kind, part in parts:
        if kind == "thinking":
            thinking.append(part)
            events.append(ThinkingDelta(part))
            continue
        shown = tool_filter.feed(part) if tool_filter and part else part
        if shown:
            events.append(TextDelta(shown))
    return events


def joined(outcomes: list[Outcome]) -> Outcome:
    """One outcome for a generation that ran in several legs (reasoning cut at its
    budget, then the answer): the first leg's prompt and first token, every leg's
    tokens and time. A last leg that never ran (no room left) finishes as length."""
    first, last = outcomes[0], outcomes[-1]
    if len(outcomes) == 1:
        return first
    return Outcome(
        text="".join(o.text for o in outcomes),
        finish=last.finish,
        prompt_tokens=first.prompt_tokens,
        completion_tokens=sum(o.completion_tokens or 0 for o in outcomes),
        ttft_ns=first.ttft_ns,
        generate_ns=sum(o.generate_ns for o in outcomes),
        cached_tokens=first.cached_tokens,
        logprobs=tuple(lp for o in outcomes for lp in o.logprobs),
    )


def _usage(outcome: Outcome, counted: int, start: int) -> Usage:
    prefill = outcome.ttft_ns
    return Usage(
        prompt_tokens=outcome.prompt_tokens if outcome.prompt_tokens is not None else counted,
        completion_tokens=outcome.completion_tokens or 0,
        cached_tokens=outcome.cached_tokens,
        prefill_duration=prefill,
        decode_duration=max(outcome.generate_ns - prefill, 0),
        total_duration=time.perf_counter_ns() - start,
    )


def _device_error(exc: Exception, device: str, prompt_tokens: int) -> Exception:
    """An engine error for a failure inside GenAI; details go to the log, not the client."""
    message = str(exc)
    if "MAX_PROMPT_LEN" in message:
        # The device's own limit check fired (our count disagreed with its count).
        return PromptTooLongError(prompt_tokens, prompt_tokens - 1, f"the {device}")
    log.error("generation failed on %s: %s", device, message)
    return BackendError(f"generation failed on {device}")
