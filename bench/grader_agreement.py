"""How far two graders agree on the labelled searches, and what the library finds of the
severity-3 searches both call severity 3.

The writers of ``tests/data/monitoring/searches.tsv`` graded their own searches;
``second_grades.tsv`` grades some splits again, by someone who never saw the writers' grades.
Prints the two gradings against each other, and severity-3 recall (found at 3, in one of the
writer's themes, as ``tests/test_monitoring_labelled.py`` scores it) on the searches the
writer graded 3 and on those both graded 3.

    python3 bench/grader_agreement.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_monitoring_labelled import LABELLED, load_labelled, score  # noqa: E402

from schoolgate.monitoring.terms import load_matcher  # noqa: E402

SECOND = LABELLED.parent / "second_grades.tsv"


def second_grades(path: Path = SECOND) -> dict[str, int]:
    """The second grader's severity of each search."""
    grades: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        severity, _themes, text = line.split("\t")
        if severity not in {"0", "1", "2", "3"}:
            raise SystemExit(f"{path}:{number}: severity {severity!r} is not 0 to 3")
        grades[text.strip()] = int(severity)
    return grades


def main() -> None:
    grades = second_grades()
    items = [i for i in load_labelled() if i.text in grades]
    splits = sorted({i.split for i in items}, key=lambda s: (len(s), s))
    print(f"{len(items)} searches graded twice ({', '.join(splits)})\n")
    pairs = Counter((i.severity, grades[i.text]) for i in items)
    print("writer \\ second grader     0     1     2     3")
    for mine in range(4):
        print(f"{mine:>22} " + " ".join(f"{pairs[(mine, theirs)]:>5}" for theirs in range(4)))
    matcher = load_matcher()
    writer = [i for i in items if i.severity >= 3]
    both = [i for i in writer if grades[i.text] >= 3]
    for name, part in (("graded 3 by the writer", writer), ("graded 3 by both", both)):
        s = score(matcher, part)
        print(f"\nseverity-3 recall, {name}: {s.severe_recall:.3f} ({s.severe_found}/{len(part)})")


if __name__ == "__main__":
    main()
