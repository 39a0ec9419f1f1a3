"""The word pieces the neural reader (:mod:`schoolgate.monitoring.reader`) reads a search as:
BERT's uncased WordPiece, as the encoder it was fine-tuned from was trained with.

The steps are those of the Hugging Face ``tokenizers`` library's ``BertNormalizer``,
``BertPreTokenizer`` and ``WordPiece`` model, written out here so that the gateway does not
carry that library (and the hub client it brings) for a search of a line:

1. drop NUL, U+FFFD and control characters, and turn white space into spaces;
2. put spaces around CJK ideographs, each then a word of its own;
3. take accents off (NFD, then no combining marks) and lower-case;
4. split on white space, and around every punctuation character;
5. each word into the longest pieces of the vocabulary from its start, a piece after the first
   written ``##piece``; a word with a part no piece matches, or of more than 100 letters, is
   ``[UNK]``.

``schoolgate train-reader`` checks that these ids are the library's own on every search it
trains on, and refuses to write a reader when one differs.
"""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path

MAX_WORD = 100  # letters; a longer word is [UNK]
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


class VocabularyError(ValueError):
    pass


class WordPiece:
    """A vocabulary file (one piece a line, its id its line number from 0) and the rules above."""

    def __init__(self, pieces: list[str]) -> None:
        self.ids = {piece: number for number, piece in enumerate(pieces)}
        for token in ("[CLS]", "[SEP]", "[UNK]"):
            if token not in self.ids:
                raise VocabularyError(f"the vocabulary has no {token}")
        self.cls, self.sep, self.unk = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]
        self._words: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: Path) -> WordPiece:
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls([line.rstrip("\r") for line in lines])

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """[CLS], the pieces of ``text`` (as many as fit), [SEP]."""
        out = [self.cls]
        room = max_tokens - 2
        for word in words(text):
            out += self.word(word)
            if len(out) > room:
                del out[room + 1 :]
                break
        out.append(self.sep)
        return out

    def word(self, word: str) -> tuple[int, ...]:
        found = self._words.get(word)
        if found is None:
            found = self._pieces(word)
            if len(self._words) < 100_000:  # bounded: made-up words cannot grow it for ever
                self._words[word] = found
        return found

    def _pieces(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD:
            return (self.unk,)
        ids = self.ids
        out: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                number = ids.get(piece)
                if number is not None:
                    out.append(number)
                    break
                end -= 1
            else:
                return (self.unk,)
            start = end
        return tuple(out)


def words(text: str) -> list[str]:
    """``text`` normalised and split into words and punctuation (steps 1 to 4)."""
    kept: list[str] = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD:
            continue
        category = unicodedata.category(char)
        if char in "\t\n\r" or (category[0] != "C" and char.isspace()):
            kept.append(" ")
        elif category[0] == "C":
            continue
        elif any(low <= code <= high for low, high in _CJK):
            kept.append(f" {char} ")
        else:
            kept.append(char)
    plain = "".join(
        c for c in unicodedata.normalize("NFD", "".join(kept)) if unicodedata.category(c) != "Mn"
    ).lower()
    out: list[str] = []
    for chunk in plain.split():
        current: list[str] = []
        for char in chunk:
            if char in _ASCII_PUNCTUATION or unicodedata.category(char)[0] == "P":
                if current:
                    out.append("".join(current))
                    current = []
                out.append(char)
            else:
                current.append(char)
        if current:
            out.append("".join(current))
    return out
