"""Command line: train a config, or check its first batch.

    python -m jdet.train --config configs/tiny.py --workdir runs/tiny [--config.train.total_steps=5]
    python -m jdet.train --config configs/refdet_n.py:stage=2 --workdir runs/s2 --check

The config is locked: a mistyped `--config.` field fails with one line naming the flag and the
field it probably meant (exit 2) before anything is compiled; so does an invalid value
(`jdet.config.validate`). `--check` runs only the first batch: the expected-loss-at-init check,
the per-term gradient table and workdir/grad_report.json; it exits 1 if any term or gradient
is not finite. Training exits 1 when it was stopped by non-finite steps.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags, logging
from ml_collections import config_flags

from jdet import _xla_defaults, distributed
from jdet.cli import flag_error
from jdet.config import distributed_config, validate
from jdet.training.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "recipe file, e.g. configs/tiny.py:arg", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics, plots)")
_CHECK = flags.DEFINE_bool("check", False, "first batch only: init-loss + per-term gradient check")
_HELP = "usage: python -m jdet.train --config RECIPE.py[:arg] --workdir DIR [--check] " \
    "[--config.SECTION.FIELD=VALUE ...]"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(_HELP + "\n\n" + flags.FLAGS.module_help(sys.modules[__name__]))
        return 0
    try:
        rest = flags.FLAGS(argv)
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments: {' '.join(rest[1:])}")
        for name in ("config", "workdir"):
            if flags.FLAGS[name].value is None:
                raise flags.Error(f"--{name} is required")
        config = _CONFIG.value
        validate(config)  # again: --config.a.b=v overrides come after the recipe's finalize()
    except Exception as err:  # noqa: BLE001 - absl and ml_collections raise many kinds
        print(f"error: {flag_error(err, argv)}\n{_HELP}", file=sys.stderr)
        return 2
    if not flags.FLAGS["verbosity"].present:  # orbax and others log every save at INFO
        logging.set_verbosity(logging.WARNING)
    _xla_defaults.apply()  # before anything starts a JAX backend
    distributed.initialize(distributed_config(config))
    result = train_and_evaluate(config, _WORKDIR.value, check_only=_CHECK.value)
    if _CHECK.value:
        print("check passed" if result.ok else "check FAILED: non-finite term or gradient")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
