"""The `forge` command: run the main job for every configured language; show, roll back, stop or list deployments.

One module per command (cmd_<command>.py: the prefix keeps a module from sharing its name with the function this
package re-exports, e.g. `cli.status`), common.py for what they share, and build_parser() here: every command and
option of `forge`, in one place. The domain logic they print lives in plain modules: forge_assets.deploy.history
(what was served, which GGUF a rollback serves), forge_assets.deploy.status (what `forge status` reports) and
forge_assets.evaluation.history (each evaluation's verdict).
"""

from __future__ import annotations

import argparse
import sys

from forge_assets.cli.cmd_approve import approve, reject
from forge_assets.cli.cmd_client_config import client_config
from forge_assets.cli.cmd_gc import gc
from forge_assets.cli.cmd_history import history
from forge_assets.cli.cmd_rollback import rollback
from forge_assets.cli.cmd_run import failure_summary, run
from forge_assets.cli.cmd_service import service
from forge_assets.cli.cmd_status import status
from forge_assets.cli.cmd_stop import stop
from forge_assets.cli.common import language as _language
from forge_assets.cli.common import split_fix

_split_fix = split_fix  # (the name tests and older callers import)

__all__ = ["approve", "build_parser", "client_config", "failure_summary", "gc", "history", "main", "reject", "rollback", "run", "service", "split_fix",
           "status", "stop"]


def build_parser() -> argparse.ArgumentParser:
    """The `forge` argument parser: every command and option."""
    parser = argparse.ArgumentParser(prog="forge", description="Forge: per-language fine-tuned code models as Dagster assets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize every asset for each language (the main job)")
    p_run.add_argument("--language", type=_language, action="append", help="only this language (repeatable)")
    p_status = sub.add_parser("status", help="show the latest artifact versions and deployments, and whether each endpoint answers")
    p_status.add_argument("--language", type=_language, action="append")
    p_stop = sub.add_parser("stop", help="stop the routers and llama.cpp servers Forge started (never another process)")
    p_stop.add_argument("--language", type=_language, action="append")
    p_hist = sub.add_parser("history", help="list a language's deploys and rollbacks (tag, GGUF, key scores), newest last")
    p_hist.add_argument("--language", type=_language, action="append", help="only this language (repeatable; default: all with a history)")
    p_rb = sub.add_parser("rollback", help="serve the previously deployed GGUF again (blue-green, smoke-tested) and keep it promoted")
    p_rb.add_argument("--language", type=_language, required=True)
    p_rb.add_argument("--to", metavar="VERSION", help="a gguf version, a unique prefix of one, or its tag (<prefix>-<language>:<version>)")
    p_ap = sub.add_parser("approve", help="serve the candidate that deploy.approval: manual holds back (blue-green, smoke-tested)")
    p_ap.add_argument("--language", type=_language, required=True)
    p_ap.add_argument("--version", metavar="VERSION", help="the candidate's gguf version, a unique prefix of one, or its tag "
                      "(default: the one awaiting approval)")
    p_rj = sub.add_parser("reject", help="record that the candidate awaiting approval will not be served, and why")
    p_rj.add_argument("--language", type=_language, required=True)
    p_rj.add_argument("--version", metavar="VERSION", help="as for approve")
    p_rj.add_argument("--reason", required=True, help="why (kept in `forge history`)")
    p_cc = sub.add_parser("client-config", help="print a ready-to-paste OpenCode, Continue or Tabby configuration for the deployed tags")
    p_cc.add_argument("client", choices=["opencode", "continue", "tabby"])
    p_cc.add_argument("--language", type=_language, help="the language whose tag is the default model (default: the first deployed)")
    p_cc.add_argument("--write", metavar="FILE", help="write it to FILE instead of printing (e.g. opencode.json)")
    p_gc = sub.add_parser("gc", help="remove old artifact versions that are neither promoted nor deployed")
    p_gc.add_argument("--keep", type=int, default=3, help="newest versions to keep per asset and language besides promoted ones (default 3)")
    p_gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p_svc = sub.add_parser("service", help="install, remove or show the per-user service (systemd / launchd) that keeps the endpoint "
                                           "served across reboots")
    p_svc.add_argument("action", choices=["install", "uninstall", "status"])
    p_svc.add_argument("--no-start", action="store_true", help="install: only write the unit file and print the commands that start it")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "gc":
        return gc(args.keep, args.dry_run)
    if args.command == "rollback":
        return rollback(args.language, args.to)
    if args.command == "approve":
        return approve(args.language, args.version)
    if args.command == "reject":
        return reject(args.language, args.reason, args.version)
    if args.command == "client-config":
        return client_config(args.client, args.language, args.write)
    if args.command == "service":
        return service(args.action, start=not args.no_start)
    return {"run": run, "status": status, "stop": stop, "history": history}[args.command](args.language)


def main(argv: list[str] | None = None) -> int:
    """`forge` (the console script): parse argv and run the command; a configuration or language-name error exits 2."""
    args = build_parser().parse_args(argv)
    from forge_assets.config import ConfigError
    from forge_assets.languages import LanguageNameError

    try:
        return _dispatch(args)
    except (ConfigError, LanguageNameError) as exc:
        print(f"forge: {exc}", file=sys.stderr)
        return 2
