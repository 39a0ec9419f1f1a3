"""The risk-term library: YAML files a school can read, extend and correct.

Layout: ``blocklists/safeguarding/<language>/<theme>.yaml`` (``en/self_harm.yaml``), plus any
number of files a school adds beside them (two files of one theme add up). A language folder
is a language tag (``en``, ``cy``, ``pl``, ``pt-br``). Every file is a mapping:

``theme`` (a theme file)
    One of :data:`THEMES`, or a school's own (``lower_snake_case``, with a ``title``).
``language``
    Optional; when given it must be the folder's.
``terms``
    A list of ``{term, severity, firm, spellings, note}``: ``severity`` 1 (worth a look),
    2 (a concern) or 3 (the DSL is told at once); ``firm: true`` for what no context word may
    lower (first-person intent, methods, grooming); ``spellings``: other ways pupils write it
    that the normaliser does not reach; ``note``: why it matters, for the DSL.
``allow``
    Phrases that contain a term and are not a concern (``kill the lights``): a term inside one
    is not counted. In a theme file they apply to that theme, in a file without ``theme`` to
    every theme.
``context``
    A list of ``{phrase, lower | suppress, themes}``: a phrase anywhere in the same search or
    title (``macbeth``, ``history of``) lowers the severity of the listed themes' terms by
    ``lower`` (1 or 2), or drops them (``suppress: true``); never a ``firm`` term.
``rules`` (a theme file)
    Co-occurrence rules, for what pupils phrase in more ways than a list of terms can hold: a
    list of ``{rule, all, severity, firm, within, ordered, ends, unless, note}``. ``all`` is a
    list of word groups; the rule matches when one phrase of **every** group is in the text (at
    word boundaries, normalised like terms), ``within`` words of each other if given, in the
    groups' order if ``ordered``, with a phrase of the last group ending the text if ``ends``,
    and no phrase of ``unless`` is anywhere in the text. A phrase ending
    in ``*`` is a stem (``overdos*`` is ``overdose``, ``overdosing``); ``<name>`` stands for a
    named group. ``rule`` names it for the DSL, as a term's text does.
``groups`` (in any file)
    Named word groups the rules of every theme can use: ``first_person: [i, im, me, my]``;
    a group may name another (``<first_person>``).
``remove``
    Terms or rules of this theme, shipped in another file, that the school does not want.
``spellings`` (in a file without ``theme``)
    Common misspellings and text-speak of single words, ``suicide: [sucide, suiside]``,
    ``to: ['2']``, ``want to: [wanna]``: the normaliser reads them as the word (or words)
    wherever they appear, so every term with the word matches them.

Loading never stops at the first problem: every error names the file, the line and the field
(:class:`~schoolgate.core.configfile.ConfigError`), and a broken file never loads half a library.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.core.configfile import Issues, Section, load_yaml
from schoolgate.monitoring.opinion import FILE_NAME, OpinionError, SecondOpinion, load_opinion
from schoolgate.monitoring.reader import FILE_NAME as READER_FILE
from schoolgate.monitoring.reader import Reader, load_reader

# The UK Safer Internet Centre's monitoring themes, as the shipped files name them.
THEMES: dict[str, str] = {
    "self_harm": "Self-harm",
    "suicide": "Suicide",
    "eating_disorders": "Eating disorders",
    "extremism": "Radicalisation and extremism",
    "sexual_exploitation": "Child sexual exploitation and grooming",
    "bullying": "Bullying",
    "drugs": "Drugs",
    "weapons_violence": "Weapons and violence",
    "pornography": "Pornography",
}
SEVERITIES = (1, 2, 3)
FILE_KEYS = frozenset(
    {
        "theme",
        "title",
        "language",
        "terms",
        "rules",
        "groups",
        "allow",
        "context",
        "remove",
        "spellings",
    }
)
TERM_KEYS = frozenset({"term", "severity", "firm", "spellings", "note"})
RULE_KEYS = frozenset(
    {"rule", "all", "severity", "firm", "within", "ordered", "ends", "unless", "note"}
)
MAX_GROUPS = 5  # word groups in one rule
MAX_WITHIN = 30
CONTEXT_KEYS = frozenset({"phrase", "lower", "suppress", "themes"})
SUPPRESS = 3  # a context rule's lowering that drops any severity
_THEME_NAME = re.compile(r"[a-z][a-z0-9_]{1,40}")
_ONE_WORD = re.compile(r"[^\W_]+")
_WORDS = re.compile(r"[^\W_]+(?: [^\W_]+)*")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})?")
_GROUP_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
_GROUP_REF = re.compile(r"<([^<>]*)>")


@dataclass(frozen=True, slots=True)
class Term:
    text: str
    theme: str
    severity: int
    firm: bool = False
    spellings: tuple[str, ...] = ()
    note: str = ""
    language: str = "en"
    source: str = ""  # file:line


@dataclass(frozen=True, slots=True)
class Rule:
    """Words from every group in one text: ``groups`` hold phrases (``*`` at the end of a
    stem), named groups already expanded."""

    name: str
    theme: str
    severity: int
    groups: tuple[tuple[str, ...], ...]
    firm: bool = False
    within: int | None = None  # the words found span at most this many words
    ordered: bool = False  # found in the order of the groups
    unless: tuple[str, ...] = ()  # any of these anywhere in the text: the rule does not match
    note: str = ""
    language: str = "en"
    source: str = ""  # file:line
    # A phrase of the last group ends the text: "i want to unalive" (read "i want to kill")
    # ends there, "i want to kill it at the talent show" does not.
    ends: bool = False


@dataclass(frozen=True, slots=True)
class Allow:
    phrase: str
    theme: str | None  # None: every theme
    source: str = ""


@dataclass(frozen=True, slots=True)
class ContextRule:
    phrase: str
    lower: int  # 1, 2, or SUPPRESS
    themes: frozenset[str] | None  # None: every theme
    source: str = ""


@dataclass(frozen=True)
class Library:
    terms: tuple[Term, ...] = ()
    rules: tuple[Rule, ...] = ()
    allow: tuple[Allow, ...] = ()
    context: tuple[ContextRule, ...] = ()
    themes: dict[str, str] = field(default_factory=dict)  # name -> title
    spellings: dict[str, str] = field(default_factory=dict)  # misspelt word -> word
    languages: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # expanded
    # The learned second opinion on searches (``second_opinion.json``): the last one read.
    opinion: SecondOpinion | None = None
    # The neural reader of searches (``reader.json`` and its files): the last one read.
    reader: Reader | None = None


def default_root() -> Path:
    """The shipped library: ``blocklists/safeguarding`` beside the package."""
    return Path(__file__).resolve().parents[2] / "blocklists" / "safeguarding"


def load_library(
    roots: list[Path] | tuple[Path, ...],
    issues: Issues,
    *,
    languages: tuple[str, ...] | None = None,
) -> Library:
    """Read every ``<root>/<language>/*.yaml``, and the ``second_opinion.json`` and
    ``reader.json`` of a language folder (the last one of each read is kept); later roots add
    to (and ``remove`` from) earlier ones. ``languages``: only these folders (None: every
    folder). Problems go to ``issues``; the caller raises once all files are read."""
    files = _Reader(issues)
    for root in roots:
        if not root.is_dir():
            issues.add(root, None, "", "not a folder (the risk-term library is a folder)")
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if languages is not None and folder.name not in languages:
                continue
            if not _LANGUAGE.fullmatch(folder.name):
                issues.add(folder, None, "", "a language folder is a tag such as en, cy or pt-br")
                continue
            for path in sorted(folder.glob("*.yaml")):
                files.read(path, folder.name)
            learned = folder / FILE_NAME
            try:  # the learned models, where the folder has them
                if learned.is_file():
                    files.opinion = load_opinion(learned)
                if (learned := folder / READER_FILE).is_file():
                    files.reader = load_reader(learned)
            except OpinionError as exc:  # a ReaderError too
                issues.add(learned, exc.line, exc.field, exc.message)
    return files.library()


@dataclass(slots=True)
class _PendingGroup:
    phrases: list[tuple[str, int, str]]  # (phrase or <name>, line, field)
    file: str
    source: str


@dataclass(slots=True)
class _PendingRule:
    """A rule as read: its groups may name groups defined in a later file."""

    name: str
    theme: str
    severity: int
    groups: list[list[tuple[str, int, str]]]
    firm: bool
    within: int | None
    ordered: bool
    unless: list[tuple[str, int, str]]
    note: str
    language: str
    source: str
    file: str
    ends: bool = False


class _Reader:
    def __init__(self, issues: Issues) -> None:
        self.issues = issues
        self.terms: dict[tuple[str, str, str], Term] = {}  # (theme, language, text)
        self.rules: dict[tuple[str, str, str], _PendingRule] = {}  # (theme, language, name)
        self.groups: dict[str, _PendingGroup] = {}
        self.allow: list[Allow] = []
        self.context: list[ContextRule] = []
        self.removed: list[tuple[str, str, str, str, int, str]] = []
        self.themes: dict[str, str] = dict(THEMES)
        self.spellings: dict[str, tuple[str, str]] = {}  # misspelt -> (word, where)
        self.context_themes: list[tuple[Section, str, int, str]] = []
        self.files: list[str] = []
        self.languages: set[str] = set()
        self.opinion: SecondOpinion | None = None
        self.reader: Reader | None = None

    def read(self, path: Path, language: str) -> None:
        shown = str(path)
        data = load_yaml(path, self.issues, shown=shown)
        if data is None:
            return
        self.files.append(shown)
        self.languages.add(language)
        sec = Section(data, file=shown, path="", issues=self.issues)
        sec.check_keys(FILE_KEYS)
        declared = sec.text("language")
        if declared is not None and declared.lower() != language:
            sec.error("language", f"this file is in the {language!r} folder, not {declared!r}")
        theme = sec.text("theme")
        if theme is not None:
            theme = self._theme(sec, theme)
        elif "terms" in sec or "rules" in sec or "remove" in sec:
            sec.error(None, "missing required field 'theme' (terms and rules belong to a theme)")
        for item in sec.sections("terms"):
            self._term(item, theme, language)
        for item in sec.sections("rules"):
            self._rule(item, theme, language)
        if "groups" in sec:
            self._groups(sec)
        for phrase, line, name in sec.strings("allow"):
            if not phrase:
                self.issues.add(shown, line, name, "an empty allow-phrase")
                continue
            self.allow.append(Allow(phrase, theme, f"{shown}:{line}"))
        for item in sec.sections("context"):
            self._context(item, theme)
        if "spellings" in sec:
            if theme is not None:
                sec.error("spellings", "word spellings go in a file without 'theme'")
            else:
                self._spellings(sec)
        if theme is not None:
            for text, line, name in sec.strings("remove"):
                self.removed.append((theme, language, text.lower(), shown, line, name))

    def _theme(self, sec: Section, name: str) -> str | None:
        if not _THEME_NAME.fullmatch(name):
            sec.error("theme", f"a theme is a lower_snake_case name, got {name!r}")
            return None
        if name not in self.themes:
            title = sec.text("title")
            if not title:
                known = ", ".join(THEMES)
                sec.error(
                    "theme",
                    f"{name!r} is not one of the shipped themes ({known}); a theme of the "
                    "school's own needs a 'title'",
                )
                return None
            self.themes[name] = title
        return name

    def _term(self, item: Section, theme: str | None, language: str) -> None:
        item.check_keys(TERM_KEYS)
        text = item.text("term", required=True)
        severity = item.number("severity", required=True, minimum=1, maximum=3)
        firm = item.flag("firm")
        spellings = tuple(s for s, line, name in item.strings("spellings") if s)
        note = item.text("note") or ""
        if not text or severity is None or theme is None:
            if text == "":
                item.error("term", "an empty term")
            return
        key = (theme, language, text.lower())
        source = f"{item.file}:{item.line}"
        if key in self.terms or key in self.rules:
            first = self.terms[key].source if key in self.terms else self.rules[key].source
            item.error("term", f"{text!r} is already listed at {first}")
            return
        self.terms[key] = Term(text, theme, severity, firm, spellings, note, language, source)

    def _rule(self, item: Section, theme: str | None, language: str) -> None:
        item.check_keys(RULE_KEYS)
        name = item.text("rule", required=True)
        severity = item.number("severity", required=True, minimum=1, maximum=3)
        firm = item.flag("firm")
        within = item.number("within", minimum=1, maximum=MAX_WITHIN)
        ordered = item.flag("ordered")
        ends = item.flag("ends")
        note = item.text("note") or ""
        unless = self._phrases(item, "unless")
        groups: list[list[tuple[str, int, str]]] = []
        for group, line, field_name in item.items("all", required=True):
            listed = group if isinstance(group, list) else [group]
            lines = getattr(group, "item_lines", [])
            phrases = []
            for index, phrase in enumerate(listed):
                at = lines[index] if index < len(lines) else line
                where = f"{field_name}[{index}]" if isinstance(group, list) else field_name
                if isinstance(phrase, bool) or not isinstance(phrase, (str, int, float)):
                    self.issues.add(item.file, at, where, "expected a phrase or <group name>")
                    continue
                if not str(phrase).strip():
                    self.issues.add(item.file, at, where, "an empty phrase")
                    continue
                phrases.append((str(phrase).strip(), at, where))
            if not phrases:
                self.issues.add(item.file, line, field_name, "an empty word group")
                continue
            groups.append(phrases)
        if "all" in item and len(groups) > MAX_GROUPS:
            item.error("all", f"at most {MAX_GROUPS} word groups in one rule")
            return
        if name == "":
            item.error("rule", "an empty rule name")
        if not name or severity is None or theme is None or not groups:
            return
        key = (theme, language, name.lower())
        source = f"{item.file}:{item.line}"
        if key in self.rules or key in self.terms:
            first = self.rules[key].source if key in self.rules else self.terms[key].source
            item.error("rule", f"{name!r} is already a term or rule of {theme} at {first}")
            return
        self.rules[key] = _PendingRule(
            name, theme, severity, groups, firm, within, ordered, unless, note, language, source,
            item.file, ends,
        )  # fmt: skip

    def _phrases(self, item: Section, key: str) -> list[tuple[str, int, str]]:
        out = []
        for phrase, line, name in item.strings(key):
            if phrase:
                out.append((phrase, line, name))
            else:
                self.issues.add(item.file, line, name, "an empty phrase")
        return out

    def _groups(self, sec: Section) -> None:
        table = sec.section("groups")
        if table is None:
            return
        for name in table.keys():
            where = f"{table.file}:{table.line_of(name)}"
            if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
                table.error(name, "a group name is lower_snake_case")
                continue
            if name in self.groups:
                table.error(
                    name, f"group {name!r} is already defined at {self.groups[name].source}"
                )
                continue
            phrases = self._phrases(table, name)
            if not phrases:
                table.error(name, "an empty word group")
                continue
            self.groups[name] = _PendingGroup(phrases, table.file, where)

    def _check_phrase(self, phrase: str, file: str, line: int, field_name: str) -> bool:
        if "<" in phrase or ">" in phrase:
            self.issues.add(file, line, field_name, f"{phrase!r}: write a group as <name>")
        elif "*" in phrase[:-1]:
            self.issues.add(file, line, field_name, f"{phrase!r}: '*' only ends a stem (overdos*)")
        else:
            return True
        return False

    def _expand_groups(self) -> dict[str, tuple[str, ...]]:
        """Every named group with the groups it names expanded (each problem reported once)."""
        done: dict[str, tuple[str, ...]] = {}

        def visit(name: str, stack: tuple[str, ...]) -> tuple[str, ...]:
            if name in done:
                return done[name]
            group = self.groups[name]
            out: list[str] = []
            for phrase, line, field_name in group.phrases:
                ref = _GROUP_REF.fullmatch(phrase)
                if ref is None:
                    if self._check_phrase(phrase, group.file, line, field_name):
                        out.append(phrase)
                    continue
                inner = ref.group(1).strip()
                if inner in stack:
                    self.issues.add(
                        group.file, line, field_name, f"group <{inner}> contains itself"
                    )
                elif inner not in self.groups:
                    self._unknown_group(inner, group.file, line, field_name)
                else:
                    out.extend(visit(inner, (*stack, inner)))
            done[name] = tuple(dict.fromkeys(out))
            return done[name]

        for name in self.groups:
            visit(name, (name,))
        return done

    def _unknown_group(self, name: str, file: str, line: int, field_name: str) -> None:
        close = difflib.get_close_matches(name, sorted(self.groups), n=1)
        hint = f" (did you mean <{close[0]}>?)" if close else ""
        self.issues.add(file, line, field_name, f"unknown group <{name}>{hint}")

    def _expand(
        self, phrases: list[tuple[str, int, str]], file: str, groups: dict[str, tuple[str, ...]]
    ) -> tuple[str, ...]:
        out: list[str] = []
        for phrase, line, field_name in phrases:
            ref = _GROUP_REF.fullmatch(phrase)
            if ref is None:
                if self._check_phrase(phrase, file, line, field_name):
                    out.append(phrase)
            elif ref.group(1).strip() in groups:
                out.extend(groups[ref.group(1).strip()])
            else:
                self._unknown_group(ref.group(1).strip(), file, line, field_name)
        return tuple(dict.fromkeys(out))

    def _resolve_rules(self, groups: dict[str, tuple[str, ...]]) -> tuple[Rule, ...]:
        out = []
        for pending in self.rules.values():
            expanded = tuple(self._expand(group, pending.file, groups) for group in pending.groups)
            unless = self._expand(pending.unless, pending.file, groups)
            if not all(expanded):
                continue
            out.append(
                Rule(
                    pending.name,
                    pending.theme,
                    pending.severity,
                    expanded,
                    pending.firm,
                    pending.within,
                    pending.ordered,
                    unless,
                    pending.note,
                    pending.language,
                    pending.source,
                    pending.ends,
                )  # fmt: skip
            )
        return tuple(out)

    def _spellings(self, sec: Section) -> None:
        table = sec.section("spellings")
        if table is None:
            return
        for word in table.keys():
            where = f"{table.file}:{table.line_of(word)}"
            if not isinstance(word, str) or not _WORDS.fullmatch(word):
                table.error(word, "spellings belong to a word or words (letters and digits)")
                continue
            for wrong, line, name in table.strings(word):
                wrong = wrong.lower()
                if not _ONE_WORD.fullmatch(wrong) or wrong == word.lower():
                    self.issues.add(
                        table.file, line, name, f"{wrong!r} is not another one-word spelling"
                    )
                    continue
                if wrong in self.spellings and self.spellings[wrong][0] != word.lower():
                    first, at = self.spellings[wrong]
                    self.issues.add(
                        table.file,
                        line,
                        name,
                        f"{wrong!r} is already a spelling of {first!r} ({at})",
                    )
                    continue
                self.spellings[wrong] = (word.lower(), where)

    def _context(self, item: Section, theme: str | None) -> None:
        item.check_keys(CONTEXT_KEYS)
        phrase = item.text("phrase", required=True)
        lower = item.number("lower", minimum=1, maximum=2)
        suppress = item.flag("suppress")
        if lower is not None and suppress:
            item.error("suppress", "give either 'lower' or 'suppress: true', not both")
            return
        if lower is None and not suppress:
            if "lower" not in item:
                item.error(None, "a context rule needs 'lower: 1', 'lower: 2' or 'suppress: true'")
            return
        themes: frozenset[str] | None = frozenset({theme}) if theme else None
        if "themes" in item:
            if theme is not None:
                item.error("themes", "in a theme file a context rule applies to its own theme")
                return
            listed = item.strings("themes")
            for name, line, field_name in listed:
                self.context_themes.append((item, name, line, field_name))
            themes = frozenset(name for name, _, _ in listed)
        if not phrase:
            return
        lowering = SUPPRESS if suppress else lower or 0
        self.context.append(ContextRule(phrase, lowering, themes, f"{item.file}:{item.line}"))

    def library(self) -> Library:
        for item, name, line, field_name in self.context_themes:
            if name not in self.themes:
                known = ", ".join(sorted(self.themes))
                self.issues.add(
                    item.file, line, field_name, f"unknown theme {name!r}; expected one of: {known}"
                )
        for theme, language, text, file, line, name in self.removed:
            key = (theme, language, text)
            if self.terms.pop(key, None) is None and self.rules.pop(key, None) is None:
                self.issues.add(
                    file, line, name, f"{text!r} is not a term or rule of {theme} in {language}"
                )
        groups = self._expand_groups()
        if self.opinion is not None:
            for name in sorted(set(self.opinion.themes) - set(self.themes)):
                self.issues.add(self.opinion.source, None, "themes", f"unknown theme {name!r}")
        return Library(
            terms=tuple(self.terms.values()),
            rules=self._resolve_rules(groups),
            groups=groups,
            allow=tuple(self.allow),
            context=tuple(self.context),
            themes=self.themes,
            spellings={wrong: word for wrong, (word, _) in self.spellings.items()},
            languages=tuple(sorted(self.languages)),
            files=tuple(self.files),
            opinion=self.opinion,
            reader=self.reader,
        )
