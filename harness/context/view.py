"""The messages a task sends its model: its transcript, as its compactions shorten it.

A transcript only grows; what is sent is derived from it and the task's compaction records
(``store.compactions``): a ``summary`` replaces a span of messages by one message, a
``mask`` replaces the tool results of a span by one-line stubs pointing at artifacts. The
view is append-only between two compactions (each earlier message is sent again unchanged,
so providers' prompt caches hit) and only changes, in one go, when a compaction is recorded.

Spans are whole turns: a span starts at an assistant message and ends after the last result
of the last assistant message in it, so a tool call is never separated from its result and
the view stays valid for the OpenAI wire format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..messages import ChatMessage
from ..store.compactions import MASK, SUMMARY, Compaction
from ..store.transcripts import StoredMessage

__all__ = ["OPENING", "View", "mask_stub", "summary_message", "turns"]

OPENING = 2  # the system prompt and the task: always sent as they are


def summary_message(record: Compaction) -> ChatMessage:
    """The message that stands for a summarised span."""
    text = (
        f"[Summary of messages {record.first_seq}-{record.last_seq}: earlier work, compacted "
        "to fit the context window]\n" + record.summary
    )
    return ChatMessage(role="user", content=text)


def mask_stub(message: ChatMessage, artifact_id: int | None) -> ChatMessage:
    """A tool result, masked: its size, and where to read it again."""
    chars = len(message.content or "")
    where = f"read_artifact(artifact_id={artifact_id})" if artifact_id else "the tool again"
    text = f"[{message.name or 'tool'} result: {chars:,} characters, masked; see {where}]"
    return message.model_copy(update={"content": text})


def turns(transcript: Sequence[StoredMessage], start: int, end: int) -> list[tuple[int, int]]:
    """The whole turns among positions ``start..end-1`` of ``transcript``: (first, last)
    positions of each assistant message with the tool results that answer it."""
    out: list[tuple[int, int]] = []
    i = start
    while i < end:
        if transcript[i].message.role != "assistant":
            i += 1
            continue
        j = i + 1
        while j < end and transcript[j].message.role == "tool":
            j += 1
        out.append((i, j - 1))
        i = j
    return out


@dataclass
class View:
    """The as-sent messages of one task, kept up to date as its transcript grows."""

    transcript: list[StoredMessage]
    compactions: list[Compaction]
    version: int = 0  # bumped by every compaction: the prefix of earlier requests changed

    def __post_init__(self) -> None:
        self._built: list[ChatMessage] = []
        self._upto = 0  # how many transcript messages ``_built`` covers
        self._rebuild()

    def messages(self) -> list[ChatMessage]:
        """What is sent now (appends what the transcript gained since the last call)."""
        for sm in self.transcript[self._upto :]:
            self._built.append(sm.message)
        self._upto = len(self.transcript)
        return self._built

    def add(self, record: Compaction) -> None:
        """A new compaction (already recorded): the view changes, in one go."""
        self.compactions.append(record)
        self.version += 1
        self._rebuild()

    def summarised_upto(self) -> int:
        """The last seq a summary covers (-1: none)."""
        return max((c.last_seq for c in self.compactions if c.kind == SUMMARY), default=-1)

    def masked_upto(self) -> int:
        return max((c.last_seq for c in self.compactions if c.kind == MASK), default=-1)

    def _rebuild(self) -> None:
        summaries = sorted((c for c in self.compactions if c.kind == SUMMARY), key=_span)
        masked: dict[int, int | None] = {}
        for c in self.compactions:
            if c.kind == MASK:
                for seq, artifact in json.loads(c.summary or "{}").items():
                    masked[int(seq)] = artifact
        built: list[ChatMessage] = []
        cover = {c.first_seq: c for c in summaries}
        skip_to = -1
        for sm in self.transcript:
            if sm.seq <= skip_to:
                continue
            record = cover.get(sm.seq)
            if record is not None:
                built.append(summary_message(record))
                skip_to = record.last_seq
            elif sm.seq in masked and sm.message.role == "tool":
                built.append(mask_stub(sm.message, masked[sm.seq]))
            else:
                built.append(sm.message)
        self._built, self._upto = built, len(self.transcript)


def _span(record: Compaction) -> tuple[int, int]:
    return record.first_seq, record.last_seq
