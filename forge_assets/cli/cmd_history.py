"""`forge history`: each language's deploys and rollbacks as a table, newest last, then its evaluations
(forge_assets.deploy.history and forge_assets.evaluation.history read them)."""

from __future__ import annotations


def history(languages: list[str] | None) -> int:
    """Print each language's deploys and rollbacks (from deployment/<language>/history.jsonl), newest last, then its
    evaluations: each eval_scores version's verdict and validation report."""
    from forge_assets.artifacts import HISTORY
    from forge_assets.cli.common import store as cli_store
    from forge_assets.config import load_config
    from forge_assets.deploy.history import deployed, served_events, when
    from forge_assets.deploy.service import format_scores

    cfg = load_config()
    store = cli_store(cfg)
    langs = languages or sorted({p.parent.name for p in (store.root / "deployment").glob(f"*/{HISTORY}")} | set(store.languages("eval_scores")))
    if not langs:
        print(f"forge history: no deploys are recorded under {store.root / 'deployment'} yet. Run `forge run` to deploy "
              "(deploys made before Forge kept a history are not listed).")
        return 0
    for lang in langs:
        events = served_events(store, lang)
        where = store.folder("deployment", lang) / HISTORY
        if not events:
            print(f"forge history: no deploys of `{lang}` are recorded ({where} has none). Run `forge run --language {lang}` "
                  "to deploy it (deploys made before Forge kept a history are not listed).")
        else:
            current = deployed(store, lang)
            serving = current[1].get("tag") if current else None
            rows = [(when(ev.get("at")), str(ev["event"]), str(ev.get("tag") or "?"), str(ev.get("gguf") or "?")[:16],
                     format_scores(ev.get("scores")) or "-") for ev in events]
            head = ("date (UTC)", "event", "tag", "gguf", "key scores")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
            print(f"forge history: `{lang}` deploys and rollbacks, newest last ({where})")
            for i, r in enumerate([head, *rows]):
                mark = "  <- serving" if i == len(rows) and r[2] == serving else ""
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] + mark)
        _print_evaluations(store, lang)
    return 0


def _print_evaluations(store, language: str) -> None:
    """Each evaluation of the language, newest last: when, the candidate and champion adapters, the verdict (the gates
    it failed) and its validation report."""
    from forge_assets.deploy.history import when
    from forge_assets.evaluation.history import evaluations

    evals = evaluations(store, language)
    if not evals:
        return
    print(f"forge history: `{language}` evaluations (candidate vs served adapter vs base), newest last")
    for e in evals:
        print(f"  {when(e.created_at)}  eval {e.version[:12]}  adapter {str(e.adapter)[:12]}  "
              f"champion {str(e.champion or 'none')[:12]}  {e.verdict}" + (f"\n      report: {e.report}" if e.report else ""))
