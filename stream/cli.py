"""``musicrec``: the one command-line entry point."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stream.cli_ops import doctor, songs_app, users_app, versions_app
from stream.settings import Settings, declared, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Streaming music recommender: Kafka/Faust in, online ALS + FAISS, Redis out.")
import_app = typer.Typer(no_args_is_help=True, help="Import public data sets or event files.")
app.add_typer(import_app, name="import")
ab_app = typer.Typer(no_args_is_help=True, help="A/B test a model version against the published one.")
app.add_typer(ab_app, name="ab")
app.add_typer(versions_app, name="versions")
app.add_typer(songs_app, name="songs")
app.add_typer(users_app, name="users")
app.command("doctor")(doctor)
console = Console()
err = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Overrides MUSICREC_DATA_DIR.")]


def _settings(flags: dict[str, Any] | None = None) -> Settings:
    """Settings with the command's flags applied, keyed "section.field" (unset flags are None)."""
    return load_settings({k: (str(v) if isinstance(v, Path) else v) for k, v in (flags or {}).items()})


def _user_errors() -> tuple[type[Exception], ...]:
    """Every error the project raises on purpose (a message for the user, not a bug); each module
    that raises one is loaded by the time it is raised."""
    from index_manager.artifacts import ArtifactError
    from index_manager.holder import NoModel
    from index_manager.song_index import IndexFailure
    from offline.errors import EngineUnavailable
    from offline.eventfile import BadInputFile
    from stream.errors import ConfigError, ServiceUnavailable
    from stream.events import InvalidEvent

    return (ConfigError, ServiceUnavailable, InvalidEvent, BadInputFile, ArtifactError, IndexFailure, NoModel,
            EngineUnavailable)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err)


@app.command()
def up(kafka_port: Annotated[int, typer.Option(help="Fixed broker port (default: a free one).")] = 0,
       redis_port: Annotated[int, typer.Option(help="Fixed Redis port (default: a free one).")] = 0) -> None:
    """Start an embedded Kafka broker (Tansu) and redis-server on loopback; Ctrl-C stops both."""
    from stream.services import EmbeddedServices, wait_for_stop

    with EmbeddedServices(kafka_port, redis_port) as services:
        console.print("[green]Embedded services are up (loopback only, in-memory).[/] Use them with:")
        console.print(f"export KAFKA_BOOTSTRAP={services.kafka_bootstrap}")
        console.print(f"export REDIS_URL={services.redis_url}")
        wait_for_stop()
        console.print("stopping embedded services")


@app.command()
def worker(data_dir: DataDir = None,
           loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug")] = "warn") -> None:
    """Consume events in micro-batches, learn online, write every touched user's list to Redis."""
    from stream.worker.start import LOG_LEVELS, start_worker

    if loglevel not in LOG_LEVELS:
        raise typer.BadParameter(f"--loglevel must be one of {', '.join(LOG_LEVELS)}")
    start_worker(_settings({"stream.data_dir": data_dir}), loglevel=loglevel)


@import_app.command("lastfm-hetrec")
def import_lastfm_cmd(directory: Annotated[Path, typer.Argument(help="hetrec2011-lastfm-2k directory")],
                      out: Annotated[Path, typer.Option(help="Output directory")] = Path("musicrec-data/imports"),
                      ) -> None:
    """Last.fm HetRec 2011: dated tag events -> generic event file; artists -> catalog."""
    from offline.importers import import_lastfm

    r = import_lastfm(directory, out)
    console.print(f"{r.n_events} events of {r.n_users} users on {r.n_songs} artists -> {r.events_path}\n"
                  f"catalog -> {r.catalog_path}\nundated play counts -> {r.extra['plays']}\n"
                  f"skipped {r.skipped} tag rows dated before 2005 (known bogus dates)")


@import_app.command("movielens")
def import_movielens_cmd(directory: Annotated[Path, typer.Argument(help="ml-latest-small directory")],
                         out: Annotated[Path, typer.Option(help="Output directory")] = Path("musicrec-data/imports"),
                         ) -> None:
    """MovieLens ratings: rating <= 2 stars -> skip, above -> play, at the rating's second; films -> catalog."""
    from offline.importers import import_movielens

    r = import_movielens(directory, out)
    console.print(f"{r.n_events} events of {r.n_users} users on {r.n_songs} films -> {r.events_path}\n"
                  f"catalog -> {r.catalog_path}")


@import_app.command("spotify")
def import_spotify_cmd(csv: Annotated[Path, typer.Argument(help="spotify_songs.csv")],
                       out: Annotated[Path, typer.Option(help="Output directory")] = Path("musicrec-data/imports"),
                       ) -> None:
    """TidyTuesday Spotify songs: catalog with audio features, playlists, playlist events."""
    from offline.importers import import_spotify

    r = import_spotify(csv, out)
    console.print(f"{r.n_songs} songs -> {r.catalog_path}\nplaylists -> {r.extra['playlists']}\n"
                  f"{r.n_events} playlist-as-user events of {r.n_users} playlists -> {r.events_path}")


@import_app.command("events")
def import_events_cmd(file: Annotated[Path, typer.Argument(help="generic event file (.csv/.parquet)")],
                      data_dir: DataDir = None,
                      skip_bad: Annotated[bool, typer.Option(help="Skip and count bad rows")] = False) -> None:
    """Append a generic event file to the event log (bulk history, no Kafka)."""
    from offline.eventlog import EventLog

    settings = _settings({"stream.data_dir": data_dir})
    added, skipped = EventLog(settings.stream.log_dir).import_file(file, skip_bad=skip_bad)
    console.print(f"appended {added} events to {settings.stream.log_dir}" +
                  (f" (skipped {skipped} bad rows)" if skipped else ""))


@import_app.command("catalog")
def import_catalog_cmd(file: Annotated[Path, typer.Argument(help="catalog file (.parquet, feat_* columns)")],
                       data_dir: DataDir = None) -> None:
    """Append a catalog file to the catalog store (the retrain job fits the new-song projection on it)."""
    from offline.catalog import CatalogStore

    settings = _settings({"stream.data_dir": data_dir})
    n = CatalogStore(settings.stream.catalog_dir).import_file(file)
    console.print(f"appended {n} songs to {settings.stream.catalog_dir}")


@app.command()
def replay(file: Annotated[Path, typer.Argument(help="generic event file (.csv/.parquet)")],
           rate: Annotated[float, typer.Option(help="events per second; 0 = as fast as possible")] = 1000.0,
           start_fraction: Annotated[float, typer.Option(help="skip this leading fraction of the events")] = 0.0,
           limit: Annotated[int | None, typer.Option(help="send at most this many events")] = None,
           skip_bad: Annotated[bool, typer.Option(help="Skip and count bad rows")] = False) -> None:
    """Produce an event file into the events topic, in time order, at a fixed rate."""
    from offline.eventfile import read_event_file
    from stream.kafka_io import EventProducer, ensure_topics
    from stream.replay import replay as do_replay

    if not 0.0 <= start_fraction < 1.0:
        raise typer.BadParameter("--start-fraction must be in [0, 1)")
    settings = _settings()
    events, skipped = read_event_file(file, skip_bad=skip_bad)
    events = events.sorted_by_time()
    events = events.take(slice(int(start_fraction * len(events)), None))
    if limit is not None:
        events = events.take(slice(0, limit))
    ensure_topics(settings.stream)
    with EventProducer(settings.stream) as producer, progress_bar() as bar:
        task = bar.add_task("replay", total=len(events), rate=f"{rate:.0f}/s" if rate else "max")
        result = do_replay(producer, events, rate, on_progress=lambda n: bar.advance(task, n))
    console.print(f"sent {result.sent} events in {result.seconds:.1f}s ({result.rate:.0f}/s) to "
                  f"{settings.stream.events_topic}" + (f"; skipped {skipped} bad rows" if skipped else ""))


@app.command()
def retrain(model: Annotated[str | None, typer.Option(help="als, ncf or sasrec (default MUSICREC_MODEL)")] = None,
            backend: Annotated[str | None, typer.Option(help="NeuMF / SASRec training backend: torch or mlx")] = None,
            data_dir: DataDir = None,
            until: Annotated[float | None, typer.Option(help="train on events with ts <= UNTIL")] = None,
            every: Annotated[str | None, typer.Option(help="run periodically, e.g. 30m, 1h (scheduler mode)")] = None,
            publish: Annotated[bool, typer.Option(help="point workers at the version if the gate passes")] = True,
            engine: Annotated[str | None, typer.Option(
                help="where ALS trains: local (in process) or spark (MUSICREC_TRAIN_ENGINE)")] = None,
            spark_master: Annotated[str | None, typer.Option(
                help="Spark master URL for --engine spark, e.g. spark://host:7077 (MUSICREC_SPARK_MASTER)")] = None,
            workers: Annotated[int | None, typer.Option(
                help="processes training ncf/sasrec with torch DDP (MUSICREC_TRAIN_WORKERS)")] = None,
            ) -> None:
    """Train a full model from the event log, gate it against the served version, publish if not worse."""
    from offline.config import parse_period
    from stream.scheduler import run_retrain, run_scheduled

    settings = _settings({"stream.data_dir": data_dir, "train.model": model, "train.backend": backend,
                          "train.every": every, "train.engine": engine, "train.spark_master": spark_master,
                          "train.workers": workers})
    if settings.train.every:
        run_scheduled(settings, parse_period(settings.train.every), until=until, publish=publish, console=console)
    else:
        outcome = run_retrain(settings, until=until, publish=publish, console=console)
        if not outcome.decision.publish:
            raise typer.Exit(3)


@app.command()
def recs(user_id: Annotated[str, typer.Argument(help="user id")],
         k: Annotated[int, typer.Option("-k", help="how many songs")] = 10,
         as_json: Annotated[bool, typer.Option("--json", help="print the raw value as JSON")] = False) -> None:
    """Read a user's current recommendations from Redis (popularity for unknown users)."""
    from stream.redis_store import RecsClient

    cfg = _settings().stream
    result = RecsClient(cfg.redis_url, cfg.redis_namespace, cluster=cfg.redis_cluster).get(user_id, k)
    if result is None:
        err.print("no recommendations published yet (is a worker running?)")
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    table = Table(title=f"user {user_id}" + (" (unknown: popularity)" if result.fallback else ""))
    for col in ("#", "song", "score", "because"):
        table.add_column(col)
    for i, item in enumerate(result.items, 1):
        table.add_row(str(i), item["song_id"], f"{item['score']:.3f}" if item["score"] is not None else "",
                      item.get("because") or "")
    console.print(table)
    console.print(f"model {result.model_version}, updated {time.time() - result.updated_at:.1f}s ago")


@app.command()
def status(check: Annotated[bool, typer.Option(help="health check: exit 1 unless this host's worker "
                                                     "published stats in the last 30 s")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="print the version and workers as JSON")] = False,
           ) -> None:
    """Workers' counters and the published model version."""
    from stream.redis_store import RedisKeys, connect_to, version_registry
    from stream.worker.stats import read_stats, status_json

    cfg = _settings().stream
    client, keys = connect_to(cfg), RedisKeys(cfg.redis_namespace)
    workers = read_stats(client, keys)
    if check:
        from stream.worker.stats import worker_name

        name = worker_name(cfg)
        mine = [w for w in workers if (w.get("worker_id") == name or w["worker"].startswith(name + "-"))
                and time.time() - w["updated_at"] < 30]
        raise typer.Exit(0 if mine else 1)
    published = version_registry(client, keys, cfg.artifacts_dir).published()
    if as_json:
        print(json.dumps(status_json(published, workers, time.time())))
        return
    console.print(f"published model: {published or 'none'}")
    table = Table(title="workers")
    for col in ("worker", "version", "partitions", "events", "refused (DLQ)", "void", "users", "RSS MiB",
                "lists backfilled (pending)", "last batch ms", "catalog lag ms", "age s"):
        table.add_column(col)
    for s in workers:
        table.add_row(s["worker"], str(s["version"]), ",".join(map(str, s.get("partitions", []))), str(s["events"]),
                      str(s["refused"]), str(s.get("events_void", 0)), str(s["users"]), f"{s.get('rss_mb', 0.0):.0f}",
                      f"{s.get('lists_backfilled', 0)} ({s.get('backfill_pending', 0)})",
                      f"{s['last_batch_ms']:.1f}", f"{s.get('catalog_lag_ms', 0.0):.0f}",
                      f"{time.time() - s['updated_at']:.0f}")
    console.print(table)


@ab_app.command("start")
def ab_start(version: Annotated[str, typer.Argument(help="model version for the treatment arm")],
             share: Annotated[float, typer.Option(help="share of users in the treatment arm")] = 0.5,
             horizon: Annotated[int, typer.Option(help="plays after a served list that count towards its hits")] = 10,
             ) -> None:
    """Serve VERSION to a stable share of users, the published version to the rest."""
    from stream.abtest import begin

    settings = _settings()
    test, started = begin(settings, version, share, horizon)
    if not started:
        err.print(f"an A/B test of {test.treatment} is running; `musicrec ab stop` it first")
        raise typer.Exit(1)
    console.print(f"A/B test started: {share:.0%} of users get {version} (split {test.salt}); "
                  f"workers pick it up within {settings.stream.model_poll:g}s")


@ab_app.command("status")
def ab_status(as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False) -> None:
    """The running test and each arm's hits, summed over the workers."""
    from stream.abtest import report as ab_report

    report = ab_report(_settings())
    if as_json:
        console.print_json(json.dumps(report))
        return
    if not report["running"]:
        console.print("no A/B test is running")
        return
    table = Table(title=f"A/B test: {report['share']:.0%} get {report['treatment']} "
                        f"(running {time.time() - report['started_at']:.0f}s)")
    for col in ("arm", "version", "lists served", "plays observed", "hits", f"hit rate (next {report['horizon']})"):
        table.add_column(col)
    for arm, version in (("control", ", ".join(report["control"]) or "-"), ("treatment", report["treatment"])):
        a = report["arms"][arm]
        table.add_row(arm, version, str(a["served"]), str(a["plays"]), str(a["hits"]), f"{a['hit_rate']:.4f}")
    console.print(table)
    if report["lift"] is not None:
        console.print(f"treatment / control hit rate: {report['lift']:.3f}")


@ab_app.command("stop")
def ab_stop(promote: Annotated[bool, typer.Option(help="publish the treatment version for everyone")] = False,
            ) -> None:
    """End the test; every user goes back to the published version (or the treatment's, with --promote)."""
    from stream.abtest import end

    test = end(_settings(), promote)
    if test is None:
        err.print("no A/B test is running")
        raise typer.Exit(1)
    if promote:
        console.print(f"A/B test stopped; {test.treatment} published for every user")
    else:
        console.print("A/B test stopped; every user gets the published version again")


@app.command()
def evaluate(file: Annotated[Path, typer.Argument(help="generic event file (.csv/.parquet)")],
             protocol: Annotated[str, typer.Option(help="loo or prequential")] = "prequential",
             models: Annotated[str | None, typer.Option(help="comma-separated model names")] = None,
             k: Annotated[int, typer.Option("--k", help="list length")] = 10,
             train_fraction: Annotated[float, typer.Option(help="prequential: leading part trained on")] = 0.5,
             json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON")] = None,
             plot: Annotated[Path | None, typer.Option(help="PNG of the metric over time")] = None,
             skip_bad: Annotated[bool, typer.Option(help="Skip and count bad rows")] = False,
             tune: Annotated[bool, typer.Option(help="prequential: choose hyper-parameters on the training part "
                                                      "of the timeline first")] = False) -> None:
    """Evaluate models on an event file: leave-last-out (99 sampled negatives + full catalog) or
    prequential (test-then-learn replay through the online code)."""
    from offline.evaluate import evaluate_file
    from offline.eventfile import BadInputFile
    from online_models.base import MAX_K

    if not 0.0 < train_fraction < 1.0:
        raise typer.BadParameter("--train-fraction must be in (0, 1)")
    if not 0 < k <= MAX_K:
        raise typer.BadParameter(f"--k must be in 1..{MAX_K}")
    if protocol not in ("loo", "prequential"):
        raise typer.BadParameter(f"--protocol must be loo or prequential, got {protocol!r}")
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        result = evaluate_file(file, protocol, names, k, train_fraction, console, plot=plot, skip_bad=skip_bad,
                           tune=tune, config=_settings().model)
    except _user_errors():
        raise
    except ValueError as exc:  # the data cannot support the protocol (too few users, songs, events)
        raise BadInputFile(f"{file}: {exc}") from exc
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        console.print(f"figures written to {json_out}")


@app.command()
def bench(name: Annotated[str, typer.Argument(help="benchmark name (see benchmarks/README.md)")],
          json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON")] = None,
          quick: Annotated[bool, typer.Option(help="smaller sizes, for a smoke run")] = False) -> None:
    """Run a benchmark: prints a table of figures, each next to a reference measured in the same run."""
    from benchmarks import run_benchmark

    try:
        run_benchmark(name, json_out, console, quick=quick)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def api(host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port")] = 8080) -> None:
    """Serve the read API (recs, similar songs, health, Prometheus metrics) and the live dashboard."""
    from stream.api.app import serve

    serve(_settings(), host=host, port=port)


@app.command("config")
def show_config(markdown: Annotated[bool, typer.Option(help="print the README's table")] = False) -> None:
    """Every setting with its environment variable, default, current value and meaning."""
    if markdown:
        print("| env var | default | meaning |\n|---|---|---|")
        for _section, _name, env, default, _typ, doc in declared():
            print(f"| `{env}` | `{default}` | {doc} |")
        return
    settings = _settings()
    table = Table(title="settings (flags > env > musicrec.toml > default)")
    for col in ("env var", "default", "current", "meaning"):
        table.add_column(col, overflow="fold")
    for section, name, env, default, _typ, doc in declared():
        current = getattr(getattr(settings, section), name)
        if ("PASSWORD" in env or env == "MUSICREC_API_KEY") and current:
            shown = "***"
        elif env == "REDIS_URL":
            from stream.redis_store import redacted

            shown = redacted(str(current))
        else:
            shown = str(current)
        table.add_row(env, str(default), shown, doc)
    console.print(table)


@app.command()
def demo(data: Annotated[Path, typer.Option(help="hetrec2011-lastfm-2k directory")] =
         Path("../shared/data/hetrec2011-lastfm-2k"),
         rate: Annotated[float, typer.Option(help="replay rate, events/s")] = 3000.0,
         train_fraction: Annotated[float, typer.Option(help="leading fraction of the timeline to train on")] = 0.8,
         users: Annotated[int, typer.Option(help="users to show before/after")] = 3) -> None:
    """End to end on real data: embedded services, import Last.fm, train on the first 80%, run a worker,
    replay the rest through Kafka, show recommendations changing and the event->Redis freshness."""
    from stream.demo import run_demo

    run_demo(data, rate=rate, train_fraction=train_fraction, show_users=users, console=console)


def limit_threads() -> object:
    """One BLAS and one FAISS thread per process. Per-batch linear algebra and searches are small;
    thread pools on 2 cores only spin against each other and the event loop (measured: 10-70x
    slower replays). The environment covers libraries loaded later (scipy's BLAS, torch); the
    returned limiter covers numpy's, already loaded. implicit sets its own training threads."""
    import os

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    return threadpool_limits(1, "blas")


def main() -> None:
    limits = limit_threads()
    try:
        app()
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        # soft_wrap keeps "file:line: reason" on one line; markup=False keeps brackets in messages literal
        err.print("error:", str(exc), style="red", soft_wrap=True, markup=False, highlight=False)
        sys.exit(2)
    finally:
        del limits


if __name__ == "__main__":
    main()
