"""One resolver for every block of ``params.yaml`` (data, train_strong, train_weak, train_ncnet,
evaluate).

Conventions (the same for every block):

1. **Defaults** live in one module per block (:data:`BLOCK_MODULES` says which); the values the
   top-level blocks of ``params.yaml`` state must equal them (``tests/test_params_defaults.py``):
   params.yaml shows the defaults and DVC tracks them, it does not redefine them. What the
   pipeline chooses differently is a **profile** (``profiles.<name>.<block>``, ``default``
   included).
2. **Deep merge**, later wins: defaults <- top-level block <- ``profiles.<profile>.<block>``
   (blocks with profiles only; ``profile`` = the argument, else the top-level ``profile:`` key,
   else ``default``) <- extra levels (a ``train_weak`` variant, ``--set`` options). Mappings are
   merged key by key, so a profile that overrides one nested key keeps the others; lists and
   scalars are replaced whole.
3. **Unknown keys are errors**, except inside the block's free-form entries (model lists,
   variants, image-list specs...). An unknown profile is an error.
4. **Types and ranges** (:func:`check_values`): a key whose default is an integer must be a
   non-negative integer (counts, limits, seeds, workers), a float a number, a bool a bool, a
   string a string, a list a list; no NaN or infinity anywhere; then the block's own rules
   (positive batch size and learning rates, known choices).

5. **Numbers are read as YAML 1.2 reads them** (:func:`load_yaml`): ``5e-08``, ``1E3`` and
   ``1.0e8`` are floats, as DVC (ruamel.yaml, YAML 1.2) means them when it writes params.yaml
   for ``dvc exp run -S``; PyYAML alone follows YAML 1.1 and would read them as strings. A
   value quoted as a string (``lr: "5e-08"``) stays a string and is refused where a number is
   expected, with a message saying to write it unquoted.

6. **Typed blocks.** Each block is a frozen dataclass (:class:`Block` subclasses, one per block,
   in the module :data:`BLOCK_MODULES` names): its field defaults *are* the defaults (the
   ``DEFAULTS`` dicts are derived from them with :func:`as_dict`), nested mappings are nested
   dataclasses, lists are tuples. A block is merged and checked as a dict (rules 2-5, so every
   error keeps its one-line message), then turned into its dataclass once, at the command's entry
   point (:func:`typed`), and passed down as such. Free-form entries (model lists, variants,
   image-list specs) stay plain mappings. :func:`as_dict` gives back exactly the merged dict
   (same keys, order and values), so fingerprints and the parameters written into metrics and
   checkpoints are those of the dict. The resolution facts that are not parameters (the profile
   used, the ``train_weak`` variant) are fields marked :data:`RESOLVED`, never part of
   :func:`as_dict`.

Every error is one line naming the file, the key and what to do (:class:`weakalign.cli.UserError`).
"""

from __future__ import annotations

import copy
import math
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


_FLOAT_1_2 = r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"""


def _loader():
    """A ``yaml.SafeLoader`` that also resolves YAML 1.2 exponent floats (module docstring, 5.)."""
    import re

    import yaml

    class ParamsLoader(yaml.SafeLoader):
        pass

    ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_1_2), list("-+0123456789."))
    return ParamsLoader


def load_yaml(stream):
    """``yaml.safe_load`` with YAML 1.2 floats (``5e-08`` is a float, not the string '5e-08')."""
    import yaml

    return yaml.load(stream, Loader=_loader())


def user_error(msg: str) -> Exception:
    from weakalign.cli import UserError

    return UserError(msg)


@dataclass(frozen=True)
class BlockSchema:
    """Where a block's defaults live and how it is checked."""

    defaults: Callable[[], dict]  # returns the defaults dict (imported lazily)
    free_form: frozenset = frozenset()  # key paths (tuples) whose contents are not checked against defaults
    profiled: bool = True  # profiles.<name>.<block> applies
    validate: Callable[[str, dict], None] | None = None  # block rules after the generic checks
    cls: type | None = None  # the block's typed form (a Block dataclass; module docstring, 6.)


#: The module holding each block's defaults; it registers the block's :class:`BlockSchema`
#: with :func:`register` when imported (so this module imports none of them: a command that
#: resolves a block has imported its defaults module itself).
BLOCK_MODULES = {
    "data": "weakalign.data.params",
    "train_strong": "weakalign.training.params",
    "train_weak": "weakalign.training.params",
    "train_ncnet": "weakalign.ncnet.params",
    "evaluate": "weakalign.evaluation.commands",
}
#: Blocks a profile may override (``profiles.<name>.<block>``); ``data`` has no profiles (its
#: stages track ``data.*`` only).
PROFILED_BLOCKS = ("train_strong", "train_weak", "train_ncnet", "evaluate")
_SCHEMAS: dict = {}


def register(block: str, schema: BlockSchema) -> None:
    if block not in BLOCK_MODULES:
        raise ValueError(f"unknown params block {block!r}; add it to weakalign.config.BLOCK_MODULES")
    if schema.profiled != (block in PROFILED_BLOCKS):
        raise ValueError(f"params block {block!r}: profiled must be {block in PROFILED_BLOCKS}")
    _SCHEMAS[block] = schema


def schema(block: str) -> BlockSchema:
    if block not in _SCHEMAS:
        import importlib

        if block not in BLOCK_MODULES:
            raise user_error(f"unknown params block {block!r} (known: {', '.join(BLOCK_MODULES)})")
        importlib.import_module(BLOCK_MODULES[block])
    return _SCHEMAS[block]


def merge(base: dict, over: dict | None, where: str, free_form=frozenset(), path: tuple = ()) -> dict:
    """``over`` merged into a deep copy of ``base`` (mappings key by key, everything else
    replaced); a key unknown to ``base`` is an error outside the ``free_form`` paths."""
    out = copy.deepcopy(base)
    if over is None:
        return out
    if not isinstance(over, dict):
        raise user_error(f"{where}: {'.'.join(path) or 'the block'} must be a mapping, got {over!r}")
    for k, v in over.items():
        kp = path + (k,)
        if kp in free_form or path in free_form:
            out[k] = copy.deepcopy(v)
            continue
        if k not in base:
            raise user_error(f"{where}: unknown key {'.'.join(map(str, kp))!r} (known here: {', '.join(sorted(map(str, base)))}); "
                             "fix the spelling or remove it")
        if isinstance(base[k], dict) and base[k] and not isinstance(v, dict):
            raise user_error(f"{where}: {'.'.join(map(str, kp))} must be a mapping, got {v!r}")
        out[k] = merge(base[k], v, where, free_form, kp) if isinstance(base[k], dict) and base[k] else copy.deepcopy(v)
    return out


def check_values(block: str, cfg, defaults, free_form=frozenset(), path: tuple = ()) -> None:
    """Types and ranges of a resolved block against its defaults (module docstring, 4.)."""

    def name(kp):
        return ".".join((block, *map(str, kp)))

    def finite(v, kp):
        if isinstance(v, float) and not math.isfinite(v):
            raise user_error(f"{name(kp)} must be a finite number, got {v!r}")
        if isinstance(v, dict):
            for k, x in v.items():
                finite(x, kp + (k,))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                finite(x, kp[:-1] + (f"{kp[-1]}[{i}]",) if kp else (f"[{i}]",))

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not path:
        finite(cfg, ())
    if not isinstance(cfg, dict) or not isinstance(defaults, dict):
        return
    for k, v in cfg.items():
        if isinstance(k, str) and k.startswith("_"):
            continue
        kp = path + (k,)
        if kp in free_form or path in free_form or k not in defaults:
            continue
        d = defaults[k]
        if d is None:
            continue
        if isinstance(d, bool):
            if not isinstance(v, bool):
                raise user_error(f"{name(kp)} must be true or false, got {v!r}")
        elif isinstance(d, int):
            if not is_int(v) or v < 0:
                raise user_error(f"{name(kp)} must be a non-negative integer, got {v!r}")
        elif isinstance(d, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                quoted = " (a quoted string: write the number without quotes)" if _numeric_string(v) else ""
                raise user_error(f"{name(kp)} must be a number, got {v!r}{quoted}")
        elif isinstance(d, str):
            if not isinstance(v, str):
                raise user_error(f"{name(kp)} must be a string, got {v!r}")
        elif isinstance(d, list):
            if not isinstance(v, list):
                raise user_error(f"{name(kp)} must be a list, got {v!r}")
            if d and all(is_int(x) for x in d) and not all(is_int(x) and x > 0 for x in v):
                raise user_error(f"{name(kp)} must be a list of positive integers, got {v!r}")
            if k in ("image_size", "load_size") and len(v) != 2:
                raise user_error(f"{name(kp)} must be [h, w] (two positive integers), got {v!r}")
        elif isinstance(d, dict):
            if not isinstance(v, dict):
                raise user_error(f"{name(kp)} must be a mapping, got {v!r}")
            check_values(block, v, d, free_form, kp)


def _numeric_string(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def selected_profile(doc: dict, where: str, profile: str | None = None) -> str:
    """The profile name (argument, else ``profile:``, else ``default``); unknown ones are errors."""
    profile = profile or doc.get("profile") or "default"
    if not isinstance(profile, str):
        raise user_error(f"{where}: profile must be a profile name, got {profile!r}")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise user_error(f"{where}: profiles must map profile names to their overrides, got {type(profiles).__name__}")
    if profile != "default" and profile not in profiles:
        known = ", ".join(sorted({"default", *profiles}))
        raise user_error(f"{where}: unknown profile {profile!r} (defined: {known}); "
                         "use one of them or add it under profiles:")
    prof = profiles.get(profile) or {}
    if not isinstance(prof, dict):
        raise user_error(f"{where}: profiles.{profile} must be a mapping")
    return profile


def resolve_block(block: str, doc: dict, where: str = "params.yaml", profile: str | None = None,
                  extra: list[tuple[str, dict]] = (), validate: bool = True) -> tuple[dict, str]:
    """The effective ``block`` (module docstring) and the profile used. ``extra``: further
    ``(where, overrides)`` levels merged last (a variant, ``--set``)."""
    sch = schema(block)
    defaults = sch.defaults()
    top = doc.get(block)
    cfg = merge(defaults, top if top is not None else {}, f"{where}: {block}", sch.free_form)
    used = "default"
    if sch.profiled:
        used = selected_profile(doc, where, profile)
        over = ((doc.get("profiles") or {}).get(used) or {}).get(block)
        cfg = merge(cfg, over, f"{where}: profiles.{used}.{block}", sch.free_form)
    for lwhere, over in extra:
        cfg = merge(cfg, over, lwhere, sch.free_form)
    if validate:
        validate_block(block, cfg)
    return cfg, used


def validate_block(block: str, cfg: dict) -> None:
    """Generic type/range checks, then the block's own rules."""
    sch = schema(block)
    check_values(block, cfg, sch.defaults(), sch.free_form)
    if sch.validate:
        sch.validate(block, cfg)


def load_block(block: str, params_path: str | Path | None = None, profile: str | None = None):
    """``resolve_block`` of a params file (default: the project's ``params.yaml``; a missing
    default file means "all defaults"), as the block's dataclass."""
    from .training.params import read_params_file

    doc, path = read_params_file(params_path)
    cfg, used = resolve_block(block, doc, str(path), profile)
    return typed_block(block, cfg, profile=used)


def typed_block(block: str, cfg, **resolved):
    """A merged and checked ``block`` dict as its dataclass (:func:`typed`; already-typed values
    are returned as they are). ``resolved``: ``profile=``, ``variant=``, for blocks that have them."""
    sch = schema(block)
    if sch.cls is None or isinstance(cfg, sch.cls):
        return cfg
    names = {f.name for f in dataclasses.fields(sch.cls) if f.metadata.get("resolved")}
    return typed(sch.cls, cfg, block, **{k: v for k, v in resolved.items() if k in names})


def as_block(block: str, cfg, complete: bool = False, **resolved):
    """``cfg`` as ``block``'s dataclass, for library callers (tests, scripts): an instance is
    returned as it is; a dict is checked like a params file (:func:`validate_block`) and
    converted; ``complete=True`` first fills the keys it lacks with the defaults. ``_profile`` /
    ``_variant`` keys of the dict (or ``resolved`` keywords) give the resolved fields."""
    sch = schema(block)
    if sch.cls is not None and isinstance(cfg, sch.cls):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(f"{block}: expected {getattr(sch.cls, '__name__', 'a block')} or a dict, "
                        f"got {type(cfg).__name__}")
    d = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    if complete:
        d = merge(sch.defaults(), d, block, sch.free_form)
    else:
        missing = [k for k in sch.defaults() if k not in d]
        if missing:
            raise user_error(f"{block}: missing key(s) {', '.join(missing)}: pass the whole block, or "
                         "complete=True to fill the missing keys with the defaults")
    validate_block(block, d)
    resolved.update({str(k)[1:]: v for k, v in cfg.items() if str(k).startswith("_")})
    return typed_block(block, d, **resolved)


# --------------------------------------------------------------------------------------------
# Typed blocks (module docstring, 6.)

#: ``field(metadata=RESOLVED)``: a fact of the resolution (profile, variant), not a parameter.
RESOLVED = {"resolved": True}
#: ``field(metadata=OMIT_DEFAULT)``: left out of :func:`as_dict` while it has its default (an
#: optional key, e.g. a schedule phase's ``restart_from_best``, absent from most params files).
OMIT_DEFAULT = {"omit_default": True}


@dataclass(frozen=True)
class Block:
    """Base of the typed params blocks and of their nested sections."""

    def to_dict(self) -> dict:
        return as_dict(self)


def _hints(cls) -> dict:
    hints = cls.__dict__.get("_weakalign_hints")
    if hints is None:
        hints = typing.get_type_hints(cls)
        type.__setattr__(cls, "_weakalign_hints", hints)
    return hints


def _convert(hint, value, where: str):
    """``value`` (from a merged params dict) as ``hint`` says: nested dataclasses built, lists of
    a tuple type turned into tuples (their items converted too); anything else kept as it is."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise user_error(f"{where} must be a mapping, got {value!r}")
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None:
            return tuple(value)
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def _build(cls, d: dict, where: str, **resolved):
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("resolved"):
            if f.name in resolved:
                kwargs[f.name] = resolved[f.name]
            continue
        if f.name in d:
            kwargs[f.name] = _convert(hints[f.name], d[f.name], f"{where}.{f.name}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls) if not f.metadata.get("resolved")}
    if unknown:
        raise user_error(f"{where}: unknown key(s) {', '.join(sorted(map(repr, unknown)))}")
    return cls(**kwargs)


def typed(cls, cfg: dict, where: str | None = None, **resolved):
    """The merged and checked dict ``cfg`` as the dataclass ``cls`` (nested sections included);
    ``resolved``: the :data:`RESOLVED` fields (``profile=``, ``variant=``)."""
    return _build(cls, cfg, where or cls.__name__, **resolved)


def _plain(value):
    if isinstance(value, Block):
        return as_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def as_dict(obj) -> dict:
    """The params dict of a typed block: field order, lists for tuples, :data:`RESOLVED` fields
    left out, :data:`OMIT_DEFAULT` fields left out while at their default."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("resolved"):
            continue
        v = getattr(obj, f.name)
        if f.metadata.get("omit_default") and v == f.default:
            continue
        out[f.name] = _plain(v)
    return out


def defaults_of(cls) -> dict:
    """The defaults dict of a block class (a fresh copy)."""
    return as_dict(cls())
