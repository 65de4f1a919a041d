"""`vision-client detect IMAGE...`: detect objects in local images through a vision-grpc server
and print one JSON line per image (streamed, so images of any size work)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from google.protobuf import json_format

from vision.v1 import detection_pb2
from vision_client.client import StreamImage, VisionClient


async def _detect(args: argparse.Namespace, images: list[StreamImage]) -> int:
    failures = 0
    async with VisionClient(args.target, timeout_s=args.timeout) as client:
        async for response in client.stream_detect(images):
            failures += response.status.code != 0
            print(json.dumps(json_format.MessageToDict(response)))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vision-client", description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:4603", help="server host:port")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline, seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="detect objects in images")
    detect.add_argument("images", nargs="+", type=Path)
    detect.add_argument("--score", type=float, help="minimum score in [0, 1]")
    detect.add_argument("--only", nargs="*", help="labels to keep, e.g. person cup")
    args = parser.parse_args(argv)
    options = detection_pb2.DetectionOptions(class_allowlist=args.only or [])
    if args.score is not None:
        options.score_threshold = args.score
    images = [StreamImage(str(path), path.read_bytes(), options) for path in args.images]
    raise SystemExit(asyncio.run(_detect(args, images)))


if __name__ == "__main__":
    main()
