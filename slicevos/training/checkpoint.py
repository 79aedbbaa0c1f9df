"""Training-side checkpoint helpers: resume-config checks. Reading and writing checkpoint
files lives in ``slicevos.io.checkpoint`` (re-exported here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slicevos.config import config_to_dict, with_defaults
from slicevos.errors import InputError, warn_input
from slicevos.io.checkpoint import FORMAT, VERSION, load_checkpoint, make_payload, save_checkpoint
from slicevos.training.config import RUN_CONTROL_FIELDS

__all__ = ["FORMAT", "VERSION", "check_resume_config", "config_differences", "load_checkpoint",
           "make_payload", "save_checkpoint"]


def config_differences(old: Any, new: Any, ignore: frozenset[str] = frozenset(),
                       prefix: str = "") -> list[str]:
    """Dotted keys where two plain-data configs differ, as ``"key: old -> new"``.

    ``ignore`` holds dotted keys (e.g. ``"train.iterations"``) that may differ.
    """
    if prefix in ignore:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{key}" if prefix else str(key)
            out += config_differences(old.get(key, "<missing>"), new.get(key, "<missing>"),
                                      ignore, sub)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def check_resume_config(path: Path, payload: dict[str, Any], config: Any, train: Any,
                        train_path: str | None, allow_change: bool) -> None:
    """The checkpoint's config must equal the current one, run-control fields aside.

    ``train_path``: where ``train`` sits inside ``config`` (None: compared on its own).
    A difference raises ``InputError``, or only warns when ``allow_change``.
    """
    train_at = f"config.{train_path}" if train_path else "train"
    ignore = frozenset(f"{train_at}.{name}" for name in RUN_CONTROL_FIELDS)
    old = {"config": with_defaults(type(config), payload["config"])}  # fields added since
    new = {"config": config_to_dict(config)}
    if not train_path:
        old["train"] = with_defaults(type(train), payload.get("train"))
        new["train"] = config_to_dict(train)
    diffs = config_differences(old, new, ignore)
    if not diffs:
        return
    listed = "; ".join(diffs[:10]) + ("; ..." if len(diffs) > 10 else "")
    if not allow_change:
        raise InputError(path, f"the config differs from the checkpoint's ({listed})",
                         "resume with the original config, or pass --allow-config-change to "
                         "continue with the new one")
    warn_input(path, f"resuming with a changed config ({listed}); optimizer and schedule "
               "state continue from the checkpoint", "start a new run (another output "
               "folder) if the change needs a fresh schedule")
