"""Fetch, verify and adapt the ONNX networks that `model_repository/` serves.

Each file comes from a local cache folder or its upstream (or from an installed Python package
that ships it), is checked against a pinned SHA-256, edited where Triton needs it (a dynamic
batch dimension) and written into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT.parent / "shared" / "models"
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
CACHE_ENV = "VISION_MODEL_CACHE"
SOURCE_SHA_NAME = ".source-sha256"
BATCH_DIM_NAME = "batch"


class PrepareError(RuntimeError):
    """A model file could not be found, fetched or verified."""


def make_yolox_batch_dynamic(model: onnx.ModelProto) -> None:
    """Turn the batch-1 YOLOX export into one that accepts any batch size.

    The export fixes dim 0 of `images` and `output` to 1 and its three head Reshapes target
    `[1, 85, -1]`; a 0 there tells Reshape to copy the incoming batch dimension instead.
    """
    graph = model.graph
    for value in (*graph.input, *graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = BATCH_DIM_NAME
    # The intermediate shape hints all say batch 1; they are optional, so drop them and let
    # onnxruntime infer shapes rather than trip over a stale static batch.
    del graph.value_info[:]

    initializers = {init.name: init for init in graph.initializer}
    edited = 0
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        shape_init = initializers.get(node.input[1])
        if shape_init is None:
            continue
        shape = numpy_helper.to_array(shape_init)
        if shape.tolist() == [1, 85, -1]:
            shape = shape.copy()
            shape[0] = 0
            shape_init.CopyFrom(numpy_helper.from_array(shape, shape_init.name))
            edited += 1
    if edited != 3:
        raise PrepareError(f"expected 3 YOLOX head Reshapes targeting [1, 85, -1], found {edited}")
    onnx.checker.check_model(model)


YUNET_HEAD_SHAPES = ([1, -1, 1], [1, -1, 4], [1, -1, 10])


def make_yunet_batch_dynamic(model: onnx.ModelProto) -> None:
    """Let the batch-1 YuNet export take a batch of equally sized images.

    Height and width are already dynamic; dim 0 of the input and the twelve outputs is fixed to
    1, and the twelve head Reshapes target `[1, -1, k]` (k = 1, 4, 10): as for YOLOX, a 0 copies
    the incoming batch dimension instead.
    """
    graph = model.graph
    for value in (*graph.input, *graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = BATCH_DIM_NAME
    del graph.value_info[:]

    initializers = {init.name: init for init in graph.initializer}
    # Several Reshapes share one shape initializer, so count the nodes, edit each tensor once.
    edited_nodes, edited_inits = 0, set()
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        shape_init = initializers[node.input[1]]
        shape = numpy_helper.to_array(shape_init)
        if shape_init.name in edited_inits:
            edited_nodes += 1
        elif shape.tolist() in YUNET_HEAD_SHAPES:
            shape = shape.copy()
            shape[0] = 0
            shape_init.CopyFrom(numpy_helper.from_array(shape, shape_init.name))
            edited_inits.add(shape_init.name)
            edited_nodes += 1
    if edited_nodes != 12:
        raise PrepareError(
            f"expected 12 YuNet head Reshapes targeting [1, -1, k], found {edited_nodes}"
        )
    onnx.checker.check_model(model)


CHARACTER_KEY = "character"


def recogniser_characters(model: onnx.ModelProto) -> str:
    """The PP-OCR recogniser's character set, one a line, as its ONNX metadata carries it:
    written to a file so that the Triton model reads text, not the ONNX protobuf (the GPU
    image's Python has neither onnx nor onnxruntime)."""
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if CHARACTER_KEY not in metadata:
        raise PrepareError(f"the recogniser has no {CHARACTER_KEY!r} metadata")
    return metadata[CHARACTER_KEY]


@dataclass(frozen=True)
class ModelSpec:
    """One network file: where it comes from, what it must hash to, where it goes."""

    filename: str
    sha256: str
    url: str | None  # None: no known upstream serves these bytes, so only the cache has them
    target: str  # relative to the model repository
    transform: Callable[[onnx.ModelProto], None] | None = None
    # An installed package that ships the file (filename is then relative to the package
    # folder); such files are copied from it, never from the cache or url.
    package: str | None = None
    # Files written beside the target from the network's own file: name -> how to make it.
    companions: tuple[tuple[str, Callable[[onnx.ModelProto], str]], ...] = ()


# Add a model here by one entry; the SHA-256 pins match ../shared/models/SHA256SUMS.
MODELS: dict[str, ModelSpec] = {
    "yolox_nano": ModelSpec(
        filename="yolox_nano.onnx",
        sha256="695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
        url=(
            "https://raw.githubusercontent.com/Kazuhito00/YOLOX-ONNX-TFLite-Sample/"
            "HEAD/model/yolox_nano.onnx"
        ),
        target="yolox_nano_onnx/1/model.onnx",
        transform=make_yolox_batch_dynamic,
    ),
    # No public address is known to serve these exact bytes (../shared/models/SOURCES.md: the
    # MobileNetV2 file was exported from torchvision weights, the face files are copies found in
    # public repositories), so they come from the cache folder only.
    "mobilenet_v2": ModelSpec(
        filename="mobilenet_v2_imagenet.onnx",
        sha256="6ecf8b34f71e29553d1d8612dc85e1f84aac1d8573d6210a538af92b7972a1f7",
        url=None,
        target="mobilenet_v2_onnx/1/model.onnx",
    ),
    "yunet": ModelSpec(
        filename="face_detection_yunet_2026may.onnx",
        sha256="ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
        url=None,
        target="yunet_onnx/1/model.onnx",
        transform=make_yunet_batch_dynamic,
    ),
    "mobilefacenet": ModelSpec(
        filename="mobilefacenet_128d.onnx",
        sha256="0c9ad2a83969fc82155706f7020e6926b4a1a90a5476fff4a5588dfe207f64a4",
        url=None,
        target="mobilefacenet_onnx/1/model.onnx",
    ),
    # PP-OCRv6 small (Apache-2.0), shipped inside the rapidocr==3.10.0 wheel (the dev extra);
    # pinned to the files of that wheel.
    "ppocr_v6_det": ModelSpec(
        filename="models/PP-OCRv6_det_small.onnx",
        sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        url=None,
        target="ppocr_v6_det/1/model.onnx",
        package="rapidocr",
    ),
    "ppocr_v6_cls": ModelSpec(
        filename="models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        url=None,
        target="ppocr_v6_cls/1/model.onnx",
        package="rapidocr",
    ),
    "ppocr_v6_rec": ModelSpec(
        filename="models/PP-OCRv6_rec_small.onnx",
        sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        url=None,
        target="ppocr_v6_rec/1/model.onnx",
        package="rapidocr",
        companions=(("characters.txt", recogniser_characters),),
    ),
}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_cache() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE


def package_folder(package: str) -> Path:
    """Where an installed package lives, found without importing (running) it."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise PrepareError(f"package {package} is not installed (it is in the dev extra)")
    return Path(next(iter(found.submodule_search_locations)))


def fetch_source(spec: ModelSpec, cache: Path) -> bytes:
    """Read the pristine file from its package, else the cache, else download it; verify its
    SHA-256 either way."""
    cached = cache / spec.filename
    if spec.package is not None:
        shipped = package_folder(spec.package) / spec.filename
        if not shipped.is_file():
            raise PrepareError(f"{shipped} is missing from the installed {spec.package}")
        data, origin = shipped.read_bytes(), str(shipped)
    elif cached.is_file():
        data, origin = cached.read_bytes(), str(cached)
    elif spec.url is None:
        raise PrepareError(f"{spec.filename} is not in {cache} and has no download address")
    else:
        print(f"{spec.filename}: not in {cache}, downloading {spec.url}", file=sys.stderr)
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            data = response.read()
        origin = spec.url
    actual = sha256_of(data)
    if actual != spec.sha256:
        raise PrepareError(
            f"{spec.filename} from {origin} has SHA-256 {actual}, expected {spec.sha256}"
        )
    return data


def is_prepared(spec: ModelSpec, repository: Path) -> bool:
    target = repository / spec.target
    marker = target.parent / SOURCE_SHA_NAME
    companions = all((target.parent / name).is_file() for name, _ in spec.companions)
    return (target.is_file() and companions and marker.is_file()
            and marker.read_text().strip() == spec.sha256)


def prepare(spec: ModelSpec, cache: Path, repository: Path, *, force: bool = False) -> Path:
    """Write the (edited) model into the repository unless it is already there from this source."""
    target = repository / spec.target
    if not force and is_prepared(spec, repository):
        return target
    data = fetch_source(spec, cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.transform is not None or spec.companions:
        model = onnx.load_from_string(data)
        if spec.transform is not None:
            spec.transform(model)
            data = model.SerializeToString()
        for name, make in spec.companions:
            write_atomically(target.parent / name, make(model).encode("utf-8"))
    write_atomically(target, data)
    (target.parent / SOURCE_SHA_NAME).write_text(spec.sha256 + "\n")
    return target


def write_atomically(target: Path, data: bytes) -> None:
    """Write beside the target and rename, so Triton never sees a half-written file."""
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(data)
    tmp_path = Path(tmp.name)
    try:
        tmp_path.chmod(0o644)
        tmp_path.replace(target)
    except OSError:
        tmp_path.unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.prepare_models", description=__doc__)
    parser.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    parser.add_argument(
        "--cache", type=Path, help=f"cache folder (default: ${CACHE_ENV} or ../shared/models)"
    )
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    args = parser.parse_args(argv)
    cache: Path = args.cache if args.cache is not None else default_cache()
    names: list[str] = args.models or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    try:
        for name in names:
            path = prepare(MODELS[name], cache, args.repository, force=args.force)
            print(f"{name}: {path}")
    except (PrepareError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
