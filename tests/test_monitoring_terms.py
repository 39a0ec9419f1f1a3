"""The risk-term library loader, the normaliser and the matcher."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from schoolgate.core.configfile import ConfigError, Issues
from schoolgate.monitoring.library import load_library
from schoolgate.monitoring.normaliser import Normaliser
from schoolgate.monitoring.terms import Matcher, load_matcher, normalise


@pytest.fixture(scope="module")
def shipped() -> Matcher:
    return load_matcher()


def _library(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def _matcher(tmp_path: Path, files: dict[str, str]) -> Matcher:
    return load_matcher([_library(tmp_path, files)])


SMALL = {
    "en/suicide.yaml": """
        theme: suicide
        terms:
          - {term: kill myself, severity: 3, firm: true}
          - {term: suicide, severity: 2}
        allow: [kill myself laughing]
        """,
    "en/weapons_violence.yaml": """
        theme: weapons_violence
        terms:
          - {term: kill, severity: 1}
          - {term: shoot, severity: 1}
        allow: [kill the lights, shoot a video]
        """,
    "en/context.yaml": """
        context:
          - {phrase: macbeth, lower: 2, themes: [suicide, weapons_violence]}
        spellings:
          suicide: [sucide]
          want to: [wanna]
        """,
}


# -- the normaliser -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Kill MYSELF", "kil myself"),
        ("k1ll mys3lf", "kil myself"),
        ("KIIIILLLL myyyyself!!!", "kil myself"),
        ("k i l l myself", "kil myself"),
        ("s.u.i.c.i.d.e", "suiside"),
        ("self-harm", "self harm"),
        ("self_harm", "self harm"),
        ("$uicide", "suiside"),
        ("su!c!de", "suiside"),
        ("su\u0456\u0441ide", "suiside"),  # Cyrillic і and с
        ("\uff53\uff55\uff49\uff43\uff49\uff44\uff45", "suiside"),  # fullwidth
        ("\U0001d42c\U0001d42e\U0001d422\U0001d41c\U0001d422\U0001d41d\U0001d41e", "suiside"),
        ("su\u200bi\u00adcide", "suiside"),  # zero-width space, soft hyphen
        ("s\u00fc\u00efc\u00efd\u00e9", "suiside"),  # accents
        ("don't", "dont"),
        ("year 7 1488", "year 7 1488"),  # digits alone stay digits, repeats and all
        ("1500 calories", "1500 kalories"),  # not 150
        ("photo", "foto"),
        ("ecstacy", "ekstasy"),
        ("", ""),
    ],
)
def test_normalise(text, words):
    assert normalise(text).text == words


def test_joined_words_and_their_bounds():
    found = normalise("kill  my self")
    assert found.joined == "kilmyself"
    assert [i for i, b in enumerate(found.bounds) if b] == [0, 3, 5, 9]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("i wanna kill myself", "i want to kil myself"),  # a word read as two
        ("a b c d", "abkd"),  # one-character words only: spelled out
        ("is it a b c", "is it abk"),
        ("a cat is a cat", "a kat is a kat"),  # one between two others, not three
        ("x marks the spot y", "ks marks the spot y"),  # at both ends only
        ("how to k i l l", "how to kil"),
    ],
)
def test_a_normaliser_with_a_memory_reads_as_normalise_does(text, words):
    spellings = {"wanna": "want to"}
    remembering = Normaliser(spellings)
    for _ in range(2):  # words new, then remembered
        found = remembering(text)
        assert found.text == words
        assert found == normalise(text, spellings)


# -- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "how to kill myself",
        "HOW TO KILL MYSELF",
        "how to k1ll my5elf",
        "how to kiiiill myselfff",
        "how to killmyself",
        "how to k i l l myself",
        "how to kill.myself",
        "how to kiII myself",  # capital I for l
        "how to ki11 myself",
        "how to kіll myself",  # Cyrillic і
    ],
)
def test_evasions_still_match(tmp_path, text):
    found = _matcher(tmp_path, SMALL).assess(text)
    assert found.severity == 3
    assert found.top.term == "kill myself" and found.top.theme == "suicide"


@pytest.mark.parametrize("text", ["skill myself", "killmyselfie", "kill mys elf", "overkill"])
def test_word_boundaries(tmp_path, text):
    matcher = _matcher(tmp_path, SMALL)
    assert matcher.assess(text).severity < 3


def test_allow_phrases_suppress_and_say_which(tmp_path):
    matcher = _matcher(tmp_path, SMALL)
    found = matcher.assess("kill the lights please")
    assert found.severity == 0 and not found.active
    (match,) = found.suppressed
    assert (match.term, match.suppressed_by) == ("kill", "kill the lights")
    assert matcher.assess("how to shoot a video on my phone").severity == 0
    # the allow-phrase covers only its own match
    found = matcher.assess("kill the lights then shoot")
    assert [(m.term, m.severity) for m in found.active] == [("shoot", 1)]


def test_allow_phrase_only_for_its_theme(tmp_path):
    files = {
        "en/drugs.yaml": "theme: drugs\nterms: [{term: weed, severity: 1}]\n",
        "en/weapons_violence.yaml": (
            "theme: weapons_violence\nterms: [{term: kill, severity: 1}]\nallow: [kill weed]\n"
        ),
    }
    found = _matcher(tmp_path / "a", files).assess("how to kill weed")
    assert [(m.theme, m.active) for m in found.matches] == [
        ("drugs", True),
        ("weapons_violence", False),
    ]
    everywhere = {**files, "en/context.yaml": "allow: [kill weed]\n"}
    assert _matcher(tmp_path / "b", everywhere).assess("how to kill weed").severity == 0


def test_a_shorter_term_inside_a_longer_one_is_not_reported_again(tmp_path):
    matcher = _matcher(tmp_path, SMALL)
    found = matcher.assess("how to kill myself")
    assert [m.term for m in found.matches] == ["kill myself"]  # not "kill" in violence too
    found = matcher.assess("i could kill myself laughing")
    assert found.severity == 0
    assert [(m.term, m.suppressed_by) for m in found.matches] == [
        ("kill myself", "kill myself laughing")
    ]


def test_context_lowers_but_never_a_firm_term(tmp_path):
    matcher = _matcher(tmp_path, SMALL)
    found = matcher.assess("macbeth suicide scene")
    assert found.severity == 0
    assert found.suppressed[0].suppressed_by == "macbeth"
    found = matcher.assess("macbeth i want to kill myself")
    assert found.severity == 3
    assert found.top.lowered_by is None


def test_word_spellings_reach_every_term_with_the_word(tmp_path):
    matcher = _matcher(tmp_path, SMALL)
    assert matcher.assess("sucide").top.term == "suicide"
    assert matcher.assess("i wanna kill myself").severity == 3


def test_result_json(tmp_path):
    found = _matcher(tmp_path, SMALL).assess("macbeth suicide")
    assert found.matches[0].to_json() == {
        "theme": "suicide",
        "severity": 0,
        "term": "suicide",
        "base_severity": 2,
        "suppressed_by": "macbeth",
    }


def test_empty_text_and_empty_library(tmp_path):
    matcher = _matcher(tmp_path, SMALL)
    assert matcher.assess("").severity == 0
    assert matcher.assess(None).severity == 0
    empty = _matcher(tmp_path / "empty", {"en/context.yaml": "language: en\n"})
    assert empty.assess("kill myself").severity == 0


def test_very_long_text_is_bounded(shipped):
    text = "homework " * 100_000 + "kill myself"
    assert shipped.assess(text).severity == 0  # only the first 2000 characters are read
    assert shipped.assess("kill myself " + "homework " * 100_000).severity == 3


# -- the shipped library -------------------------------------------------------------------


def test_shipped_library_loads_without_warnings():
    issues = Issues()
    library = load_library([Path(__file__).parents[1] / "blocklists" / "safeguarding"], issues)
    Matcher(library, issues)
    assert not issues.items and not issues.warnings
    assert {t.theme for t in library.terms} >= {
        "self_harm",
        "suicide",
        "eating_disorders",
        "extremism",
        "sexual_exploitation",
        "bullying",
        "drugs",
        "weapons_violence",
        "pornography",
    }
    for severity in (1, 2, 3):
        assert any(t.severity == severity for t in library.terms)


@pytest.mark.parametrize(
    ("text", "theme"),
    [
        ("how to kill myself", "suicide"),
        ("how to kill my self", "suicide"),
        ("how to hide self harm scars", "self_harm"),
        ("pro ana tips", "eating_disorders"),
        ("how to make a pipe bomb", "extremism"),
        ("he keeps asking me for nudes", "sexual_exploitation"),
        ("how to join county lines", "drugs"),
        ("my dad hits me", "weapons_violence"),
        ("rape porn", "pornography"),
        ("how to make someone kill themselves", "bullying"),
    ],
)
def test_shipped_severity_3_per_theme(shipped, text, theme):
    found = shipped.assess(text)
    assert found.severity == 3
    assert theme in found.themes(3)


@pytest.mark.parametrize(
    "text",
    [
        "kill the lights",
        "how to shoot a video",
        "macbeth suicide scene",
        "history of the holocaust",
        "knife crime pshe lesson",
        "drugs education year 9",
        "i cut myself shaving",
    ],
)
def test_shipped_is_quiet_on_school_work(shipped, text):
    assert shipped.assess(text).severity == 0


@pytest.mark.parametrize(
    "text", ["how to kill", "how to kill a process", "how to kill a zombie", "how to kill weeds"]
)
def test_shipped_asking_how_to_kill_is_no_alert_on_its_own(shipped, text):
    # Asking how is not intent: "i want to unalive" (read as "kill") is, and still alerts.
    assert shipped.assess(text).severity < 3
    assert shipped.assess("i want to unalive").severity == 3


@pytest.mark.parametrize(
    ("text", "theme"),
    [
        ("buying a zombie knife off snap", "weapons_violence"),
        ("my football coach says our messages have to stay secret", "sexual_exploitation"),
        ("they said if i come in on monday im dead", "bullying"),
        ("my coach said our special secret cant be told to anyone", "sexual_exploitation"),
        ("older boys got me holding packages for them cant say no", "drugs"),
        ("they burned me with a lighter on the bus", "bullying"),
        ("theyre waiting outside my house with knives", "weapons_violence"),
        ("ive decided im doing it this weekend", "suicide"),
        ("how to say goodbye to friends without them knowing", "suicide"),
        ("ordering a machete online at 15 age check", "weapons_violence"),
    ],
)
def test_shipped_alerts_on_a_frame_of_broad_groups(shipped, text, theme):
    # A zombie knife is a weapon, not a game; a secret an adult asks for is a grooming sign.
    # An older person and a secret, made to hold packages, hurt by others, danger now with a
    # weapon, a time set for "it", a hidden goodbye, a purchase under age: each a frame.
    assert theme in shipped.assess(text).themes(3)


@pytest.mark.parametrize(
    "text",
    [
        "how to stop dying in hollow knight",
        "my mums boyfriend is planning to propose dont tell her",
        "they beat me at fifa 5 0",
        "my dad is coming round with a hammer to fix the shelf",
        "ive decided to end things with my boyfriend tonight",
        "how to say goodbye to friends when moving school",
        "my mum made me carry the shopping bags home",
        "roblox secret room code how to find",
        "keep my minecraft world secret from my brother",
        "my dad plays fortnite with me every weekend",
    ],
)
def test_shipped_frames_stay_below_an_alert_on_their_look_alikes(shipped, text):
    # A game, a surprise, a score, DIY, a break-up, a move and shopping share the frames' words;
    # so do the online games, where a grooming rule is never lowered (below).
    assert shipped.assess(text).severity < 3


@pytest.mark.parametrize(
    "text",
    [
        "he said keep it our secret or he will stop being my friend on roblox",
        "the man i play fortnite with says our chats are our little secret",
        "a grown man in my roblox group says we have a special secret",
    ],
)
def test_shipped_grooming_on_an_online_game_still_alerts(shipped, text):
    # The games children chat in are where grooming starts: a game's name lowers the violence
    # rules ("how to stab in mm2") but never the grooming ones.
    assert "sexual_exploitation" in shipped.assess(text).themes(3)


# -- errors name file, line and field --------------------------------------------------------


def _errors(tmp_path: Path, files: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        _matcher(tmp_path, files)
    return [str(issue) for issue in raised.value.issues]


def test_errors_name_file_line_and_field(tmp_path):
    errors = _errors(
        tmp_path,
        {
            "en/mine.yaml": """
                theme: suicide
                terms:
                  - {term: kill myself, severity: 4}
                  - {term: hang myself}
                  - {term: kill myself, severity: 3}
                  - {term: kill myself, severity: 3}
                  - {trem: x, severity: 1}
                  - {term: ab, severity: 1}
                context:
                  - {phrase: macbeth, lower: 1, suppress: true}
                """
        },
    )
    where = str(tmp_path / "en" / "mine.yaml")
    assert f"{where}:4: terms[0].severity: expected a whole number of at most 3, got 4" in errors
    assert f"{where}:5: terms[1]: missing required field 'severity' (a whole number)" in errors
    assert any(
        e.startswith(f"{where}:7: terms[3].term: 'kill myself' is already listed") for e in errors
    )
    assert any(e.startswith(f"{where}:8: terms[4].trem: unknown key") for e in errors)
    assert any(e.startswith(f"{where}:9: term: 'ab' is too short") for e in errors)
    assert (
        f"{where}:11: context[0].suppress: give either 'lower' or 'suppress: true', not both"
        in errors
    )


def test_unknown_theme_and_language_mismatch(tmp_path):
    errors = _errors(
        tmp_path,
        {
            "en/a.yaml": "theme: gambling\nlanguage: fr\nterms: [{term: bet365, severity: 1}]\n",
            "en/b.yaml": "context: [{phrase: casino, lower: 1, themes: [nope]}]\n",
            "en/c.yaml": "terms: [{term: x y z, severity: 1}]\n",
            "en/d.yaml": "theme: drugs\nremove: [not a shipped term]\n",
            "en/e.yaml": "spellings:\n  want to: [wanna]\n  need to: [wanna]\n",
            "en/f.yaml": "theme: [not, text]\n: broken",
        },
    )
    joined = "\n".join(errors)
    assert "a.yaml:1: theme: 'gambling' is not one of the shipped themes" in joined
    assert "a.yaml:2: language: this file is in the 'en' folder, not 'fr'" in joined
    assert "b.yaml:1: context[0].themes[0]: unknown theme 'nope'" in joined
    assert "c.yaml:1: missing required field 'theme'" in joined
    assert "d.yaml:2: remove[0]: 'not a shipped term' is not a term or rule of drugs" in joined
    assert "e.yaml:3: spellings.need to[0]: 'wanna' is already a spelling of 'want to'" in joined
    assert "f.yaml:2: invalid YAML" in joined


def test_a_school_extends_and_removes(tmp_path):
    school = _library(
        tmp_path / "school",
        {
            "en/gambling.yaml": """
                theme: gambling
                title: Gambling
                terms: [{term: online casino, severity: 1}]
                """,
            "en/suicide_local.yaml": """
                theme: suicide
                terms: [{term: unalive myself, severity: 3, firm: true}]
                remove: [suicide]
                """,
        },
    )
    shipped = _library(tmp_path / "shipped", SMALL)
    matcher = load_matcher([shipped, school])
    assert matcher.assess("best online casino").top.theme == "gambling"
    assert matcher.assess("how to unalive myself").severity == 3
    assert matcher.assess("suicide").severity == 0
    assert matcher.library.themes["gambling"] == "Gambling"


def test_idle_allow_phrase_is_a_warning(tmp_path):
    issues = Issues()
    library = load_library(
        [
            _library(
                tmp_path,
                {
                    "en/x.yaml": "theme: drugs\nterms: [{term: weed, severity: 1}]\n"
                    "allow: [weeds in the garden]\n"
                },
            )
        ],
        issues,
    )
    Matcher(library, issues)
    assert not issues.items
    assert [str(w) for w in issues.warnings] == [
        f"{tmp_path / 'en' / 'x.yaml'}:3: allow: 'weeds in the garden' contains no term of "
        "drugs: it has no effect"
    ]
