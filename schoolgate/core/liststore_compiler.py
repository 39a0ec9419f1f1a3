"""The list compiler's own process: :func:`schoolgate.core.liststore.compile_store` run on a
recipe read from stdin, so that parsing millions of entries costs the gateway neither memory nor
time on its event loop. Progress and the result go back as JSON lines on stdout."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from schoolgate.core.configfile import Issues
from schoolgate.core.liststore import compile_store, recipe_groups


def main(argv: list[str]) -> int:
    """``python -m schoolgate.core.liststore_compiler DEST``: compile the recipe on stdin into
    DEST."""
    recipe = json.load(sys.stdin)
    categories, allowlist = recipe_groups(recipe)
    issues = Issues()

    def report(phase: str, done: int, total: int) -> None:
        print(json.dumps({"progress": [phase, done, total]}), flush=True)

    gc.disable()  # millions of new objects that all live until the end: nothing to collect
    # This process has no other thread, so it may fork: a second core looks up half of the
    # keys' ids (see liststore_write.write_store).
    processes = 2 if (os.cpu_count() or 1) >= 2 else 1
    written = compile_store(categories, allowlist, Path(argv[0]), issues, report, processes)
    rows = {
        "errors": [[i.file, i.line, i.field, i.message] for i in issues.items],
        "warnings": [[w.file, w.line, w.field, w.message] for w in issues.warnings],
        "written": written,
    }
    print(json.dumps({"result": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
