"""`vision-client`: call a vision-grpc server from the shell. One subcommand per RPC family:
detect, embed, faces, ocr, models. Output is a readable table by default and one JSON object per
image (or model) with `--json`. Exit status: 0 when every image succeeded, 1 when any failed,
2 for usage errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from vision.v1 import detection_pb2, face_pb2, model_service_pb2
from vision_client.client import StreamImage, VisionClient

TASKS = {"detection": model_service_pb2.TASK_DETECTION,
         "embedding": model_service_pb2.TASK_EMBEDDING,
         "faces": model_service_pb2.TASK_FACES, "ocr": model_service_pb2.TASK_OCR}


def _print(args: argparse.Namespace, name: str, message: Message,
           table: Callable[[Any], list[str]]) -> None:
    if args.json:
        print(json.dumps({"image": name, **json_format.MessageToDict(message)}))
        return
    print(name)
    for line in table(message):
        print(f"  {line}")


def _box(box: Any) -> str:
    return f"({box.x_min:.0f}, {box.y_min:.0f}, {box.x_max:.0f}, {box.y_max:.0f})"


async def _detect(args: argparse.Namespace, client: VisionClient) -> int:
    options = detection_pb2.DetectionOptions(class_allowlist=args.only or [])
    if args.score is not None:
        options.score_threshold = args.score
    images = [StreamImage(str(path), path.read_bytes(), options) for path in args.images]
    failures = 0
    async for response in client.stream_detect(images):
        if response.status.code != 0:
            failures += 1
            _failed(args, response.request_id, response.status.message)
            continue
        _print(args, response.request_id, response.result, lambda r: [
            f"{d.label:<16} {d.score:.3f}  {_box(d.box)}" for d in r.detections])
    return 1 if failures else 0


async def _per_image(args: argparse.Namespace,
                     call: Callable[[bytes], Awaitable[Message]],
                     table: Callable[[Any], list[str]]) -> int:
    failures = 0
    for path in args.images:
        try:
            response = await call(path.read_bytes())
        except grpc.aio.AioRpcError as err:
            failures += 1
            _failed(args, str(path), f"{err.code().name}: {err.details()}")
            continue
        _print(args, str(path), response, table)
    return 1 if failures else 0


def _failed(args: argparse.Namespace, name: str, message: str) -> None:
    if args.json:
        print(json.dumps({"image": name, "error": message}))
    else:
        print(f"{name}\n  failed: {message}", file=sys.stderr)


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
    return 0


async def _run(args: argparse.Namespace) -> int:
    async with VisionClient(args.target, timeout_s=args.timeout) as client:
        if args.command == "detect":
            return await _detect(args, client)
        if args.command == "embed":
            return await _per_image(args, client.embed, lambda r: [
                f"{len(r.embedding.values)}-d embedding ({r.model.name})",
                *(f"{c.label:<24} {c.score:.3f}" for c in r.classifications)])
        if args.command == "faces":
            options = face_pb2.FaceOptions(include_embeddings=args.embeddings)
            return await _per_image(
                args, lambda content: client.detect_faces(content, options), lambda r: [
                    f"face {f.score:.3f}  {_box(f.box)}" for f in r.faces] or ["no faces"])
        if args.command == "ocr":
            return await _per_image(args, client.extract_text, lambda r: [
                f"{line.confidence:.2f}  {line.text}" for line in r.lines] or ["no text"])
        return await _models(args, client)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vision-client", description=__doc__)
    root.add_argument("--target", default="127.0.0.1:4603", help="server host:port")
    root.add_argument("--timeout", type=float, default=60.0, help="deadline per call, seconds")
    root.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = root.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="detect objects (streams images of any size)")
    detect.add_argument("images", nargs="+", type=Path)
    detect.add_argument("--score", type=float, help="minimum score in [0, 1]")
    detect.add_argument("--only", nargs="*", help="labels to keep, e.g. person cup")
    embed = sub.add_parser("embed", help="image embedding and ImageNet classes")
    embed.add_argument("images", nargs="+", type=Path)
    faces = sub.add_parser("faces", help="faces, landmarks and identity embeddings")
    faces.add_argument("images", nargs="+", type=Path)
    faces.add_argument("--embeddings", action="store_true", help="include identity embeddings")
    ocr = sub.add_parser("ocr", help="text lines in reading order")
    ocr.add_argument("images", nargs="+", type=Path)
    models = sub.add_parser("models", help="the models the server serves")
    models.add_argument("--task", choices=sorted(TASKS), help="only models of this task")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    raise SystemExit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
