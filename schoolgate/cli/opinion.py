"""``schoolgate train-opinion``: the risk-term library's learned second opinion, trained from
labelled searches (the shipped ones, or the school's own) and written as
``second_opinion.json`` for a language folder of the library.

A labelled file holds one search a line, tab-separated: ``themes``, ``severity``, ``search``
(or ``split`` first, as ``tests/data/monitoring/searches.tsv`` has it); ``themes`` is ``-`` for
ordinary school work, else theme names joined with ``|``; ``#`` starts a comment line.

Wired into :mod:`schoolgate.cli` with ``register(sub, add_common_options)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from schoolgate.monitoring.opinion import ALONE_TOLERATED, PIECE_SIZE


def read_labelled(
    path: Path, themes: set[str], leave_out: frozenset[str] = frozenset()
) -> list[tuple[str, int, frozenset[str]]]:
    """(search, severity, themes) for each line, but those of a split in ``leave_out``; raises
    CommandError naming the file, line and field of the first mistake."""
    from schoolgate.cli.common import CommandError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot be read: {exc}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) == 4:
            if fields[0] in leave_out:
                continue
            fields = fields[1:]
        if len(fields) != 3:
            raise CommandError(
                f"{path}:{number}: expected themes, severity and search separated by tabs"
            )
        names, severity, text = fields
        if severity not in ("0", "1", "2", "3"):
            raise CommandError(f"{path}:{number}: severity: {severity!r} is not 0 to 3")
        found = frozenset() if names == "-" else frozenset(names.split("|"))
        unknown = sorted(found - themes)
        if unknown:
            raise CommandError(f"{path}:{number}: themes: unknown theme {unknown[0]!r}")
        if (severity == "0") != (not found):
            raise CommandError(
                f"{path}:{number}: severity: 0 is for ordinary searches (themes -) only"
            )
        if not text.strip():
            raise CommandError(f"{path}:{number}: search: empty")
        out.append((text.strip(), int(severity), found))
    return out


def cmd_train_opinion(args: argparse.Namespace) -> int:
    from schoolgate.cli.common import CommandError
    from schoolgate.core.configfile import ConfigError
    from schoolgate.monitoring.assessment import library_grade
    from schoolgate.monitoring.opinion import examples_from, train
    from schoolgate.monitoring.terms import load_matcher

    try:
        matcher = load_matcher([Path(p) for p in args.library] if args.library else None)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    themes = set(matcher.library.themes)
    leave_out = frozenset(args.leave_out or ())
    rows = [row for path in args.labelled for row in read_labelled(Path(path), themes, leave_out)]
    read, assess = matcher.normaliser.read, matcher.assess
    try:
        model = train(
            examples_from(
                (read(text).words, severity, found, library_grade(assess(text)))
                for text, severity, found in rows
            ),
            sorted(themes),
            alone_tolerated=args.alone_share,
            piece_size=args.piece_size,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    out = Path(args.out)
    text = json.dumps(model.to_json(), ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    out.write_text(text + "\n", encoding="utf-8")
    counts = model.trained_on
    print(
        f"trained on {counts['searches']} searches ({counts['severe']} at severity 3, "
        f"{counts['ordinary']} ordinary); threshold {model.threshold:.3f}, for a search the "
        f"library finds nothing in {model.alone_threshold or 1:.3f}; written to {out}"
    )
    return 0


def add_labelled_arguments(p: argparse.ArgumentParser, out: str) -> None:
    """The arguments ``train-opinion`` and ``train-reader`` share: the labelled files, where
    to write, the library folders and the splits left out."""
    p.add_argument("labelled", nargs="+", help="files of labelled searches (tab-separated)")
    p.add_argument("--out", required=True, help=out)
    p.add_argument(
        "--library",
        action="append",
        help="a library folder whose spellings, terms and themes the searches are read with "
        "(repeat; default: the shipped one)",
    )
    p.add_argument(
        "--leave-out",
        action="append",
        metavar="SPLIT",
        help="leave out the lines of this split (a first column), to measure the model on them",
    )


def register(
    sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "train-opinion", help="train the risk-term library's second opinion on labelled searches"
    )
    common(p)
    add_labelled_arguments(p, "the file to write (second_opinion.json)")
    p.add_argument(
        "--alone-share",
        type=float,
        default=ALONE_TOLERATED,
        metavar="SHARE",
        help="of the ordinary searches the library finds nothing in, the share that may score "
        "above the model's threshold for those, each scored by a model that never saw it "
        f"(default {ALONE_TOLERATED}; smaller: fewer alerts, fewer risks found)",
    )
    p.add_argument(
        "--piece-size",
        type=int,
        choices=range(9),
        default=PIECE_SIZE,
        metavar="LETTERS",
        help="the letters of the pieces of words the model also weighs, so that it reads a "
        f"word it never saw by the words it did (default {PIECE_SIZE}; 0: whole words only)",
    )
    p.set_defaults(handler=cmd_train_opinion)
