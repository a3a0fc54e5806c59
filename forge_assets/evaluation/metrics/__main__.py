"""`python -m forge_assets.evaluation.metrics --write-docs` regenerates docs/evaluation.md's tables from the registry;
`--check-docs` exits 1 when they drift; with no option, prints the tables."""

import argparse
import sys

from forge_assets.evaluation.metrics import COMMAND, DOCS, gates_table, metrics_table, render_docs, write_docs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m forge_assets.evaluation.metrics", description=__doc__)
    p.add_argument("--write-docs", action="store_true", help=f"rewrite the tables in {DOCS}")
    p.add_argument("--check-docs", action="store_true", help="exit 1 when the committed tables differ from the registry")
    args = p.parse_args(argv)
    if args.write_docs:
        print(f"{DOCS}: {'updated' if write_docs() else 'already up to date'}")
    elif args.check_docs:
        text = DOCS.read_text(encoding="utf-8")
        if render_docs(text, source=str(DOCS)) != text:
            print(f"{DOCS}: its tables differ from forge_assets/evaluation/metrics/. Fix: run `{COMMAND}`.", file=sys.stderr)
            return 1
    else:
        print(metrics_table() + "\n\n" + gates_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
