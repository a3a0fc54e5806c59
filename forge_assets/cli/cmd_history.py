"""`forge history`: each language's deploys and rollbacks as a table, newest last, then its evaluations
(forge_assets.deploy.history and forge_assets.evaluation.history read them)."""

from __future__ import annotations


def history(languages: list[str] | None) -> int:
    """Print each language's deploys and rollbacks (from deployment/<language>/history.jsonl), newest last, then its
    evaluations: each eval_scores version's verdict and validation report."""
    from forge_assets.artifacts import HISTORY
    from forge_assets.cli.common import store as cli_store
    from forge_assets.config import load_config
    from forge_assets.deploy.history import decision_events, deployed, when
    from forge_assets.deploy.service import format_scores

    cfg = load_config()
    store = cli_store(cfg)
    langs = languages or sorted({p.parent.name for p in (store.root / "deployment").glob(f"*/{HISTORY}")} | set(store.languages("eval_scores")))
    if not langs:
        print(f"forge history: no deploys are recorded under {store.root / 'deployment'} yet. Run `forge run` to deploy "
              "(deploys made before Forge kept a history are not listed).")
        return 0
    for lang in langs:
        events = decision_events(store, lang)
        where = store.folder("deployment", lang) / HISTORY
        if not events:
            print(f"forge history: no deploys of `{lang}` are recorded ({where} has none). Run `forge run --language {lang}` "
                  "to deploy it (deploys made before Forge kept a history are not listed).")
        else:
            current = deployed(store, lang)
            serving = current[1].get("tag") if current else None
            rows = [(when(ev.get("at")), str(ev["event"]), str(ev.get("tag") or "?"), str(ev.get("gguf") or "?")[:16],
                     _detail(ev, format_scores)) for ev in events]
            head = ("date (UTC)", "event", "tag", "gguf", "key scores")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
            print(f"forge history: `{lang}` deploys, rollbacks and approvals, newest last ({where})")
            last_served = max((i for i, ev in enumerate(events, 1) if ev["event"] in ("deploy", "rollback", "approve")), default=-1)
            for i, r in enumerate([head, *rows]):
                mark = "  <- serving" if i == last_served and r[2] == serving else ""
                print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4] + mark)
        _print_evaluations(store, lang)
    return 0


def _detail(ev: dict, format_scores) -> str:
    """The last column: a deploy's key scores, who approved, who rejected and why, what a held candidate waits beside."""
    if ev["event"] == "reject":
        return f"by {ev.get('by', '?')}: {ev.get('reason', '')}"
    if ev["event"] == "approve":
        return f"by {ev.get('by', '?')} (waiting since {str(ev.get('waited_since') or '?')[:19].replace('T', ' ')})"
    if ev["event"] == "awaiting":
        return f"awaits approval; {ev.get('serving') or 'nothing'} keeps serving" + (f"; report {ev['report']}" if ev.get("report") else "")
    return format_scores(ev.get("scores")) or "-"


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
