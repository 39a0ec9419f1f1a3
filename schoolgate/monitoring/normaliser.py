"""The normaliser: a search or a page title, and every phrase of the library, as one skeleton.

What a pupil may write to get past a word list reads the same once normalised:

1. **Unicode**: NFKC (fullwidth, mathematical and circled letters), look-alike Cyrillic and
   Greek letters inside Latin words (``suіcide`` with a Cyrillic ``і``), accents dropped,
   zero-width and format characters removed, then case folded.
2. **Words**: letters and digits make words; ``.``, ``-``, ``_``, ``/`` and spaces separate
   them; apostrophes inside a word vanish (``don't``). Three or more one-letter words in a
   row are one word (``s u i c i d e``, ``k.i.l.l``).
3. **Leetspeak** inside words that have letters: ``0 1 3 4 5 7 @ $ | !`` read as
   ``o i e a s t a s i i`` (``k1ll``, ``$uicide``, ``n4zi``); a word of digits alone stays
   (``1488``).
4. **Misspelt words** from the library's ``spellings`` (``sucide``, ``wnat``) read as the
   word, wherever they are; then **sound-alike spellings**: ``ph``->``f``, ``ck``->``k``,
   ``c`` before ``e i y``->``s``, other ``c``->``k``, ``x``->``ks`` (``suiside``,
   ``extasy``, ``secks``).
5. **Repeated letters** count once (``kiiiill``, ``canabis``); repeated digits do not
   (``1500`` is not ``150``).

Steps 3 to 5 act on one word at a time, so :class:`Normaliser` remembers the words it has
read (a school's searches use the same few thousand words again and again): a text costs
one regular expression to split it and a dictionary look-up per word.
"""

from __future__ import annotations

import itertools
import operator
import re
import unicodedata
from typing import NamedTuple

try:  # the usual search's reading in C, where the package was built with a C compiler
    from schoolgate.monitoring import speedups
except ImportError:  # read in Python alone (tests hold the two to the same results)
    speedups = None  # type: ignore[assignment]

MAX_TEXT = 1000  # characters of a text that are read (terms are cut at 500, titles at 300)
MAX_WORDS = 50_000  # words a Normaliser remembers before it starts again

_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h",
        "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b",
        "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y",
        "һ": "h", "ӏ": "l", "ʏ": "y",
        # Greek
        "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
        "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s",
        # Latin look-alikes and small capitals
        "ɑ": "a", "ɡ": "g", "ı": "i", "ɩ": "i", "ʟ": "l", "ᴀ": "a", "ʙ": "b", "ᴄ": "c",
        "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k",
        "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u",
        "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
    }
)  # fmt: skip
# Format and zero-width characters, combining marks, and the replacement character of a
# term that was not valid UTF-8: dropped, so that they cannot split a word.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffd\u0300-\u036f\u1ab0-\u1aff"
    "\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)
_LATIN = re.compile("[a-z]")
_APOSTROPHE = re.compile(r"(?<=[^\W_])['’`´](?=[^\W_])")
_WORD = re.compile(r"(?:[^\W_]|[@$|!](?=[^\W_@$|!]|[@$|!]+[^\W_]))+")
_LEET = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "@": "a",
        "$": "s",
        "|": "i",
        "!": "i",
    }
)
# ASCII letters to lower case, and every other ASCII character but digits and the four
# leetspeak symbols to a space.
_ASCII_WORDS = str.maketrans(
    {
        **{chr(c): " " for c in range(128) if not chr(c).isalnum() and chr(c) not in "@$|!"},
        **{c.upper(): c for c in "abcdefghijklmnopqrstuvwxyz"},
    }
)
# The same as bytes, for :meth:`bytes.translate`: a 256-byte table is one C loop, where a
# ``str.translate`` with a dictionary looks each character up in it.
_ASCII_BYTES = bytes(
    ord(_ASCII_WORDS.get(byte, chr(byte))) if byte < 128 else byte for byte in range(256)
)
# Those bytes' shape: a separator stays a space, any other character is "x".
_SHAPE = bytes(32 if byte == 32 else 120 for byte in range(256))
_LEET_CHAR = re.compile(r"[0-9@$|!]")
_SYMBOL = re.compile(r"[@$|!]")
_LETTER = re.compile(r"[^\W\d_]")
_SOFT_C = re.compile(r"c(?=[eiy])")
_REPEAT = re.compile(r"([^\W\d_])\1+")  # letters only: 1000 calories are not 10
_FIRST_GROUP = operator.itemgetter(1)  # a C-level callable: no Python call per repeat


class Normalised(NamedTuple):
    """A text as the matcher reads it: its words joined, and where each word starts."""

    words: tuple[str, ...]
    joined: str
    bounds: bytes  # bounds[i] == 1 where a word starts or ends at offset i of ``joined``

    @property
    def text(self) -> str:
        return " ".join(self.words)


def raw_words(text: str) -> list[str]:
    """Steps 1 and 2: the words of ``text``, lower case, before leetspeak and spellings."""
    text = text[:MAX_TEXT]
    if text.isascii():
        if text.replace(" ", "").isalnum():
            # Only letters, digits and spaces (most searches): no separator to find, no
            # apostrophe or symbol. No one-character word between two others: not three of
            # them in a row to join. (``find``: ``in`` on bytes raises and clears an error.)
            words = text.lower().split()
            if len(words) < 3 or text.encode().translate(_SHAPE).find(b" x ") < 0:
                return words
        else:
            if "'" in text or "`" in text:
                text = _APOSTROPHE.sub("", text)
            # One C-level pass: case, then every separator to a space.
            data = text.encode().translate(_ASCII_BYTES)
            words = data.decode().split()
            if "@" in text or "$" in text or "|" in text or "!" in text:
                # These are letters only inside a word or before one ("$uicide", not "hi!!")
                words = [w for w in (_lead_symbols(w) for w in words) if w]
            elif len(words) < 3 or data.translate(_SHAPE).find(b" x ") < 0:
                # No one-character word between two others, so not three of them: the usual.
                return words
    else:
        text = unicodedata.normalize("NFKC", text)
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKD", text))
        text = unicodedata.normalize("NFC", text).casefold()
        if not text.isascii():
            text = " ".join(
                w.translate(_CONFUSABLES) if _LATIN.search(w) else w for w in text.split()
            )
        if "'" in text or "’" in text or "`" in text or "´" in text:
            text = _APOSTROPHE.sub("", text)
        words = _WORD.findall(text)
    if len(words) > 2 and list(map(len, words)).count(1) > 2:
        words = _join_spelled(words)
    return words


def _lead_symbols(word: str) -> str:
    """A word split at ASCII separators, with ``@ $ | !`` kept as :data:`_WORD` keeps them:
    where a letter or digit follows (through more of them)."""
    if word[-1] in "@$|!":
        word = word.rstrip("@$|!")
    return (
        word
        if not word or word.isalnum() or _WORD.fullmatch(word)
        else " ".join(_WORD.findall(word))
    )


def _join_spelled(words: list[str]) -> list[str]:
    """Three or more one-character words in a row are one word (``s u i c i d e``)."""
    out: list[str] = []
    run: list[str] = []
    for word in (*words, ""):
        if len(word) == 1:
            run.append(word)
            continue
        if len(run) >= 3:
            out.append("".join(run))
        else:
            out.extend(run)
        run = []
        if word:
            out.append(word)
    return out


def read_word(word: str, spellings: dict[str, str]) -> str:
    """Steps 3 to 5 for one word; the result may be several words (``wanna`` -> ``want to``)."""
    if speedups is not None:
        # An ASCII word (the usual) in C: in Python, each new word of a search cost several
        # regular expressions. None: a word or spelling that is not ASCII, read below.
        read = speedups.read_word(word, spellings)
        if read is not None:
            return read
    return _read_word(word, spellings)


def _read_word(word: str, spellings: dict[str, str]) -> str:
    if _LEET_CHAR.search(word):
        word = word.translate(_LEET) if _LETTER.search(word) else _SYMBOL.sub("", word)
    word = spellings.get(word, word)
    # sound-alikes: ph -> f, ck -> k, c before e/i/y -> s, other c -> k, x -> ks
    if "ph" in word:
        word = word.replace("ph", "f")
    if "c" in word:
        word = _SOFT_C.sub("s", word.replace("ck", "k")).replace("c", "k")
    if "x" in word:
        word = word.replace("x", "ks")
    return _REPEAT.sub(_FIRST_GROUP, word)


def spelling_table(spellings: dict[str, str]) -> dict[str, str]:
    """A library's word spellings as :func:`read_word` looks them up (after case and
    leetspeak, before the sound-alike rules)."""
    out = {}
    for wrong, word in spellings.items():
        out[_leet_only(wrong.lower())] = " ".join(_leet_only(w) for w in word.lower().split())
    return out


def _leet_only(word: str) -> str:
    if _LEET_CHAR.search(word):
        return word.translate(_LEET) if _LETTER.search(word) else _SYMBOL.sub("", word)
    return word


def _assemble(read: list[str]) -> Normalised:
    spaced = " ".join(read)
    if spaced.count(" ") == len(read) - 1 and "" not in read:
        words = read  # the usual: each word read as one word (not "wanna" -> "want to")
    else:
        words = spaced.split()
    joined = "".join(words)
    if not words:
        bounds = b"\1"
    elif spaced.isascii():
        if len(spaced) != len(joined) + len(words) - 1:  # not one space between words
            spaced = " ".join(words)
        # 1 where a word starts, 0 elsewhere, then 1 at the end (the start of one more word):
        # in C, not per word.
        bounds = f" {spaced} .".encode().translate(_MARKS).replace(b" \0", b"\1")
    else:
        marks = bytearray(len(joined) + 1)
        for at in itertools.accumulate(map(len, words), initial=0):
            marks[at] = 1
        bounds = bytes(marks)
    return _new_tuple(Normalised, (tuple(words), joined, bounds))  # no Python __new__


_new_tuple = tuple.__new__
_MARKS = bytes(32 if byte == 32 else 0 for byte in range(256))


def word_starts(norm: Normalised) -> tuple[int, ...]:
    """Where each word of ``norm`` starts in ``norm.joined``."""
    return tuple(itertools.accumulate(map(len, norm.words[:-1]), initial=0)) if norm.words else ()


def normalise(text: str, spellings: dict[str, str] | None = None) -> Normalised:
    """The skeleton of ``text`` (see the module's description). ``spellings``: misspelt
    word -> word, both as :func:`spelling_table` gives them."""
    table = spellings or {}
    return _assemble([read_word(word, table) for word in raw_words(text)])


class Normaliser:
    """:func:`normalise` with a memory of the words already read. Safe to share between
    threads (a word read twice at once is read twice, to the same result)."""

    def __init__(self, spellings: dict[str, str] | None = None, max_words: int = MAX_WORDS):
        self.spellings = spellings or {}
        self.max_words = max_words
        self._read: dict[str, str] = {}
        # The words read as one ASCII word (most): a text of only these needs none of
        # :func:`_assemble`'s checks.
        self._one_word: dict[str, str] = {}

    def __call__(self, text: str) -> Normalised:
        return self.read(text)

    def read(self, text: str) -> Normalised:
        """:func:`normalise` of ``text`` (a method call, cheaper than calling the instance)."""
        if speedups is not None:  # the usual search, its words known: in C
            quick = speedups.read_known(text, self._read, MAX_TEXT)
            if quick is not None:
                return _new_tuple(Normalised, quick)  # no Python __new__
        words = raw_words(text)
        try:  # in C: every word known and read as one word, as a rule
            known = tuple(map(self._one_word.__getitem__, words))
        except KeyError:
            known = ()
        if not known:  # a word not known or not read as one word, or no words at all
            read = self._read.get
            return _assemble(
                [found if (found := read(word)) else self._learn(word) for word in words]
            )
        # 1 where a word starts, 0 elsewhere, then 1 at the end (as in _assemble; ASCII, so
        # one byte a character).
        bounds = f" {' '.join(known)} .".encode().translate(_MARKS).replace(b" \0", b"\1")
        return _new_tuple(Normalised, (known, "".join(known), bounds))  # no Python __new__

    def _learn(self, word: str) -> str:
        read = read_word(word, self.spellings)
        if len(self._read) >= self.max_words:
            # forget everything: simpler and cheaper than least-recently-used
            self._read = {}
            self._one_word = {}
        self._read[word] = read
        if read and " " not in read and read.isascii():
            self._one_word[word] = read
        return read

    def forget(self) -> None:
        """Forget every word read (for measuring the cost of words never seen)."""
        self._read = {}
        self._one_word = {}


__all__ = [
    "MAX_TEXT",
    "Normalised",
    "Normaliser",
    "normalise",
    "raw_words",
    "read_word",
    "spelling_table",
    "word_starts",
]
