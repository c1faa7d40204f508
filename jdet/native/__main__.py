"""`python -m jdet.native`: build jdet's oneDNN convolution extension and print its status."""

import sys

from jdet.native import onednn


def main() -> int:
    try:
        path = onednn.build(verbose=True)
    except onednn.OneDnnUnavailable as e:
        print(f"jdet.native: not available: {e}", file=sys.stderr)
        return 1
    ok, line = onednn.status()
    print(line if ok else f"jdet.native: not available: {line}")
    print(f"library: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
