"""Command line: train a config, or check its first batch.

    python -m jdet.train --config configs/tiny.py --workdir runs/tiny [--config.train.total_steps=5]
    python -m jdet.train --config configs/refdet_n.py:stage=2 --workdir runs/s2 --check

The config is locked: a mistyped `--config.` field fails with a suggestion before anything is
compiled. `--check` runs only the first batch: the expected-loss-at-init check, the per-term
gradient table and workdir/grad_report.json; it exits non-zero if any term or gradient is not
finite.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "recipe file, e.g. configs/tiny.py:arg", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, plots)")
_CHECK = flags.DEFINE_bool("check", False, "first batch only: init-loss + per-term gradient check")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax and others log every save at INFO
        logging.set_verbosity(logging.WARNING)
    from jdet.trainer import train_and_evaluate

    try:  # again: --config.a.b=v overrides are applied after the recipe's own finalize()
        from configs.common import validate
    except ImportError:  # a recipe outside this checkout: it validates itself
        validate = None
    if validate is not None:
        try:
            validate(_CONFIG.value)
        except ValueError as err:
            raise app.UsageError(f"invalid config: {err}") from None
    from jdet import distributed

    distributed.initialize(_CONFIG.value.get("distributed"))  # before anything starts JAX
    result = train_and_evaluate(_CONFIG.value, _WORKDIR.value, check_only=_CHECK.value)
    if _CHECK.value:
        print("check passed" if result["ok"] else "check FAILED: non-finite term or gradient")
        return 0 if result["ok"] else 1
    return 1 if result["stopped"] else 0


def _add_repo_root() -> None:
    """Recipes import `configs.common`: make the checkout that holds jdet/ and configs/
    importable wherever the command runs from."""
    root = pathlib.Path(__file__).resolve().parents[1]
    if (root / "configs" / "common.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


if __name__ == "__main__":
    _add_repo_root()
    app.run(main)
