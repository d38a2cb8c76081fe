"""Command line: ``vidcurate`` / ``python -m pipeline``."""

from __future__ import annotations

import argparse
import json
import sys


def _print_summary(manifest: dict, out: str, say=print) -> None:
    c = manifest["counts"]
    say("\nvidcurate summary")
    say(f"  videos    in {c['videos_in']}, accepted {c['videos_ok']}, rejected {c['videos_rejected']}, "
        f"errors {c['videos_error']}")
    say(f"  clips     {c['clips']} found; kept after shots {c['clips_after_shots']}, after scores "
        f"{c['clips_after_scores']}, after CLIP filter {c['clips_after_clip_filter']}"
        + (f", after caption fit {c['clips_after_caption_fit']}"
           if c.get("clips_after_caption_fit", c["clips_after_clip_filter"]) != c["clips_after_clip_filter"] else ""))
    caps = ", ".join(f"{k} {v}" for k, v in c["captions"].items()) or "none"
    say(f"  captions  {caps}; chapters {c['chapters']}")
    say(f"  shards    {c['shards']} ({c['samples']} samples) in {len(manifest['partitions'])} partition(s)")
    if manifest.get("long_shards"):
        say(f"  long      {len(manifest['long_shards'])} shards ({sum(s['samples'] for s in manifest['long_shards'])}"
            " chapter samples)")
    if manifest.get("tiny_random_models"):
        say("  NOTE      tiny random-weight models were used: CLIP scores and captions are meaningless;"
            " set models.clip / models.vlm to real weights for real results")
    extra = ", long_shards/" if manifest.get("long_shards") else ""
    say(f"  outputs   {out}  (manifest.json, videos/ clips/ captions/ chapters/ Parquet, shards/{extra}, stats.json)")
    say(f"  report    {out.rstrip('/')}/report.html")


EXIT_EMPTY = 3  # the run finished and committed its outputs, but kept no clip
EXIT_LEASE_LOST = 4  # another run took the output's lease


def _funnel_findings(manifest: dict, out: str, say=print) -> int:
    """Loud lines about a lopsided or empty result (from the committed stats); the exit code."""
    import json as _json

    from pipeline.storage import open_store
    from pipeline.summary import empty_result, lopsided
    from pipeline.spec import Storage

    spec = manifest["spec"]
    try:
        stats = _json.loads(open_store(out, Storage(**spec.get("storage", {}))).read("stats.json"))
    except Exception:  # an output written before stats.json held the reasons: the counts alone
        stats = {"counts": manifest["counts"], "clip_reasons": {}, "video_reasons": {}}
    for line in lopsided(stats, spec):
        say(f"WARNING: {line}")
    empty = empty_result(stats, spec)
    if empty:
        print(f"error: {empty}", file=sys.stderr)
        return EXIT_EMPTY
    return 0


def cmd_run(args) -> int:
    from pipeline.console import Console, log_path
    from pipeline.output import output_dir
    from pipeline.plan import run_job
    from pipeline.preflight import with_absolute_paths
    from pipeline.spec import load_spec

    spec = with_absolute_paths(load_spec(args.job, args.set))
    out = str(output_dir(spec))
    console = Console(log_path(out), verbose=args.verbose)
    if args.quiet or not args.verbose:  # Ray Data's bars would go to the log file: vidcurate's lines instead
        spec = spec.model_copy(update={"ray": spec.ray.model_copy(update={"progress": False})})
    progress = None if args.quiet or spec.ray.progress else 10.0
    try:
        with console:
            manifest = run_job(spec, log=console.print, before_ray=console.divert, progress_s=progress)
            _print_summary(manifest, out, console.print)
    except Exception:
        if console.log_file.exists() and not args.verbose:
            print(f"vidcurate: Ray's and the libraries' output of this run: {console.log_file}", file=sys.stderr)
        raise
    return _funnel_findings(manifest, out, console.print)


def cmd_validate(args) -> int:
    """The checks a run makes before any work: the spec, its inputs, its models, its output."""
    from pipeline.output import output_dir
    from pipeline.preflight import check_inputs, check_models, output_problem
    from pipeline.spec import SpecError, load_spec, resolved_yaml
    from pipeline.storage import open_store

    spec = load_spec(args.job, args.set)
    check_inputs(spec)
    check_models(spec)
    problem = output_problem(spec)
    if problem:
        try:
            committed = open_store(output_dir(spec), spec.storage).exists("manifest.json")
        except Exception:
            committed = False
        if not committed:
            raise SpecError(f"output.uri: {problem}")
        print(f"note: output.uri: {problem}; a run can only find its committed output there")
    print(f"{args.job}: valid")
    if args.print:
        print(resolved_yaml(spec))
    return 0


def cmd_fetch_models(args) -> int:
    from stages import transnet

    folder = transnet.fetch(args.cache, log=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps({"model": args.name, "path": str(folder), "sha256": transnet.SHA256}))
    return 0


def cmd_shots(args) -> int:
    from pipeline.spec import apply_overrides, load_spec, parse_spec
    from stages.analyze import decode_pass, frame_time
    from stages.base import Rejected
    from stages.shots import shots_from_boundaries

    if args.job:
        spec = load_spec(args.job, args.set)
    else:
        spec = parse_spec(apply_overrides({"inputs": {"paths": [args.video]}, "output": {"uri": "unused"}}, args.set))
    try:
        meta, analysis = decode_pass(args.video, spec)
    except Rejected as rej:
        print(json.dumps({"uri": args.video, "status": "rejected", "reason": rej.reason, "message": rej.message}))
        return 2
    times, n, fps = analysis["times"], meta["num_frames"], meta["fps"] or 25.0
    spans, _ = shots_from_boundaries(analysis["boundaries"], n)
    entering = {}  # first frame after a boundary -> its type
    leaving = {}   # first frame of a boundary -> its type
    for b in analysis["boundaries"]:
        entering[b["start"] if b["type"] == "cut" else b["end"] + 1] = b["type"]
        leaving[b["start"]] = b["type"]

    def at(frame: int) -> float:
        return round(frame_time(times, frame, fps), 6)

    shots = [{"start_frame": a, "end_frame": b, "start_s": at(a), "end_s": at(b), "duration_s": round(at(b) - at(a), 6),
              "transition_in": entering.get(a), "transition_out": leaving.get(b)} for a, b in spans]
    print(json.dumps({"uri": args.video, "fps": meta["fps"], "num_frames": n, "detector": spec.shots.detector,
                      "boundaries": meta["boundaries"], "shots": shots}))
    return 0


def _probe_spec(args):
    from pipeline.spec import apply_overrides, load_spec, parse_spec

    if args.job:
        spec = load_spec(args.job, args.set)
    else:
        spec = parse_spec(apply_overrides({"inputs": {"paths": args.paths}, "output": {"uri": "unused"}}, args.set))
    if args.timeout:
        spec = spec.model_copy(update={"probe": spec.probe.model_copy(update={"timeout_s": args.timeout})})
    return spec


def _probe_metadata(uri: str, spec) -> dict:
    """Container and stream metadata of one input (stages.probe.probe_file, guarded), or why none."""
    from stages.guard import GuardFailure, run_guarded
    from stages.probe import probe_file

    try:
        return run_guarded(probe_file, (uri, spec.probe, spec.storage), timeout_s=spec.probe.timeout_s,
                           memory_mb=spec.probe.max_memory_mb)
    except GuardFailure as fail:
        failed = fail.reason == "exception"
        return {"status": "error" if failed else "rejected", "reason": "decode_error" if failed else fail.reason,
                "message": fail.message}


_VERDICT = ("status", "reason", "message")
# The guard stopped the decoder: reading the metadata would likely wait or fail the same way.
_GUARD_STOPS = ("timeout", "memory_limit", "decoder_crash")


def _decode_check(video: dict, spec, fingerprint: str) -> tuple[dict, dict]:
    """(status, reason and message, what the decode found) of one input: the pipeline's own
    decision (pipeline.units.analyze_input, the analyze stage's guarded decode). Frames, seconds
    and clips are null where the decode did not run to its end."""
    from pipeline.units import analyze_input

    from stages.decide import kept_ids

    row = analyze_input(video, spec, fingerprint)
    kept = len(kept_ids(row["clips"], spec)) if row.get("clips") else row.get("num_clips_kept")
    found = {"checked": True, "frames": row.get("num_frames"), "decoded_s": row.get("duration_s"),
             "clips": row.get("num_clips"), "clips_kept": kept}
    return {k: row.get(k) for k in _VERDICT}, found


def _probe_line(video: dict, spec, fingerprint: str | None) -> dict:
    """One output line of ``probe``: the status and reason the pipeline gives the input (from the
    metadata alone when ``fingerprint`` is None: --metadata-only), its declared metadata, and
    what the decode check found."""
    uri = video["uri"]
    if fingerprint is None:
        meta = _probe_metadata(uri, spec)
        verdict, decode = {k: meta.pop(k, None) for k in _VERDICT}, {"checked": False}
    else:
        verdict, decode = _decode_check(video, spec, fingerprint)
        meta = {} if verdict["reason"] in _GUARD_STOPS else _probe_metadata(uri, spec)
        for k in _VERDICT:
            meta.pop(k, None)
    return {"uri": uri, **verdict, **meta, "decode": decode}


def cmd_probe(args) -> int:
    """One JSON line per input (as pipeline.discover finds them under each PATH): what the
    pipeline decides for it, or with --metadata-only what its metadata alone says."""
    from pipeline.discover import discover
    from pipeline.spec import Inputs

    spec = _probe_spec(args)
    fingerprint = None if args.metadata_only else spec.fingerprints()["analyze"]
    worst = 0
    for path in args.paths:
        videos = discover(Inputs(paths=[path]), spec.storage)
        if not videos:
            print(f"probe: {path}: no input files there", file=sys.stderr)
            worst = 1
        for video in videos:
            line = _probe_line(video, spec, fingerprint)
            print(json.dumps(line), flush=True)
            worst = max(worst, 0 if line["status"] == "ok" else 1)
    return worst


def cmd_inspect(args) -> int:
    """Counts, schema versions, tables and a few samples of an output (local or s3://)."""
    import io
    import tarfile

    import pyarrow.parquet as pq

    from pipeline.spec import Storage, SpecError
    from pipeline.storage import open_store

    store = open_store(args.output, Storage(endpoint_url=args.endpoint_url))
    try:
        manifest = json.loads(store.read("manifest.json"))
    except Exception as err:
        raise SpecError(f"{args.output}: no committed output (manifest.json unreadable: {err}); "
                        "a run that is still going or was interrupted has no manifest yet") from None
    c = manifest["counts"]
    print(f"{store.uri()}  job {manifest['name']!r}, schema version {manifest['schema_version']}, "
          f"vidcurate {manifest['versions'].get('vidcurate', '?')}")
    if manifest.get("tiny_random_models"):
        print("  made with tiny random-weight models: captions and CLIP scores are meaningless")
    print(f"  videos  {c['videos_in']} in: {c['videos_ok']} ok, {c['videos_rejected']} rejected, "
          f"{c['videos_error']} errors")
    print(f"  clips   {c['clips']}: {c['clips_kept']} kept; captions "
          + ", ".join(f"{k} {v}" for k, v in c["captions"].items()) + f"; chapters {c['chapters']}")
    for name, t in manifest["tables"].items():
        versions = set()
        for part in t["parts"]:  # the footer of every part, not the data
            schema = pq.read_schema(io.BytesIO(store.read(part["path"])))
            versions.add((schema.metadata or {}).get(b"vidcurate.schema_version", b"?").decode())
        print(f"  table   {name:9s} {t['rows']:7d} rows  schema v{'/'.join(sorted(versions)) or '?'}  "
              f"{t['path']}/ ({len(t['parts'])} parts)")
    shards, long_shards = manifest["shards"], manifest["long_shards"]
    print(f"  shards  {len(shards)} ({sum(s['samples'] for s in shards)} samples, "
          f"{sum(s['bytes'] for s in shards) / 1e6:.1f} MB)"
          + (f"; long {len(long_shards)} ({sum(s['samples'] for s in long_shards)} samples)" if long_shards else ""))
    shown = 0
    for shard in shards:
        if shown >= args.samples:
            break
        with tarfile.open(fileobj=io.BytesIO(store.read(shard["path"]))) as tar:
            for member in tar.getmembers():
                if shown >= args.samples or not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                caption = (meta.get("caption") or {}).get("text") or ""
                chapter = (meta.get("chapter") or {}).get("title")
                print(f"  sample  {shard['shard']}:{member.name[:-5]}  {meta['duration_s']:.2f}s of "
                      f"{meta['uri'].rsplit('/', 1)[-1]} [{meta['start_s']:.2f}-{meta['end_s']:.2f}s]"
                      f"  windows {len(meta.get('dense_captions') or [])}"
                      + (f"  chapter {chapter!r}" if chapter else ""))
                print(f"          {caption[:160]!r}")
                shown += 1
    return 0


def cmd_report(args) -> int:
    from pipeline.report import rebuild
    from pipeline.spec import SpecError, Storage

    try:
        print(rebuild(args.output, Storage(endpoint_url=args.endpoint_url)))
    except Exception as err:
        raise SpecError(f"{args.output}: cannot rebuild the report of a committed output: {err}") from None
    return 0


def cmd_gc(args) -> int:
    from pipeline.output import collect_garbage
    from pipeline.spec import Storage
    from pipeline.storage import open_store

    collect_garbage(open_store(args.output, Storage(endpoint_url=args.endpoint_url)), dry_run=args.dry_run)
    return 0


def cmd_prepare_demo(args) -> int:
    from pipeline.demo import prepare_demo

    prepare_demo(args.root)
    return 0


def cmd_schema(args) -> int:
    from pipeline.spec import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vidcurate", description="Curate raw video into training data on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job spec")
    run.add_argument("job")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    run.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the libraries' output here instead of "
                     "in the output's _work/logs/run.log (with Ray Data's progress bars on a terminal)")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a job spec without running it")
    val.add_argument("job")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.add_argument("--print", action="store_true", help="print the resolved spec")
    val.set_defaults(func=cmd_validate)
    fetch = sub.add_parser("fetch-models", help="download and verify optional model weights (transnetv2)")
    fetch.add_argument("name", choices=["transnetv2"])
    fetch.add_argument("--cache", help="folder to unpack into (default: ~/.cache/vidcurate or $VIDCURATE_CACHE)")
    fetch.set_defaults(func=cmd_fetch_models)
    shots = sub.add_parser("shots", help="print the shots of one video as JSON")
    shots.add_argument("video")
    shots.add_argument("--job", help="take analysis and shot settings from this spec")
    shots.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    shots.set_defaults(func=cmd_shots)
    probe = sub.add_parser("probe", help="print the status and reason the pipeline gives each input (its guarded "
                           "decode check) with the input's metadata, one JSON line each")
    probe.add_argument("paths", nargs="+", metavar="PATH")
    probe.add_argument("--job", help="take probe, analysis and shot settings from this spec")
    probe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    probe.add_argument("--timeout", type=float, help="seconds per input (default: probe.timeout_s)")
    probe.add_argument("--metadata-only", action="store_true",
                       help="read metadata only, no decode check: faster, but truncated and corrupt streams pass")
    probe.set_defaults(func=cmd_probe)
    inspect = sub.add_parser("inspect", help="print counts, schema versions, tables and a few samples of an output")
    inspect.add_argument("output", help="output directory or s3://bucket/prefix")
    inspect.add_argument("--samples", type=int, default=3, help="samples to print")
    inspect.add_argument("--endpoint-url", help="S3-compatible endpoint (as storage.endpoint_url)")
    inspect.set_defaults(func=cmd_inspect)
    report = sub.add_parser("report", help="rebuild report.html of an output")
    report.add_argument("output", help="output directory or s3://bucket/prefix")
    report.add_argument("--endpoint-url", help="S3-compatible endpoint (as storage.endpoint_url)")
    report.set_defaults(func=cmd_report)
    gc = sub.add_parser("gc", help="delete committed work of superseded settings from a finished output")
    gc.add_argument("output", help="output directory or s3://bucket/prefix")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.add_argument("--endpoint-url", help="S3-compatible endpoint (as storage.endpoint_url)")
    gc.set_defaults(func=cmd_gc)
    demo = sub.add_parser("prepare-demo", help="make the demo inputs and tiny models (offline)")
    demo.add_argument("--root", default="data/demo")
    demo.set_defaults(func=cmd_prepare_demo)
    schema = sub.add_parser("schema", help="print the JSON Schema of job specs")
    schema.set_defaults(func=cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.lock import LeaseLost
    from pipeline.spec import SpecError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except LeaseLost as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LEASE_LOST
    except Exception as err:
        failure = s3_failure(err)
        if failure is None:
            raise
        print(f"error: the S3 store kept failing past the retry budget (storage.max_attempts): "
              f"{failure}; committed work is kept: rerun to resume", file=sys.stderr)
        return 1


def s3_failure(err: BaseException) -> str | None:
    """botocore's error that ended a run, as one line, or None when ``err`` is not one: raised
    in the driver, or in a Ray task or actor. A Ray task's error wraps the task's exception
    (``.cause``); through Ray Data that is a UserCodeException whose own cause did not cross
    the process boundary, so there only the error's text tells: its traceback's
    ``botocore.exceptions.<Name>: <message>`` line."""
    import re

    from botocore.exceptions import BotoCoreError, ClientError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        cause = getattr(err, "cause", None)  # a Ray task's error: what the task raised
        cause = cause if isinstance(cause, BaseException) else None
        if cause is None and isinstance(err, (BotoCoreError, ClientError)):
            return " ".join(str(err).split())
        if type(err).__module__.startswith("ray.") and not isinstance(cause, (BotoCoreError, ClientError)):
            lines = re.findall(r"^botocore\.exceptions\.\w+: (.+)$", str(err), re.MULTILINE)
            if lines:
                return " ".join(lines[-1].split())
        err = cause
    return None

if __name__ == "__main__":
    sys.exit(main())
