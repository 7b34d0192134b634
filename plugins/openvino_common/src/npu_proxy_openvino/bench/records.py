"""The results of a run and the three ways they print: a table like llama-bench's,
Markdown for sharing, JSON for machines.

Every figure is the median with the minimum and maximum over the repetitions; a record
also holds its raw measurements (in JSON). A test cut short by Ctrl-C keeps the
repetitions it finished, and its ``n`` says how many.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .measure import Batch, EmbedSample, Sample, Stat
from .targets import LoadTime, Target


@dataclass(frozen=True)
class Subject:
    """What a record measured: the target, its model and the facts that go with them."""

    target: str
    kind: str
    model: str
    quantization: str
    facts: dict[str, Any]

    @classmethod
    def of(cls, target: Target, model: str | None = None) -> Subject:
        quantization = target.quantization if model in (None, target.model) else ""
        return cls(target.name, target.kind, model or target.model, quantization,
                   target.facts())

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "target_kind": self.kind, "model": self.model,
                "quantization": self.quantization or None, "target_facts": self.facts}


@dataclass
class GenerationRecord:
    """Chats of one test on one target: ``pp128 tg32`` at a parallelism, or an agent's
    turns. Each batch is ``parallel`` requests sent together."""

    subject: Subject
    workload: str  # "generation" or "agent"
    test: str
    parallel: int
    prompt_asked: int | None
    gen_asked: int
    batches: list[Batch] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return [s for b in self.batches for s in b.samples]

    def stats(self) -> dict[str, Stat | None]:
        samples = self.samples
        return {
            "ttft_s": Stat.of(s.ttft for s in samples),
            "prefill_tokens_per_s": Stat.of(s.prefill_rate for s in samples),
            "decode_tokens_per_s": Stat.of(s.decode_rate for s in samples),
            "total_tokens_per_s": Stat.of(b.total_rate for b in self.batches),
        }

    def counts(self) -> dict[str, int | None]:
        """Median measured counts (None: the target did not report them)."""
        return {
            "prompt_tokens": _median_int(s.prompt_tokens for s in self.samples),
            "completion_tokens": _median_int(s.completion_tokens for s in self.samples),
            "cached_tokens": _median_int(s.cached_tokens for s in self.samples),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.workload, **self.subject.as_dict(), "test": self.test,
            "parallel": self.parallel, "prompt_tokens_asked": self.prompt_asked,
            "gen_tokens_asked": self.gen_asked, "requests": len(self.samples),
            **self.counts(),
            **{key: stat.as_dict() if stat else None for key, stat in self.stats().items()},
            "samples": [
                {"ttft_s": s.ttft, "total_s": s.end - s.sent, "prompt_tokens": s.prompt_tokens,
                 "completion_tokens": s.completion_tokens, "cached_tokens": s.cached_tokens}
                for s in self.samples
            ],
        }


@dataclass
class LoadRecord:
    """Loads of one model on one device: the first (cold unless the compile cache is
    filled) and a second one right after unloading (warm: the cache the first filled)."""

    subject: Subject
    loads: list[LoadTime] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "load", **self.subject.as_dict(),
                "loads": [{"seconds": t.seconds, "compile_cache_before": t.cache or None}
                          for t in self.loads]}


@dataclass
class EmbeddingRecord:
    """Embedding requests of ``texts_asked`` texts each on one target."""

    subject: Subject
    texts_asked: int
    samples: list[EmbedSample] = field(default_factory=list)

    def stats(self) -> dict[str, Stat | None]:
        return {"texts_per_s": Stat.of(s.rate for s in self.samples),
                "request_s": Stat.of(s.end - s.sent for s in self.samples)}

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "embedding", **self.subject.as_dict(), "texts_asked": self.texts_asked,
                "requests": len(self.samples),
                "texts": _median_int(s.texts for s in self.samples),
                "prompt_tokens": _median_int(s.prompt_tokens for s in self.samples),
                **{key: stat.as_dict() if stat else None for key, stat in self.stats().items()}}


Record = GenerationRecord | LoadRecord | EmbeddingRecord


@dataclass
class Results:
    """Everything a run measured so far, in order, and what it skipped (``notes``)."""

    machine: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def measured(self) -> list[Record]:
        """Records with at least one measurement."""
        return [r for r in self.records
                if (r.loads if isinstance(r, LoadRecord)
                    else r.samples if isinstance(r, EmbeddingRecord) else r.batches)]

    def as_json(self) -> dict[str, Any]:
        """The JSON document: the machine's facts in every record as well as on top."""
        return {"machine": self.machine, "interrupted": self.interrupted, "notes": self.notes,
                "records": [{**r.as_dict(), "machine": self.machine} for r in self.measured()]}

    def render(self, markdown: bool = False) -> str:
        """The tables (generation, loads, embeddings) and the notes."""
        from .machine import summary_line

        records = self.measured()
        parts = [("**Machine**: " if markdown else "machine: ") + summary_line(self.machine)]
        generation = [r for r in records if isinstance(r, GenerationRecord)]
        loads = [r for r in records if isinstance(r, LoadRecord)]
        embeddings = [r for r in records if isinstance(r, EmbeddingRecord)]
        if generation:
            cached = any(r.counts()["cached_tokens"] is not None for r in generation)
            headers = ["target", "model", "quant", "test", "par", "prompt", "gen",
                       *(["cached"] if cached else []),
                       "TTFT s", "prefill t/s", "decode t/s", "total t/s", "n"]
            parts.append(table(headers, (_generation_row(r, cached) for r in generation),
                               markdown, left=4))
        if loads:
            parts.append(table(["target", "model", "first load s", "second load s"],
                               (_load_row(r) for r in loads), markdown, left=2))
        if embeddings:
            parts.append(table(["target", "model", "test", "texts/s", "request s", "n"],
                               (_embedding_row(r) for r in embeddings), markdown, left=3))
        if not records:
            parts.append("nothing was measured")
        if self.interrupted:
            parts.append("interrupted (Ctrl-C): the results above are partial")
        if self.notes:
            parts.append("\n".join(f"note: {note}" for note in self.notes))
        return "\n\n".join(parts)


def _generation_row(r: GenerationRecord, cached: bool) -> list[str]:
    stats = r.stats()
    counts = r.counts()
    return [r.subject.target, _model_label(r.subject.model), r.subject.quantization or "-", r.test,
            str(r.parallel), _count(counts["prompt_tokens"]), _count(counts["completion_tokens"]),
            *([_count(counts["cached_tokens"])] if cached else []),
            _stat(stats["ttft_s"], 3), _stat(stats["prefill_tokens_per_s"], 1),
            _stat(stats["decode_tokens_per_s"], 1), _stat(stats["total_tokens_per_s"], 1),
            str(len(r.samples))]


def _load_row(r: LoadRecord) -> list[str]:
    cells = [f"{t.seconds:.2f}" + (f" (cache {t.cache})" if t.cache else "") for t in r.loads]
    return [r.subject.target, _model_label(r.subject.model), *[*cells, "-", "-"][:2]]


def _embedding_row(r: EmbeddingRecord) -> list[str]:
    stats = r.stats()
    return [r.subject.target, _model_label(r.subject.model), f"embed {r.texts_asked}",
            _stat(stats["texts_per_s"], 1), _stat(stats["request_s"], 3), str(len(r.samples))]


def _model_label(name: str) -> str:
    """A model as the table shows it: a server that names its model by a file path
    (llama-server) is shown the file's name; JSON keeps the full id."""
    if name.startswith("/") or name[1:3] in (":\\", ":/"):
        return name.replace("\\", "/").rsplit("/", 1)[-1]
    return name


def _stat(stat: Stat | None, digits: int) -> str:
    return stat.format(digits) if stat else "-"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _median_int(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present)) if present else None


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], markdown: bool = False,
          left: int = 1) -> str:
    """A table: the first ``left`` columns left-aligned, the rest right-aligned; with
    ``markdown`` a pipe table (llama-bench's own format)."""
    cells = [list(headers), *(list(row) for row in rows)]
    # a Markdown delimiter cell needs a hyphen besides its colon
    widths = [max(3 if markdown else 0, *(len(row[i]) for row in cells))
              for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts).rstrip()

    rule = ("| " + " | ".join(("-" * (w - 1) + ":") if i >= left else "-" * w
                              for i, w in enumerate(widths)) + " |") if markdown \
        else "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])
