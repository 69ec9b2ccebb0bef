"""``python -m bench [--quick] [--out docs/benchmarks.md] [--only B1,B3]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import suite
from .common import FULL, QUICK, TINY

SIZES = {s.name: s for s in (FULL, QUICK, TINY)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument(
        "--sizes", choices=sorted(SIZES), help="full (default), quick, or tiny (for tests)"
    )
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of {','.join(suite.KEYS)} (default: all but "
        f"{','.join(sorted(suite.OPT_IN))})",
    )
    parser.add_argument(
        "--soak-minutes", type=float, help="how long B14 soaks (default: 60 at full size)"
    )
    parser.add_argument(
        "--no-litellm",
        action="store_true",
        help="skip the LiteLLM arm of B1 (its import takes seconds; --quick skips it too)",
    )
    args = parser.parse_args(argv)
    only = [k.strip().upper() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in only if k not in suite.KEYS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sizes = SIZES[args.sizes] if args.sizes else (QUICK if args.quick else FULL)
    command = "python -m bench" + (" --quick" if args.quick else "")
    if args.sizes:
        command += f" --sizes {args.sizes}"
    if only:
        command += " --only " + ",".join(only)
    if args.soak_minutes is not None:
        command += f" --soak-minutes {args.soak_minutes:g}"
    litellm = not args.no_litellm and sizes.name == "full"
    keys = only or [k for k in suite.KEYS if k not in suite.OPT_IN]
    report = suite.run(sizes, keys, litellm=litellm, soak_minutes=args.soak_minutes)
    text = suite.markdown(report, command)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        sys.stderr.write(f"wrote {args.out}\n")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
