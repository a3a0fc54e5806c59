"""Coding-agent session logs (opencode, Claude Code) read, classified by language, and turned into training records.

Plain Python: imports no Dagster. The Dagster asset calls `collect(sources, base_dir, language)`.
"""

from __future__ import annotations

from .classify import GENERAL, Classification, classifications, classify, classify_all, languages_seen
from .conversations import collect, conversations
from .load import load_sources
from .model import LoadResult, Message, Session, SessionSourceError

__all__ = [
    "GENERAL", "Classification", "LoadResult", "Message", "Session", "SessionSourceError",
    "classifications", "classify", "classify_all", "collect", "conversations", "languages_seen", "load_sources",
]
