"""``mixpro compare``: methods × grid variants × seeds with one recipe, in-process, resumable.

Owns the sweep: one run per (method, variant, seed) in ``<output>/<label>-seed<seed>`` (the
label is the method, plus the variant's ``key-value`` name when ``--grid`` is given). Before
the first run, every run's folder is checked (:func:`status`): a run whose recorded recipe
(``config.yaml``) differs from the planned one key for key (apart from :data:`NOT_THE_RUN`) is
refused in one line naming the keys (``--rerun``: trained again), as is one a live process
holds; then a run with a ``final.json`` is reused, one with a ``last.pt`` resumes from it,
one killed before its first checkpoint restarts, others start fresh. A grid key that a method
does not use is dropped for that method (its variants would be identical runs), so
``--methods none maskmix --grid mask_scale=1,2`` runs ``none`` once.
Then the table (per variant: top-1 mean ± std over seeds, n, the per-seed values and the paired
difference to the reference variant with its 95 % t interval, :mod:`mixpro.sweep`) as
``results.md`` and ``results.csv``, and the bar plot ``compare.png``: the paper's Tables 2
and 6–10 as one command.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mixpro import files, models, sweep
from mixpro.methods import HELPER_KEYS, METHODS, OPTION_NAMES, needs_attention, uses

from . import run
from .output import ARTEFACTS, FINAL
from .recipe import (
    FIELDS,
    ConfigError,
    Recipe,
    check_used,
    load_recipe,
    parse_value,
    suggest,
)

DEFAULT_RECIPE = "fashion_mnist_limited"
DEFAULT_METHODS = ("none", "cutmix", "transmix", "mixpro")
SET_BY_COMPARE = ("method", "seed", "output")
# recipe keys that do not change what a run computes: a finished run is reused across them
NOT_THE_RUN = ("output", "progress", "tensorboard", "threads", "workers", "device",
               "checkpoint_every_steps", "puzzlemix_workers", "attention_monitor")


class StaleRun(ConfigError):
    """A run folder holds a run of another recipe than the one planned (``path``;
    ``differences``: ``{key: (recorded, planned)}``)."""

    def __init__(self, path: Path, differences: Mapping[str, tuple[Any, Any]],
                 others: int = 0) -> None:
        shown = "; ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in
                          list(differences.items())[:3])
        more = f", +{len(differences) - 3} more keys" if len(differences) > 3 else ""
        runs = f" (and {others} more runs)" if others else ""
        super().__init__(f"{path} holds a run of another recipe ({shown}{more}){runs}: pass "
                         "--rerun to train it again, or choose another --output-dir")
        self.path, self.differences = path, dict(differences)


def recipe_differences(recorded: Mapping[str, Any], planned: Mapping[str, Any]
                       ) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, planned)}`` for every recipe key whose values differ, apart from
    :data:`NOT_THE_RUN` and the keys the method does not read (:func:`uses`: a mixing option
    it ignores, a helper it does not need); a key newer than the recorded recipe counts as
    its default."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(Recipe)}
    method = planned.get("method", recorded.get("method"))
    out = {}
    for key in dict.fromkeys([*planned, *recorded]):
        if key in NOT_THE_RUN or (method in METHODS and key != "method"
                                  and not uses(method, key)):
            continue
        then = recorded.get(key, defaults.get(key))
        now = planned.get(key, defaults.get(key))
        if then != now:
            out[key] = (then, now)
    return out


def recorded_recipe(folder: str | Path) -> dict[str, Any] | None:
    """The recipe a run folder's ``config.yaml`` records (None: no readable one)."""
    path = Path(folder) / "config.yaml"
    if not path.is_file():
        return None
    try:
        got = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    return got if isinstance(got, dict) else None


def status(cfg: Recipe, *, rerun: bool = False) -> str:
    """What a sweep does with the run folder ``cfg.output``: ``"finished"`` (its
    ``final.json`` is reused), ``"resume"`` (from its ``last.pt``), ``"restart"`` (run files
    of this recipe but no checkpoint yet: killed early; its files are replaced), ``"rerun"``
    (``rerun`` and another recipe's files: replaced) or ``"fresh"``.

    Raises:
        FolderLocked: a live process is training it.
        StaleRun: it holds a run of another recipe (and not ``rerun``).
    """
    out = Path(cfg.output)
    holder = files.lock_holder(out)
    if holder is not None:
        raise files.FolderLocked(out, holder)

    held = [a for a in ARTEFACTS if (out / a).exists()]
    if not held:
        return "fresh"
    recorded = recorded_recipe(out)
    differences = (recipe_differences(recorded, cfg.to_dict()) if recorded is not None
                   else {"config.yaml": ("missing or unreadable", "this plan's")})
    if differences:
        if rerun:
            return "rerun"
        raise StaleRun(out, differences)
    if (out / FINAL).is_file():
        return "finished"
    return "resume" if (out / "last.pt").is_file() else "restart"


def run_one(cfg: Recipe, state: str) -> dict:
    """Train (or reuse) the run ``cfg`` in the way :func:`status` gave; its summary."""
    if state == "finished":
        return json.loads((Path(cfg.output) / FINAL).read_text())
    return run.train(cfg, resume=state == "resume",
                     overwrite=state in ("restart", "rerun")).summary


@dataclass(frozen=True)
class Variant:
    """One column of the sweep: a method and the grid values it uses."""

    method: str
    assignment: tuple[tuple[str, str], ...]  # (key, value text) in grid order

    @property
    def label(self) -> str:
        if not self.assignment:
            return self.method
        return f"{self.method}_{sweep.variant_name(dict(self.assignment))}"

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: parse_value(v) for k, v in self.assignment}


def variants(methods: Sequence[str], grid: Mapping[str, Sequence[str]]) -> list[Variant]:
    """Methods × the grid's product, each restricted to the keys the method uses, deduplicated,
    in order (method outermost, then the grid's first key)."""
    out: list[Variant] = []
    for m in methods:
        for combo in sweep.expand_grid(grid):
            used = tuple((k, v) for k, v in combo.items() if uses(m, k))
            var = Variant(m, used)
            if var not in out:
                out.append(var)
    return out


_MIX_KEYS = frozenset(OPTION_NAMES)  # every method's keys are MixOptions fields (register())
def used_by(method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep-wide ``overrides`` that ``method`` uses (a key set for the sweep reaches the
    methods that read it; the others' runs stay the recipe's, so they match and reuse the
    same runs of other sweeps)."""
    return {k: v for k, v in overrides.items() if uses(method, k)}


def _check(methods: Sequence[str], seeds: Sequence[int], grid: Mapping[str, Sequence[str]],
           overrides: Mapping[str, Any]) -> None:
    for key in SET_BY_COMPARE:
        if key in overrides or key in grid:
            raise ConfigError(f"compare sets {key} itself; use --methods/--seeds/--output-dir")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ConfigError("--methods and --seeds must not repeat")
    for key in grid:
        if key not in FIELDS:
            raise ConfigError(f"--grid: unknown recipe key {key!r}{suggest(key)}")
        if key in overrides:
            raise ConfigError(f"{key} is both swept (--grid) and fixed (--{key} / --set)")
    for key in list(overrides) + list(grid):
        if key in _MIX_KEYS and all(key not in METHODS[m].keys for m in methods):
            check_used(methods[0], [key])  # no method of the sweep uses it: the same error
        if key in HELPER_KEYS and not any(uses(m, key) for m in methods):
            raise ConfigError(f"no method of this sweep uses {key} (it is for "
                              f"{', '.join(m for m in METHODS if key in METHODS[m].helpers)})")


def summarize(results: Mapping[Variant, Mapping[int, dict]], reference: str | None = None,
              ) -> list[dict[str, Any]]:
    """One row per variant: ``variant, method, <grid keys>, n, mean, std, seeds, values,
    delta, delta_low, delta_high, best_mean, img_per_s, train_time_s`` (accuracies in %)."""
    rows_in = [{"variant": v.label, "seed": s, "value": r["test_acc"]}
               for v, runs in results.items() for s, r in runs.items()]
    labels = [v.label for v in results]
    if reference is not None and reference not in labels:
        raise ConfigError(f"--reference {reference!r} is not a variant of this sweep; "
                          f"choose one of {', '.join(labels)}")
    stats = {s["variant"]: s for s in sweep.summarize_variants(rows_in, reference=reference)}
    rows = []
    for v, runs in results.items():
        st = stats[v.label]
        d = st["vs_reference"]
        rows.append({
            "variant": v.label, "method": v.method, **dict(v.assignment),
            "n": st["n"], "mean": st["mean"], "std": st["std"] or 0.0,
            "seeds": st["seeds"], "values": st["values"], "reference": st["reference"],
            "delta": d["mean"] if d else None,
            "delta_low": d["ci_low"] if d else None, "delta_high": d["ci_high"] if d else None,
            "best_mean": statistics.fmean(r["best_acc"] for r in runs.values()),
            "img_per_s": statistics.fmean(r["img_per_s"] for r in runs.values()),
            "train_time_s": statistics.fmean(r["train_time_s"] for r in runs.values()),
        })
    return rows


def _fmt(v: float | None, plus: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.2f}" if plus else f"{v:.2f}"


def markdown(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """The results table (Markdown)."""
    ref = rows[0]["reference"] if rows else ""
    lines = [f"### {title}", "",
             f"| variant | runs | top-1 (%) mean ± std | per seed | Δ vs {ref} (95 % CI, "
             "paired) | best-epoch top-1 (%) | train img/s | train time / run (s) |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["variant"] == r["reference"]:
            delta = "reference"
        elif r["delta"] is None:
            delta = "—"
        elif r["delta_low"] is None:
            delta = f"{_fmt(r['delta'], True)} (n = 1)"
        else:
            delta = (f"{_fmt(r['delta'], True)} [{_fmt(r['delta_low'], True)}, "
                     f"{_fmt(r['delta_high'], True)}]")
        per_seed = ", ".join(f"{v:.2f}" for v in r["values"])
        lines.append(f"| {r['variant']} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | "
                     f"{per_seed} | {delta} | {r['best_mean']:.2f} | {r['img_per_s']:.0f} | "
                     f"{r['train_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v)
                    for k, v in r.items()})
    files.atomic_write_text(text.getvalue(), path)


def _recorded_head(cfg: Recipe) -> str | None:
    """The ``cls_head`` an existing run of ``cfg.output`` was made with (its config.yaml)."""
    return (recorded_recipe(cfg.output) or {}).get("cls_head")


def _one_architecture(configs: Iterable[Recipe]) -> None:
    """``cls_head: auto`` resolved once per model for the whole sweep: when some method of the
    sweep needs attention and the model has no cls token, every run of that model gets the
    head (CA-Swin / a CaiT head), so that ``none``/``cutmix``/``maskmix`` are compared with
    ``mixpro``/``transmix`` on the same architecture. Configs are changed in place. A sweep
    with runs made before this rule (config.yaml says ``auto``) keeps ``auto``, with a line."""
    groups: dict[str, list[Recipe]] = {}
    for cfg in configs:
        if cfg.cls_head == "auto":
            key = json.dumps([cfg.model, cfg.model_kwargs, cfg.img_size, cfg.in_channels,
                              cfg.patch_size], sort_keys=True, default=str)
            groups.setdefault(key, []).append(cfg)
    for cfgs in groups.values():
        needs = False
        for cfg in cfgs:
            try:
                needs |= needs_attention(cfg.method, cfg.mix_options())
            except (ValueError, TypeError):
                pass  # the run itself reports it, with its context
        if not needs:
            continue
        first = cfgs[0]
        try:
            model, _ = models.create_model(first.model, num_classes=2, img_size=first.img_size,
                                           in_chans=first.in_channels,
                                           patch_size=first.patch_size,
                                           model_kwargs=first.model_kwargs)
            head = models.resolve_cls_head(model, "auto", needs_attention=True)
        except models.ModelError:
            continue  # the first run reports it
        if head is None:
            continue
        older = [c.output for c in cfgs if _recorded_head(c) == "auto"]
        if older:  # runs of this sweep made before the rule: keep them resumable and say so
            print(f"compare: {older[0]} was made with cls_head auto per method; keeping that "
                  f"for this sweep (methods without attention run on plain {first.model})",
                  file=sys.stderr)
            continue
        for cfg in cfgs:
            cfg.cls_head = head["mode"]
        print(f"compare: cls_head auto -> {head['mode']} for every run of {first.model} "
              "(one architecture for all methods)", file=sys.stderr)


@dataclass
class Plan:
    """Every run of a sweep, validated before the first starts."""

    name: str  # the recipe's name
    out: Path  # the sweep's folder
    grid: dict[str, list[str]]
    variants: list[Variant]
    seeds: list[int]
    configs: dict[tuple[Variant, int], Recipe]  # (variant, seed) -> its run's recipe
    reference: str | None = None  # the Δ column's variant (None: the first)
    rerun: bool = False  # train again a finished run whose recipe differs from the plan


def plan(
    recipe: str | None,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    output: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    grid: Sequence[str] | Mapping[str, Sequence[str]] = (),
    reference: str | None = None,
    rerun: bool = False,
) -> Plan:
    """The sweep's runs and their recipes, for :func:`compare`; raises :class:`ConfigError`
    on any bad argument before anything runs. ``recipe``: name or YAML path (None: the
    data-limited preset); ``grid``: ``["key=v1,v2", ...]`` (the CLI's ``--grid``) or a parsed
    mapping; ``output``: default ``runs/compare-<recipe>``; ``reference``: the variant the Δ
    column is paired against (default the first); ``rerun``: train again the runs whose
    folder holds another recipe's run (default: refuse them). Every distinct run is also
    checked as :func:`~.run.prepare` would before any data is read (model, mixer, head,
    patch and mask geometry, helper models), so a bad variant fails before the first run
    trains; a finished run is not checked again."""
    overrides = dict(overrides or {})
    try:
        grid_map = dict(grid) if isinstance(grid, Mapping) else sweep.parse_grid(list(grid))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _check(methods, seeds, grid_map, overrides)
    todo = variants(methods, grid_map)
    labels = [v.label for v in todo]
    if reference is not None and reference not in labels:
        raise ConfigError(f"--reference {reference!r} is not a variant of this sweep; "
                          f"choose one of {', '.join(labels)}")
    configs = {}
    for v in todo:
        for s in seeds:
            configs[v, s] = load_recipe(recipe, {**used_by(v.method, overrides),
                                                 **v.overrides, "method": v.method,
                                                 "seed": s}, check_ignored=False)
    name = next(iter(configs.values())).name
    out = Path(output) if output else Path("runs") / f"compare-{name}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; choose a folder")
    for (v, s), cfg in configs.items():
        cfg.output = str(out / f"{v.label}-seed{s}")
    _one_architecture(configs.values())
    checked: set[str] = set()
    for cfg in configs.values():
        try:  # a finished run needs no check (nor its helper models' files)
            if status(cfg, rerun=rerun) == "finished":
                continue
        except (StaleRun, files.FolderLocked):
            pass  # compare() names every stale or busy folder
        key = json.dumps({k: v for k, v in cfg.to_dict().items()
                          if k not in ("seed", *NOT_THE_RUN)}, sort_keys=True, default=str)
        if key not in checked:
            checked.add(key)
            run.check(cfg)
    return Plan(name, out, {k: list(vs) for k, vs in grid_map.items()}, todo, list(seeds),
                configs, reference, rerun)


def compare(p: Plan) -> list[dict[str, Any]]:
    """Run (or continue) the sweep ``p`` (:func:`plan`) and write ``results.md``,
    ``results.csv``, ``compare.png`` into its folder. Returns the table rows."""
    name, out, grid_map, todo, configs = p.name, p.out, p.grid, p.variants, p.configs
    states, stale = {}, []
    for key, cfg in configs.items():  # every folder checked before the first run
        try:
            states[key] = status(cfg, rerun=p.rerun)
        except StaleRun as e:
            stale.append(e)
    if stale:
        raise StaleRun(stale[0].path, stale[0].differences, others=len(stale) - 1)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output-dir {out}: cannot create it ({e.strerror or e})") from None
    t0 = time.perf_counter()
    results: dict[Variant, dict[int, dict]] = {v: {} for v in todo}
    said = {"finished": "already finished, reused", "resume": "resuming",
            "restart": "restarting (killed before its first checkpoint)",
            "rerun": "training again (--rerun: another recipe's run is replaced)",
            "fresh": "starting"}
    for (v, s), cfg in configs.items():
        state = states[v, s]
        if state != "finished":  # a run that another process finished or took meanwhile
            state = status(cfg, rerun=p.rerun)
        print(f"compare: {v.label} seed {s} {said[state]}", file=sys.stderr)
        results[v][s] = run_one(cfg, state)
    rows = summarize(results, p.reference)
    sweep_text = "; grid " + " × ".join(f"{k} ∈ {{{', '.join(vs)}}}" for k, vs in
                                        grid_map.items()) if grid_map else ""
    title = (f"mixpro compare: recipe {name}, seeds {', '.join(map(str, p.seeds))}{sweep_text} "
             f"(final-epoch top-1 on the test set)")
    files.atomic_write_text(markdown(rows, title), out / "results.md")
    write_csv(rows, out / "results.csv")
    from mixpro.plots.compare import compare_bars

    compare_bars([{**r, "method": r["variant"]} for r in rows], out / "compare.png",
                 title=f"{name}: top-1 mean ± std")
    print(markdown(rows, title))
    print(f"sweep time this invocation: {time.perf_counter() - t0:.0f} s; results in {out}")
    return rows
