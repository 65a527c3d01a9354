"""Incremental detokenisation that never emits half a multi-byte character.

A byte-level token can end in the middle of a UTF-8 character, which decodes to U+FFFD.
Each step decodes the whole generated id list and emits only the new suffix, holding back
a trailing U+FFFD until the next token completes the character (or generation ends).
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns a growing list of token ids into the newly finished text, step by step."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.emitted = 0  # characters already returned

    def text(self) -> str:
        """The full decoded text of the ids so far."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (may be empty)."""
        self.ids.append(int(token_id))
        return self._emit(self.text().rstrip(REPLACEMENT))

    def flush(self) -> str:
        """Return what is still held back (an incomplete character stays as U+FFFD)."""
        return self._emit(self.text())

    def _emit(self, text: str) -> str:
        # positions, not a prefix test: decoding is not always prefix-stable (spaces cleaned
        # up once the next word arrives), and text already shown must never be repeated
        new = text[self.emitted :]
        self.emitted += len(new)
        return new
