"""Codec choice on a validation split: ``reelpack tune``; and the ``--codecs autoN --tune FILE`` of ``pack`` and
``build-catalog`` (they import the helpers here inside the command: the order of ``reelpack --help`` is the
order of registration).

``tune`` needs the ``[train]`` extra (two-tower training, fine-tuning); reading a tune result does not
(:mod:`reelpack.models` imports torch only when a name that needs it is used); a command given ``autoN``
without ``--tune`` says to run ``reelpack tune``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from reelpack.cli.shared import DataOpt, app, console, fail, load_split, need, parse_codecs, two_tower_embeddings
from reelpack.errors import ReelpackError

__all__ = ["tune_cmd", "has_auto_spec", "load_tune_for", "resolve_auto_codecs", "auto_popularity_betas",
           "auto_exposure_betas", "popularity_fit_weights", "popularity_beta_meta", "fit_weights_for",
           "require_users_for_exposure",
           "tune_file_name"]

_AUTO = re.compile(r"auto[0-9]+")


def tune_file_name(dim: int) -> str:
    """``tune-d{dim}.json``: the file ``reelpack tune`` writes in ``--out``."""
    return f"tune-d{dim}.json"


def _parse_numbers(text: str, kind: type, option: str, example: str, ok: Callable[[Any], bool], what: str) -> list:
    """Comma/space-separated numbers of ``option`` as ``kind``; typer.BadParameter when one does not parse or one
    fails ``ok`` (``what`` says what they must be)."""
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated {what} such as {example}, got {text!r}") from None
    if not values or not all(ok(v) for v in values):
        raise typer.BadParameter(f"{option} must be {what} such as {example}, got {text!r}")
    return values


def _parse_budgets(text: str) -> list[int]:
    return _parse_numbers(text, int, "--budget", "8,16,32", lambda b: b >= 1, "positive bytes per item")


def _parse_betas(text: str, option: str = "--popularity-betas") -> list[float]:
    from reelpack.data import MAX_POPULARITY_BETA

    return _parse_numbers(text, float, option, "0,1", lambda b: 0.0 <= b <= MAX_POPULARITY_BETA,
                          f"numbers in [0, {MAX_POPULARITY_BETA:g}]")  # fmt: skip


@app.command("tune")
def tune_cmd(
    data: DataOpt = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension of the two-tower model.")] = 64,
    budget: Annotated[str, typer.Option("--budget", help="Bytes per item to choose a codec for, e.g. 8,16,32.")] = "8,16,32",
    seeds: Annotated[int, typer.Option("--seeds", help="Codec fitting seeds per candidate (the spread is over them).")] = 3,
    val_fraction: Annotated[
        float, typer.Option(help="Share of each user's train items held out for validation (the test split is not read).")
    ] = 0.1,
    val_seed: Annotated[int, typer.Option(help="Seed of the validation hold-out.")] = 0,
    max_users: Annotated[Optional[int], typer.Option(help="Evaluate a seeded sample of this many validation users.")] = None,
    out: Annotated[Path, typer.Option(help="Folder of the result (tune-dD.json).")] = Path("results/tune"),
    no_finetune: Annotated[bool, typer.Option("--no-finetune", help="Do not fine-tune the qat- candidates.")] = False,
    candidates: Annotated[
        Optional[str],
        typer.Option(help="Specs to compare instead of every registered size match, e.g. 'pq8 rq8 sq4'; each joins "
                     "the budget equal to its bytes per item. 'rq8-n@pop1' fits with popularity exponent 1 only, "
                     "'rq8-n@expo1' with exposure exponent 1 only."),  # fmt: skip
    ] = None,
    popularity_betas: Annotated[
        str, typer.Option(help="Popularity exponents each candidate is fitted with: training rows drawn in proportion "
                          "to (item's fit interactions + 1) ** beta; 0 is uniform. E.g. '0,1' or '0'.")  # fmt: skip
    ] = "0,1",
    exposure_betas: Annotated[
        str, typer.Option(help="Exposure exponents each candidate is also fitted with: training rows drawn in "
                          "proportion to (users whose float32 top-1000 holds the item + 1) ** beta, from the "
                          "embeddings alone; pack and build-catalog then need the user vectors. Empty: none.")  # fmt: skip
    ] = "",
    finetune_epochs: Annotated[int, typer.Option(help="Epochs of each fine-tune.")] = 3,
    epochs: Annotated[Optional[int], typer.Option(help="Override the two-tower training epochs.")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Embedding cache folder.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Ignore cached embeddings.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split and training; the codec seeds are SEED..SEED+SEEDS-1.")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads of the fine-tunes.")] = 1,
) -> None:
    """Choose a codec per byte budget on a validation split carved from the train split (the test split stays
    for the report): every candidate of that size, several seeds, fine-tuned qat- codecs; writes OUT/tune-dD.json
    for `pack --codecs autoN --tune FILE`."""
    need("train", ("torch",), "reelpack tune")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reelpack.data import validation_split
    from reelpack.errors import InvalidInputError
    from reelpack.models.tune import candidate_specs, parse_weighted_candidate, tune_codecs

    try:
        budgets = _parse_budgets(budget)
        if seeds < 1:
            raise typer.BadParameter(f"--seeds must be >= 1, got {seeds}")
        given = parse_codecs(candidates) if candidates else None
        for word in given or ():  # a bad spec or @pop / @expo exponent fails here, before minutes of training
            parse_weighted_candidate(word)
        betas = _parse_betas(popularity_betas)
        expo_betas = _parse_betas(exposure_betas, "--exposure-betas") if exposure_betas.strip() else []
        if given is None:
            for b in budgets:  # NoCandidateError before minutes of training
                candidate_specs(b, dim)
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"--out {out} is a file; give a folder (the result is OUT/{tune_file_name(dim)})")
        split = load_split(data, seed)
        val = validation_split(split, val_fraction, val_seed)
        console.print(f"validation: {val_fraction:g} of each user's train items (seed {val_seed}); "
                      f"{val.eval_users().size} users with validation items; the two-tower trains on the rest")  # fmt: skip
        emb = two_tower_embeddings(val, dim, epochs, cache_dir, retrain, seed)
        with Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:  # fmt: skip
            task = bar.add_task("tune", total=None)

            def progress(done: int, total: int, what: str) -> None:
                bar.update(task, description=what, completed=done, total=total)

            result = tune_codecs(
                emb.user_emb, emb.item_emb, val, budgets, candidates=given, seeds=range(seed, seed + seeds),
                max_users=max_users, finetune=not no_finetune, progress=progress, finetune_epochs=finetune_epochs,
                threads=threads, popularity_betas=betas, exposure_betas=expo_betas,
            )  # fmt: skip
        result.provenance = {
            "embeddings": f"two-tower d={dim} trained on the fit part, {emb.config.to_dict()}",
            "command": "reelpack tune",
        }
        path = out / tune_file_name(dim)
        try:
            result.save(path)
        except OSError as exc:
            raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except ReelpackError as exc:
        fail(exc)
    _print_result(result)
    console.print(f"wrote {path}")
    console.print(f"use the choice: reelpack pack ITEMS.npy --codecs auto{result.budgets[0]} --tune {path} "
                  "(build-catalog takes the same --codecs and --tune)", highlight=False, soft_wrap=True)  # fmt: skip


def _print_result(result: Any) -> None:
    from rich.table import Table

    k = result.k
    for b in result.budgets:
        choice = result.choices[b]
        rows = sorted(result.rows_for(b), key=lambda r: (r.error is not None, -r.mean.get("rel_recall", 0.0)))
        label = "SYNTHETIC catalog" if result.data.get("synthetic") else str(result.data.get("source"))
        title = (f"{b} bytes/item at d={result.dim}: validation on {escape(label)}, "
                 f"{result.n_validation_users} users, {len(result.seeds)} seed(s)")  # fmt: skip
        table = Table(title=title)
        for col in ("", "codec", f"val rel R@{k}", "min / max", "rel NDCG@10", "fit s", "encode s", "fine-tune"):
            table.add_column(col, justify="left" if col in ("", "codec", "fine-tune") else "right")
        for r in rows:
            mark = "[bold green]chosen[/]" if r.label == choice.label else ""
            if r.error is not None:
                table.add_row(mark, escape(r.label), "-", "-", "-", "-", "-", f"[red]{escape(r.error)}[/]")
                continue
            table.add_row(
                mark, escape(r.label), f"{r.mean['rel_recall']:.4f} ± {r.std['rel_recall']:.4f}",
                f"{r.min['rel_recall']:.4f} / {r.max['rel_recall']:.4f}", f"{r.mean['rel_ndcg']:.4f}",
                f"{r.mean['fit_s']:.2f}", f"{r.mean['encode_s']:.3f}", escape(r.finetune or ""),
            )  # fmt: skip
        console.print(table)
        tie = "[bold yellow]TIE[/]: " if choice.tie else ""
        console.print(f"  {tie}{escape(choice.reason)} -> [bold]{escape(choice.label)}[/]")
    if any(r.popularity_beta for r in result.rows):
        console.print("  spec@popB: fitted on rows drawn in proportion to (item's fit interactions + 1) ** B; "
                      "pack and build-catalog fit it the same way (--item-counts)")  # fmt: skip
    if any(r.exposure_beta for r in result.rows):
        console.print(f"  spec@expoB: fitted on rows drawn in proportion to (users whose float32 top-{result.exposure_k} "
                      "holds the item + 1) ** B; pack and build-catalog fit it the same way (--users)")  # fmt: skip
    for s in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(s['spec'])}: {escape(s['reason'])}")


# ================================================================================================
# --codecs autoN --tune FILE (pack, build-catalog)
# ================================================================================================
def has_auto_spec(specs: Sequence[str]) -> bool:
    """Whether a spec of ``specs`` is ``autoN``."""
    return any(_AUTO.fullmatch(s.strip().lower()) for s in specs)


def load_tune_for(specs: Sequence[str], tune: Path | None, what: str) -> Any:
    """The :class:`~reelpack.models.tune.TuneResult` of ``--tune`` when ``specs`` hold an ``autoN``, else None.

    Raises:
        InvalidInputError: ``autoN`` without ``--tune`` (the message says to run ``reelpack tune``).
        DataNotFoundError, SerializationError: the file is missing or unreadable.
    """
    from reelpack.errors import InvalidInputError

    auto = [s for s in specs if _AUTO.fullmatch(s.strip().lower())]
    if not auto:
        return None
    if tune is None:
        n = auto[0].strip().lower()[4:]
        raise InvalidInputError(
            f"--codecs {auto[0]} is the codec `reelpack tune` chose on a validation split for {n} bytes per item: "
            f"run `reelpack tune --dim D --budget {n}` first, then give its result with --tune OUT/tune-dD.json"
        )
    from reelpack.models.tune import TuneResult  # needs no torch (reelpack.models imports lazily)

    return TuneResult.load(tune)


def resolve_auto_codecs(specs: Sequence[str], result: Any, dim: int) -> list[str]:
    """``specs`` with each ``autoN`` replaced by the spec ``result`` chose for N bytes at ``dim``; each replacement
    printed (``auto16 -> rq16 (validation rel R@50 0.9712)``)."""
    from reelpack.models.tune import resolve_auto_spec

    label = "SYNTHETIC data" if result.data.get("synthetic") else str(result.data.get("source", "?"))
    out = []
    for s in specs:
        if not _AUTO.fullmatch(s.strip().lower()):
            out.append(s)
            continue
        spec = resolve_auto_spec(s, dim, result)
        c = result.choice(int(s.strip().lower()[4:]))
        note = ""
        if c.finetuned:  # the pack gets the codec as fitted, not the fine-tuned codebooks
            rows = [r for r in result.rows_for(c.budget) if r.label == c.label]
            before = [e.get("untouched_rel_recall") for e in rows[0].per_seed] if rows else []
            if before and all(isinstance(x, (int, float)) for x in before):
                note = f"; that is after fine-tuning, packed untouched it was {sum(before) / len(before):.4f}"
        tie = ", a tie" if c.tie else ""
        if c.popularity_beta:
            note += f"; fitted with popularity weights (item interactions + 1) ** {c.popularity_beta:g}"
        if c.exposure_beta:
            note += f"; fitted with exposure weights (top-{result.exposure_k} exposure + 1) ** {c.exposure_beta:g}"
        console.print(f"{escape(s)} -> [bold]{escape(spec)}[/] (validation rel R@{result.k} {c.rel_recall:.4f}{tie}, "
                      f"chosen on {escape(label)}{note})")  # fmt: skip
        out.append(spec)
    return out


def _auto_choice_field(specs: Sequence[str], result: Any, name: str) -> list[float]:
    """Per spec of ``specs``: field ``name`` of the tune choice for an ``autoN``, 0 for any other spec or when
    ``result`` is None."""
    return [float(getattr(result.choice(int(s.strip().lower()[4:])), name))
            if result is not None and _AUTO.fullmatch(s.strip().lower()) else 0.0 for s in specs]  # fmt: skip


def auto_popularity_betas(specs: Sequence[str], result: Any) -> list[float]:
    """The popularity exponent each spec of ``specs`` is fitted with: the tune choice's ``popularity_beta`` for an
    ``autoN`` (0 when ``result`` is None or for any other spec). ``specs`` are those given to
    :func:`resolve_auto_codecs`, in the same order."""
    return _auto_choice_field(specs, result, "popularity_beta")


def auto_exposure_betas(specs: Sequence[str], result: Any) -> list[float]:
    """The exposure exponent each spec of ``specs`` is fitted with: the tune choice's ``exposure_beta`` for an
    ``autoN`` (0 when ``result`` is None or for any other spec), in the order of ``specs``."""
    return _auto_choice_field(specs, result, "exposure_beta")


def fit_weights_for(specs: Sequence[str], pop_betas: Sequence[float], expo_betas: Sequence[float], item_counts: Any,
                    user_emb: Any, item_emb: Any, exposure_k: int, counts_what: str,
                    users_what: str) -> tuple[list[Any], dict[str, Any] | None]:  # fmt: skip
    """Per codec the fit weights (None: uniform; popularity weights of ``item_counts``, or exposure weights of
    ``user_emb`` float [n_users, d] and ``item_emb`` float [n, d] with top-``exposure_k``), and what they are as
    pack metadata / the catalog manifest records them (None when every fit is uniform): ``{"popularity_beta":
    {spec: beta}}`` and / or ``{"exposure_beta": {spec: beta}, "exposure_k": K}``.

    Raises:
        InvalidInputError: a codec needs item counts or user vectors that were not given (the message names
            ``counts_what`` or ``users_what``, the option that gives them).
    """
    from reelpack.data import exposure_counts, weights_from_exposure

    weights = popularity_fit_weights(pop_betas, item_counts, counts_what)
    require_users_for_exposure(expo_betas, user_emb, exposure_k, users_what)
    if any(b > 0 for b in expo_betas):
        counts = exposure_counts(user_emb, item_emb, exposure_k)
        weights = [weights_from_exposure(counts, e) if e > 0 else w for w, e in zip(weights, expo_betas)]
    info: dict[str, Any] = {}
    if any(b > 0 for b in pop_betas):
        info["popularity_beta"] = popularity_beta_meta(specs, pop_betas)
    if any(b > 0 for b in expo_betas):
        info["exposure_beta"] = popularity_beta_meta(specs, expo_betas)
        info["exposure_k"] = int(exposure_k)
    return weights, (info or None)


def require_users_for_exposure(expo_betas: Sequence[float], user_emb: Any, exposure_k: int, what: str) -> None:
    """InvalidInputError (naming ``what``, the option that gives them) when a codec is fitted with exposure weights
    (an exponent of ``expo_betas`` > 0) and ``user_emb`` is None."""
    from reelpack.errors import InvalidInputError

    if user_emb is None and any(b > 0 for b in expo_betas):
        beta = next(b for b in expo_betas if b > 0)
        raise InvalidInputError(
            f"the tune result chose a codec fitted with exposure weights (users whose float32 top-{exposure_k} "
            f"holds the item + 1) ** {beta:g} on validation; give the user vectors with {what}"
        )


def popularity_beta_meta(specs: Sequence[str], betas: Sequence[float]) -> dict[str, float]:
    """``{canonical spec: beta}`` of the codecs fitted with popularity weights (``beta > 0``), as ``pack`` and
    ``build-catalog`` record them (``popularity_beta`` in the pack metadata and the catalog manifest)."""
    from reelpack.codecs import make_codec

    return {make_codec(s).spec: float(b) for s, b in zip(specs, betas) if b > 0}


def popularity_fit_weights(betas: Sequence[float], item_counts: Any, what: str) -> list[Any]:
    """Per codec: ``None`` (uniform fit) or :func:`reelpack.data.popularity_weights` float64 [n] of ``item_counts``
    for its exponent.

    Raises:
        InvalidInputError: a codec needs weights and ``item_counts`` is None (the message names ``what``, the option
            that gives them).
    """
    from reelpack.data import popularity_weights
    from reelpack.errors import InvalidInputError

    if any(b > 0 for b in betas) and item_counts is None:
        beta = next(b for b in betas if b > 0)
        raise InvalidInputError(
            f"the tune result chose a codec fitted with popularity weights (item interactions + 1) ** {beta:g} on "
            f"validation; give the items' training interaction counts with {what}"
        )
    return [popularity_weights(item_counts, b) if b > 0 else None for b in betas]
