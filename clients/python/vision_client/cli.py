"""`vision-client`: call a vision-grpc server from the shell. One subcommand per RPC family:
detect, embed, faces, ocr, models, index, search, people (`vision-client <command> --help`). Images
are files or folders (their .jpg/.jpeg/.png/.webp/.bmp files); several are processed at once
(`--concurrency`), with a progress bar (rate, ETA) on stderr when it is a terminal. Output is a
readable table by default and one JSON object per image (or model) per line with `--json`.

Exit status: 0 every image succeeded; 1 some image failed (each failure is reported);
2 usage error; 3 the call itself failed (server unreachable, deadline, authentication), after
retries; 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from vision.v1 import (
    detection_pb2,
    face_pb2,
    image_pb2,
    model_service_pb2,
    person_pb2,
    search_service_pb2,
)
from vision_client.client import DEFAULT_CONCURRENCY, IngestImage, StreamImage, VisionClient
from vision_client.errors import vision_error
from vision_client.progress import Progress

# `models --task`: each Task of the API by its lower-case name (TASK_OCR: ocr).
TASKS = {name.removeprefix("TASK_").lower(): value
         for name, value in model_service_pb2.Task.items()
         if value != model_service_pb2.TASK_UNSPECIFIED}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

EXIT_OK, EXIT_IMAGE_FAILED, EXIT_USAGE, EXIT_CALL_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def image_paths(given: Sequence[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files, sorted."""
    paths: list[Path] = []
    for path in given:
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def _show(args: argparse.Namespace, progress: Progress, name: str, message: Message,
          table: Callable[[Any], list[str]]) -> None:
    if args.json:
        progress.line(json.dumps({"image": name, **json_format.MessageToDict(message)}))
        return
    progress.line("\n".join([name, *(f"  {line}" for line in table(message))]))


def _failed(args: argparse.Namespace, progress: Progress, name: str, message: str) -> None:
    if args.json:
        progress.line(json.dumps({"image": name, "error": message}))
    else:
        progress.line(f"{name}\n  failed: {message}", to=sys.stderr)


def _box(box: Any) -> str:
    return f"({box.x_min:.0f}, {box.y_min:.0f}, {box.x_max:.0f}, {box.y_max:.0f})"


async def _detect(args: argparse.Namespace, client: VisionClient, paths: list[Path]) -> int:
    options = detection_pb2.DetectionOptions(class_allowlist=args.only or [])
    if args.score is not None:
        options.score_threshold = args.score
    contents = await asyncio.to_thread(lambda: [path.read_bytes() for path in paths])
    images = [StreamImage(str(path), content, options)
              for path, content in zip(paths, contents, strict=True)]
    progress = Progress(len(images), sys.stderr, sys.stdout)
    progress.start()
    failures = 0
    async for response in client.detect_many(images, concurrency=args.concurrency):
        progress.done += 1
        if response.status.code != 0:
            failures += 1
            _failed(args, progress, response.request_id, response.status.message)
            continue
        _show(args, progress, response.request_id, response.result, lambda r: [
            f"{d.label:<16} {d.score:.3f}  {_box(d.box)}" for d in r.detections])
    progress.finish()
    return EXIT_IMAGE_FAILED if failures else EXIT_OK


async def _per_image(args: argparse.Namespace, paths: list[Path],
                     call: Callable[[bytes], Awaitable[Message]],
                     table: Callable[[Any], list[str]]) -> int:
    """Unary calls, `--concurrency` at a time; results printed as they complete."""
    progress = Progress(len(paths), sys.stderr, sys.stdout)
    progress.start()
    slots = asyncio.Semaphore(args.concurrency)

    async def one(path: Path) -> tuple[Path, Message | grpc.aio.AioRpcError]:
        async with slots:
            try:
                return path, await call(await asyncio.to_thread(path.read_bytes))
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                    return path, err
                raise

    failures = 0
    for finished in asyncio.as_completed([one(path) for path in paths]):
        path, outcome = await finished
        progress.done += 1
        if isinstance(outcome, grpc.aio.AioRpcError):
            failures += 1
            _failed(args, progress, str(path), f"{outcome.code().name}: {outcome.details()}")
            continue
        _show(args, progress, str(path), outcome, table)
    progress.finish()
    return EXIT_IMAGE_FAILED if failures else EXIT_OK


async def _models(args: argparse.Namespace, client: VisionClient) -> int:
    models = await client.list_models(
        TASKS[args.task] if args.task else model_service_pb2.TASK_UNSPECIFIED)
    for model in models:
        if args.json:
            print(json.dumps(json_format.MessageToDict(model)))
            continue
        task = model_service_pb2.Task.Name(model.task).removeprefix("TASK_").lower()
        versions = ",".join(v.version + ("" if v.ready else "(not ready)")
                            for v in model.versions)
        default = " default" if model.default_for_task else ""
        print(f"{model.name:<24} {task:<10} v{versions:<12} "
              f"{'ready' if model.ready else 'NOT READY'}{default}")
    return EXIT_OK


def _pairs(given: Sequence[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for item in given or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"vision-client: {flag} takes KEY=VALUE, not {item!r}")
        pairs[key] = value
    return pairs


async def _index(args: argparse.Namespace, client: VisionClient, paths: list[Path]) -> int:
    """Every image over one ingest stream, id = its file name (or path relative to --root)."""
    metadata = _pairs(args.metadata, "--metadata")
    progress = Progress(len(paths), sys.stderr, sys.stdout)
    progress.start()

    def images() -> Iterator[IngestImage]:  # read lazily: a folder never sits in memory whole
        for path in paths:
            image_id = str(path.relative_to(args.root)) if args.root else path.name
            yield IngestImage(image_id, path.read_bytes(), {**metadata, "path": str(path)})

    failures = 0
    indexed = 0
    duplicates: dict[str, str] = {}
    async for response in client.stream_ingest(images()):
        progress.done += 1
        if response.status.code != 0:
            failures += 1
            _failed(args, progress, response.request_id, response.status.message)
            continue
        indexed += 1
        if response.image.duplicate_of:
            duplicates[response.image.id] = response.image.duplicate_of
        _show(args, progress, response.request_id, response.image, lambda r: [
            f"{len(r.objects)} objects, {len(r.faces)} faces, {len(r.text_lines)} text lines; "
            f"labels: {', '.join(label.label for label in r.labels[:4])}",
            *([f"duplicate of {r.duplicate_of}"] if r.duplicate_of else [])])
    progress.finish()
    if args.json:
        print(json.dumps({"summary": {"indexed": indexed, "failed": failures,
                                      "duplicates": duplicates}}))
    else:
        print(f"indexed {indexed}, failed {failures}, duplicates {len(duplicates)}"
              + "".join(f"\n  {image} duplicates {original}"
                        for image, original in duplicates.items()))
    return EXIT_IMAGE_FAILED if failures else EXIT_OK


async def _search(args: argparse.Namespace, client: VisionClient) -> int:
    request = search_service_pb2.SearchRequest(
        filters=search_service_pb2.SearchFilters(
            labels=args.label or [], metadata=_pairs(args.where, "--where"),
            person_ids=args.person or []),
        page_size=min(args.limit, 100))
    if args.min_score is not None:
        request.min_score = args.min_score
    if args.text is not None:
        request.text = args.text
    elif args.image is not None:
        request.image.CopyFrom(image_pb2.Image(content=args.image.read_bytes()))
    elif args.face is not None:
        request.face_image.CopyFrom(image_pb2.Image(content=args.face.read_bytes()))
    elif args.similar_to is not None:
        request.similar_to_id = args.similar_to
    shown = 0
    while shown < args.limit:
        page = await client.search(request)
        for hit in page.hits[: args.limit - shown]:
            shown += 1
            if args.json:
                print(json.dumps(json_format.MessageToDict(hit)))
                continue
            indexes = "+".join(search_service_pb2.Index.Name(i).removeprefix("INDEX_").lower()
                               for i in hit.indexes)
            matched = next((m.text for m in hit.matches if m.text), "")
            print(f"{hit.score:8.4f}  {hit.id:<32} {indexes:<18} {matched}")
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    return EXIT_OK


def _person_line(person: person_pb2.Person) -> str:
    name = person.name or "(unnamed)"
    return (f"{person.id:<20} {name:<24} {person.face_count:>4} faces {person.image_count:>4} "
            f"images  cover {person.cover_image_id} {_box(person.cover_box)}")


async def _people(args: argparse.Namespace, client: VisionClient) -> int:
    if args.action == "rename":
        people = [await client.rename_person(args.id, args.name)]
    elif args.action == "merge":
        people = [await client.merge_people(args.ids, args.into)]
    elif args.action == "show":
        people = [await client.get_person(args.id)]
    else:
        people = await client.list_people()
    for person in people:
        print(json.dumps(json_format.MessageToDict(person)) if args.json else _person_line(person))
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    def pem(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None
    async with VisionClient(args.target, timeout_s=args.timeout, api_key=args.api_key,
                            tls=args.tls, root_certificates=pem(args.ca_cert),
                            certificate_chain=pem(args.cert),
                            private_key=pem(args.key)) as client:
        if args.command == "models":
            return await _models(args, client)
        if args.command == "search":
            return await _search(args, client)
        if args.command == "people":
            return await _people(args, client)
        paths = image_paths(args.images)
        if args.command == "index":
            return await _index(args, client, paths)
        if args.command == "detect":
            return await _detect(args, client, paths)
        if args.command == "embed":
            return await _per_image(args, paths, client.embed, lambda r: [
                f"{len(r.embedding.values)}-d embedding ({r.model.name})",
                *(f"{c.label:<24} {c.score:.3f}" for c in r.classifications)])
        if args.command == "faces":
            options = face_pb2.FaceOptions(include_embeddings=args.embeddings)
            return await _per_image(
                args, paths, lambda content: client.detect_faces(content, options), lambda r: [
                    f"face {f.score:.3f}  {_box(f.box)}" for f in r.faces] or ["no faces"])
        return await _per_image(args, paths, client.extract_text, lambda r: [
            f"{line.confidence:.2f}  {line.text}" for line in r.lines] or ["no text"])


def _common_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the command; after it, only when given, so that a
    subcommand's default never overwrites `vision-client --json detect ...`."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value
    parser.add_argument("--target", default=default("127.0.0.1:4603"), help="server host:port")
    parser.add_argument("--timeout", type=float, default=default(60.0),
                        help="deadline per unary call, retries included, seconds")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="one JSON object per line")
    parser.add_argument("--api-key", default=default(None),
                        help="sent as `authorization: Bearer <key>`")
    parser.add_argument("--tls", action="store_true", default=default(False),
                        help="TLS with the system's roots")
    parser.add_argument("--ca-cert", type=Path, default=default(None),
                        help="TLS with this PEM root certificate")
    parser.add_argument("--cert", type=Path, default=default(None),
                        help="mutual TLS: this PEM client certificate chain (with --key)")
    parser.add_argument("--key", type=Path, default=default(None),
                        help="mutual TLS: the client certificate's PEM private key")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, suppress=True)
    images = argparse.ArgumentParser(add_help=False, parents=[common])
    images.add_argument("images", nargs="+", type=Path, help="image files or folders")
    images.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"images in flight at once (default {DEFAULT_CONCURRENCY})")
    formatter = argparse.RawDescriptionHelpFormatter
    root = argparse.ArgumentParser(prog="vision-client", description=__doc__,
                                   formatter_class=formatter)
    _common_options(root, suppress=False)
    sub = root.add_subparsers(dest="command", required=True)
    detect = sub.add_parser(
        "detect", parents=[images], formatter_class=formatter,
        help="detect objects (one resumable stream, images of any size)",
        description="Detect objects over one upload stream; a broken connection is resumed, "
                    "re-sending only the images without a result.")
    detect.add_argument("--score", type=float, help="minimum score in [0, 1]")
    detect.add_argument("--only", nargs="*", help="labels to keep, e.g. person cup")
    sub.add_parser("embed", parents=[images], help="image embedding and ImageNet classes",
                   description="Embed images (unary calls, each ≤ 4 MiB).")
    faces = sub.add_parser("faces", parents=[images],
                           help="faces, landmarks and identity embeddings",
                           description="Detect faces (unary calls, each ≤ 4 MiB).")
    faces.add_argument("--embeddings", action="store_true", help="include identity embeddings")
    sub.add_parser("ocr", parents=[images], help="text lines in reading order",
                   description="Read text (unary calls, each ≤ 4 MiB).")
    models = sub.add_parser("models", parents=[common], help="the models the server serves",
                            description="List the models the server serves.")
    models.add_argument("--task", choices=sorted(TASKS), help="only models of this task")
    index = sub.add_parser(
        "index", parents=[images], help="index images for search (one ingest stream)",
        description="Analyse and store images (objects, embedding, faces, text) so that "
                    "`search` finds them; an id indexed again is replaced.")
    index.add_argument("--root", type=Path,
                       help="ids are paths relative to this folder (default: file names)")
    index.add_argument("--metadata", nargs="*", metavar="KEY=VALUE",
                       help="metadata stored with every image")
    search = sub.add_parser("search", parents=[common], help="find indexed images",
                            description="Find indexed images by words, a similar photo, a "
                                        "face or a stored image, best first; with only "
                                        "filters, browse them newest first.")
    query = search.add_mutually_exclusive_group()
    query.add_argument("--text", help="words: labels and text in the images")
    query.add_argument("--image", type=Path, help="a photo: similar images")
    query.add_argument("--face", type=Path, help="a photo of a person: the same person")
    query.add_argument("--similar-to", metavar="ID", help="an indexed image: more like it")
    search.add_argument("--min-score", type=float,
                        help="lowest cosine similarity in [-1, 1] (not with --text)")
    search.add_argument("--label", nargs="*", help="only images with any of these labels")
    search.add_argument("--where", nargs="*", metavar="KEY=VALUE",
                        help="only images whose metadata has these values")
    search.add_argument("--person", nargs="+", metavar="ID",
                        help="only images with a face of any of these people")
    search.add_argument("--limit", type=int, default=10, help="most hits shown (default 10)")
    people = sub.add_parser("people", parents=[common], help="list, rename and merge people",
                            description="The people that indexed faces are grouped into: list "
                                        "them (the default), show one, rename one, or merge "
                                        "several into one.")
    action = people.add_subparsers(dest="action")
    action.add_parser("list", parents=[common], help="every person, most faces first")
    show = action.add_parser("show", parents=[common], help="one person")
    show.add_argument("id")
    rename = action.add_parser("rename", parents=[common], help="give a person a name")
    rename.add_argument("id")
    rename.add_argument("name")
    merge = action.add_parser("merge", parents=[common],
                              help="move every face of some people to another")
    merge.add_argument("ids", nargs="+", metavar="ID", help="the people merged away")
    merge.add_argument("--into", required=True, metavar="ID", help="the person kept")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if getattr(args, "concurrency", 1) < 1:
        parser().error("--concurrency must be at least 1")
    if args.command == "search" and not any(
            (args.text, args.image, args.face, args.similar_to, args.label, args.where,
             args.person)):
        parser().error("search needs --text, --image, --face or --similar-to, or a filter "
                       "(--label, --where, --person) to browse")
    if (args.cert is None) != (args.key is None):
        parser().error("--cert and --key go together (mutual TLS)")
    try:
        code = asyncio.run(_run(args))
    except grpc.aio.AioRpcError as err:
        error = vision_error(err)
        reason = f" ({error.reason})" if error.reason else ""
        print(f"vision-client: {error.code().name}{reason}: {error.details()}", file=sys.stderr)
        code = EXIT_CALL_FAILED
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    raise SystemExit(code)


if __name__ == "__main__":
    main()
