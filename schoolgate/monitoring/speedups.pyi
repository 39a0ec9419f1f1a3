# The C loops of speedups.c, as terms.py calls them.
from collections.abc import Iterator
from typing import overload

def scan(
    found: Iterator[tuple[int, tuple]],
    bounds: bytes,
    words: tuple[str, ...],
    single: dict[str, int],
) -> tuple[list, list, list, list, list[int | None]]: ...
def compile(
    entries: list[tuple[str, tuple[tuple[bytes, int, int, tuple[int, ...], bool], ...]]],
) -> object: ...
def find(
    automaton: object,
    joined: str,
    bounds: bytes,
    words: tuple[str, ...],
    single: dict[str, int],
) -> tuple[list, list, list, list, list[int | None]]: ...
def footprint(automaton: object) -> tuple[int, int]: ...
def screen(
    words: list[tuple[int, int, int]],
    word_ids: list[int | None],
    wakes: tuple[tuple[int, ...], ...],
    bits: tuple[tuple[int, ...], ...],
    offsets: tuple[int, ...],
) -> list[int]: ...
def places(
    words: list[tuple[int, int, int]],
    bounds: bytes,
    word_ids: list[int | None],
    word_spans: tuple[tuple[int, int], ...],
) -> list[tuple[int, tuple[int, int]]]: ...
def collect(
    places: list[tuple[int, tuple[int, int]]],
    groups_of: tuple[dict[int, tuple[int, ...]], ...],
    number: int,
    found: list[list[tuple[int, int]]],
) -> int | None: ...
def settle(
    words: list[tuple[int, int, int]],
    bounds: bytes,
    word_ids: list[int | None],
    candidates: list[int],
    groups_of: tuple[dict[int, tuple[int, ...]], ...],
    shapes: tuple[tuple[int, bool, int | None, bool], ...],
) -> list[tuple[int, int]]: ...
def read_known(
    text: str, read: dict[str, str], max_text: int
) -> tuple[tuple[str, ...], str, bytes] | None: ...
def read_word(word: str, spellings: dict[str, str]) -> str | None: ...
@overload
def linear(
    words: tuple[str, ...],
    table: dict[str, tuple[float, dict[str, float] | None]],
    bias: float,
) -> float: ...
@overload
def linear(
    words: tuple[str, ...],
    table: dict[str, tuple[float, dict[str, float] | None]],
    bias: float,
    pieces: dict[str, float] | None,
    size: int,
    unseen: dict[str, float],
    kept: int,
) -> float: ...
