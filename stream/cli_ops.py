"""Operator commands of ``musicrec``: ``doctor`` and ``versions list|prune`` (registered in ``stream.cli``)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from stream.settings import load_settings

versions_app = typer.Typer(no_args_is_help=True, help="Model versions on disk: list them, prune old ones.")
console = Console()


@versions_app.command("list")
def versions_list(as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False) -> None:
    """Every model version on disk, oldest first, with what it is to the system."""
    from stream.versions import VersionsView

    rows = VersionsView(load_settings()).rows()
    if as_json:
        console.print_json(json.dumps([r.to_json() for r in rows]))
        return
    table = Table(title=f"{len(rows)} model versions")
    for col in ("version", "kind", "created", "MB", "HR@10", "role"):
        table.add_column(col)
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at)) if r.created_at else ""
        table.add_row(r.version, r.kind or "?", created, f"{r.size_bytes / 1e6:.1f}",
                      "" if r.hr_at_10 is None else f"{r.hr_at_10:.4f}", ", ".join(r.roles))
    console.print(table)


@versions_app.command("prune")
def versions_prune(keep: Annotated[int, typer.Option(help="newest versions to keep (>= 1)")],
                   dry_run: Annotated[bool, typer.Option(help="only print what would be deleted")] = False) -> None:
    """Delete all but the KEEP newest versions; never the published, the previous, an A/B arm or one a
    worker serves."""
    from stream.versions import VersionsView

    if keep < 1:
        raise typer.BadParameter("--keep must be at least 1")
    doomed = VersionsView(load_settings()).prune(keep, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {len(doomed)} versions" + "".join(f"\n  {v}" for v in doomed))


def doctor() -> None:
    """Check a deployment: Kafka, topics, Redis, data directory, published version, live workers."""
    from stream.doctor import FAIL, diagnose

    checks = diagnose(load_settings())
    for c in checks:
        style = {"ok": "green", "warn": "yellow"}.get(c.status, "red")
        console.print(c.line(), style=style, soft_wrap=True, markup=False, highlight=False)
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)


songs_app = typer.Typer(no_args_is_help=True, help="Hide songs from every list (takedowns, expired licences).")
users_app = typer.Typer(no_args_is_help=True, help="Forget users (deletion requests).")
SongIds = Annotated[list[str], typer.Argument(help="song ids")]


def _set_hidden(song_ids: list[str], hidden: bool) -> None:
    from stream.removals import set_hidden

    settings = load_settings()
    set_hidden(settings.stream, song_ids, hidden)
    console.print(f"{'hidden' if hidden else 'shown again'}: {len(song_ids)} songs; running workers apply it "
                  f"within a second (recorded in {settings.stream.catalog_dir})")


@songs_app.command("hide")
def songs_hide(song_ids: SongIds) -> None:
    """Hide songs: gone from every stored list within seconds, from new lists and from searches,
    across restarts and retrains, until unhidden."""
    _set_hidden(song_ids, True)


@songs_app.command("unhide")
def songs_unhide(song_ids: SongIds) -> None:
    """Let hidden songs back into lists (as lists are next written)."""
    _set_hidden(song_ids, False)


@users_app.command("forget")
def users_forget(user_ids: Annotated[list[str], typer.Argument(help="user ids")]) -> None:
    """Erase users: their lists in Redis, their events in the log (segments rewritten), their online
    state in every worker within a second, and their rows in every later model version."""
    from stream.redis_store import connect
    from stream.removals import forget_users

    cfg = load_settings().stream
    done = forget_users(cfg, connect(cfg.redis_url), user_ids)
    console.print(f"forgot {len(done.user_ids)} users: {done.lists_deleted} lists deleted, {done.events_purged} "
                  f"events purged from {done.segments_rewritten} log segments; workers erase their online "
                  "state within a second")
