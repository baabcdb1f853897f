"""Fuzzing the edges (issue #8): whatever a file holds, prunegate reads it or raises its own error.

The policy loader, the data readers and the report envelope parser each get arbitrary input and
input a few mutations away from valid. Allowed outcomes: a result, or a PrunegateError (the CLI's
exit 2); for verification also a failed Verification (exit 1). Anything else is a crash (exit 3).

Bounded and reproducible: derandomized, no example database, a fixed number of examples.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prunegate.data import batches
from prunegate.data.arrays import NpyImages, NpzImages
from prunegate.data.cifar import Cifar10Binary
from prunegate.data.cifar_c import CorruptedArrays
from prunegate.data.imagefolder import FlatImageFolder, ImageFolder
from prunegate.errors import DataError, PrunegateError, ReportError
from prunegate.plan import build_plan
from prunegate.policy import load_policy, policy_from_dict
from prunegate.report import keys
from prunegate.report.attest import Verification, parse_envelope, read_envelope, sign, verify_envelope

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=60)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for every example's files (hypothesis reruns a test function many times: a
    function-scoped tmp_path would be shared anyway)."""
    return tmp_path_factory.mktemp("fuzz")


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --- JSON-like values and mutations of a valid document ----------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["all", "clean", "noise/*", "fog", "cuda", "npz", "uniform", "", "..", "/etc/passwd", "accuracy_drop", "max"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def paths_of(node, prefix=()) -> list[tuple]:
    """Every location in a nested document (dict keys and list indices)."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths_of(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths_of(value, prefix + (i,))
    return found


def mutate(data, document):
    """Up to three edits of `document`: replace a value, delete a key, add a key."""
    document = json.loads(json.dumps(document))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        locations = paths_of(document)
        where = data.draw(st.sampled_from(locations), label="where")
        if not where:
            continue
        parent = document
        for part in where[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            parent[where[-1]] = data.draw(values, label="value")
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent[where[-1]], dict):
            parent[where[-1]][data.draw(st.text(max_size=10), label="key")] = data.draw(values, label="value")
        elif isinstance(parent[where[-1]], list):
            parent[where[-1]].append(data.draw(values, label="value"))
    return document


# --- the policy loader ---------------------------------------------------------------------------

RICH_POLICY = {
    "version": 1,
    "name": "fuzz",
    "models": {
        "dense": "dense.onnx",
        "pruned": {"path": "pruned.pt", "arch": "net.py:build"},
        "arch": "m:f",
        "input": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    },
    "data": {
        "test": {"format": "imagefolder", "path": "images"},
        "limit": 100,
        "max_pixels": 10**6,
        "ood": [{"name": "other", "format": "npy", "path": "x.npy", "labels": "y.npy"}],
    },
    "suite": {
        "seed": 3,
        "noise": [{"kind": "uniform", "levels": [0.1, 0.2], "draws": 2}],
        "corruptions": {"preset": "cifar10-c", "names": ["fog", "contrast"], "severities": [1, 5]},
    },
    "gate": {
        "rules": [
            {"name": "clean", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
            {
                "name": "rest",
                "tasks": ["noise/*", "ood/*", "corruption/*/5"],
                "metric": "agreement",
                "aggregate": "min",
                "min": 0.9,
            },
        ]
    },
    "runtime": {"device": "cpu", "backend": "auto", "batch_size": 64, "workers": 0, "allow_fallback": True},
    "require_signature": False,
}


def load_and_plan(path: Path) -> None:
    """What `prunegate policy validate` does: a policy and its plan, or a PolicyError."""
    try:
        build_plan(load_policy(path))
    except PrunegateError as error:
        assert str(error).startswith(str(path)), error


def test_the_rich_policy_is_valid(scratch: Path) -> None:
    path = scratch / "rich.yaml"
    path.write_text(yaml.safe_dump(RICH_POLICY))
    assert len(build_plan(load_policy(path))) == 1 + 1 + 2 + 4


@FUZZ
@given(text=st.text(max_size=300))
@example(text="a: &a [*a, *a]\nversion: *a\n")  # a recursive alias
@example(
    text="a: &a ['x','x','x','x','x','x','x','x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "version: 1\nname: x\ngate: {rules: *f}\n"
)  # "billion laughs": aliases that expand
@example(text="!!python/object/apply:os.system ['echo hi']")  # a tag that runs code
@example(text="version: 1\nname: x\n" + "nest: " + "[" * 2000 + "]" * 2000)
@example(text="? [1, 2]\n: x\n")  # an unhashable-looking key
@example(text="{1: 2, 1.0: 3}")  # duplicate keys by value
@example(text="version: 1\n\ufeffname: x\n")
def test_policy_loader_on_arbitrary_text(scratch: Path, text: str) -> None:
    path = scratch / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    load_and_plan(path)


@FEW
@given(raw=st.binary(max_size=200))
def test_policy_loader_on_arbitrary_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "policy.yaml"
    path.write_bytes(raw)
    load_and_plan(path)


@FUZZ
@given(data=st.data())
def test_policy_from_nested_structures_near_the_schema(scratch: Path, data) -> None:
    document = mutate(data, RICH_POLICY)
    try:
        build_plan(policy_from_dict(document, "fuzz.yaml"))
    except PrunegateError:
        pass
    path = scratch / "near.yaml"  # the same document through YAML, as a user writes it
    try:
        path.write_text(yaml.safe_dump(document))
    except yaml.YAMLError:
        return
    load_and_plan(path)


# --- the data readers ------------------------------------------------------------------------------

BIG = 10**6


def read_all(images) -> None:
    """Stream every image as `check` does (decode, fit to 8 x 8, batch)."""
    for _ in batches(images, np.arange(len(images)), 8, 3, 0, BIG):
        pass


def expect_data_error_or_images(make) -> None:
    try:
        images = make()
        read_all(images)
    except DataError:
        pass


def npy_bytes(shape, dtype: str, fortran: bool, body: bytes) -> bytes:
    header = repr({"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body


npy_files = st.builds(
    npy_bytes,
    st.lists(st.integers(0, 40), min_size=0, max_size=5),
    st.sampled_from(["|u1", "<i8", "<u8", "<f4", "|b1", "|O", "|V4", "<U2", ">u2", "<i4"]),
    st.booleans(),
    st.binary(max_size=600),
)


def valid_npz(compressed: bool = False) -> bytes:
    """Stored members are memory-mapped, compressed ones streamed: both readers are fuzzed."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    (np.savez_compressed if compressed else np.savez)(
        buffer, images=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8), labels=np.arange(4)
    )
    return buffer.getvalue()


def mutate_bytes(data, raw: bytes) -> bytes:
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="byte edits")):
        if not raw:
            break
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]), label="kind")
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        if kind == "flip":
            raw[at] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
    return bytes(raw)


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


BROKEN_HEADER = b"\x93NUMPY\x01\x00\x01\x00{"  # numpy's header parser raises tokenize.TokenError
UNCLOSED_HEADER = b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1'\n"  # ... and SyntaxError


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        npy_files,
        st.builds(lambda b: b"PK\x03\x04" + b, st.binary(max_size=200)),
        st.builds(lambda i, lab: zip_of({"images.npy": i, "labels.npy": lab}), npy_files, npy_files),
    )
)
@example(raw=npy_bytes([2, 8, 8, 3], "|u1", False, bytes(384)))  # an .npy given as .npz
@example(raw=zip_of({"images.npy": BROKEN_HEADER, "labels.npy": BROKEN_HEADER}))
@example(raw=zip_of({"images.npy": UNCLOSED_HEADER, "labels.npy": UNCLOSED_HEADER}))
@example(
    raw=zip_of(
        {
            "images.npy": npy_bytes([10**12, 8, 8, 3], "|u1", False, b""),  # a header claiming 192 TB
            "labels.npy": npy_bytes([2], "<i8", False, bytes(16)),
        }
    )
)
@example(
    raw=zip_of(
        {
            "images.npy": npy_bytes([2, 8, 8, 3], "|u1", True, bytes(384)),  # Fortran order, memory-mapped
            "labels.npy": npy_bytes([2], "<i8", False, bytes(16)),
        }
    )
)
@example(
    raw=zip_of(
        {
            "images.npy": npy_bytes([2, -1, -1, 3], "|u1", False, bytes(6)),  # 6 bytes, if -1 x -1 were 1
            "labels.npy": npy_bytes([2], "<i8", False, bytes(16)),
        }
    )
)
@example(raw=valid_npz(compressed=True)[:-30])  # the central directory cut
@example(raw=valid_npz(compressed=True))
def test_npz_reader_on_arbitrary_bytes(scratch: Path, raw: bytes) -> None:
    path = scratch / "data.npz"
    path.write_bytes(raw)
    expect_data_error_or_images(lambda: NpzImages(path, "data.test"))


@FUZZ
@given(data=st.data())
def test_npz_reader_on_damaged_archives(scratch: Path, data) -> None:
    path = scratch / "damaged.npz"
    path.write_bytes(mutate_bytes(data, valid_npz(data.draw(st.booleans(), label="compressed"))))
    expect_data_error_or_images(lambda: NpzImages(path, "data.test"))


@FUZZ
@given(images=st.one_of(npy_files, st.binary(max_size=300)), labels=st.one_of(npy_files, st.binary(max_size=100)))
@example(images=npy_bytes([2, 8, 8, 3], "|u1", False, bytes(384)), labels=npy_bytes([2], "<u8", False, b"\xff" * 16))
@example(images=npy_bytes([2, 0, 8, 3], "|u1", False, b""), labels=npy_bytes([2], "<i8", False, bytes(16)))
@example(images=BROKEN_HEADER, labels=UNCLOSED_HEADER)
@example(
    images=zip_of({"images.npy": npy_bytes([1, 8, 8, 3], "|u1", False, bytes(192))}),  # an .npz given as .npy
    labels=npy_bytes([1], "<i8", False, bytes(8)),
)
def test_npy_reader_on_arbitrary_arrays(scratch: Path, images: bytes, labels: bytes) -> None:
    (scratch / "x.npy").write_bytes(images)
    (scratch / "y.npy").write_bytes(labels)
    expect_data_error_or_images(lambda: NpyImages(scratch / "x.npy", "data.test", scratch / "y.npy"))


@FEW
@given(
    images=npy_files,
    labels=npy_files,
    meta=st.one_of(st.none(), st.text(max_size=40), st.builds(lambda v: json.dumps({"severities": v}), values)),
    severity=st.integers(1, 5),
)
def test_precomputed_corruption_reader_on_arbitrary_arrays(
    scratch: Path, images: bytes, labels: bytes, meta, severity: int
) -> None:
    folder = fresh(scratch / "cifar-c")
    (folder / "fog.npy").write_bytes(images)
    (folder / "labels.npy").write_bytes(labels)
    if meta is not None:
        (folder / "prunegate-c.json").write_text(meta)
    expect_data_error_or_images(lambda: CorruptedArrays(folder, "fog", severity, "suite.corruptions.precomputed"))


@FUZZ
@given(records=st.integers(0, 3), extra=st.binary(max_size=40), fill=st.binary(min_size=1, max_size=64))
def test_cifar_binary_reader_on_arbitrary_bytes(scratch: Path, records: int, extra: bytes, fill: bytes) -> None:
    path = scratch / "test_batch.bin"
    body = (fill * (3073 * records // len(fill) + 1))[: 3073 * records]
    path.write_bytes(body + extra)
    expect_data_error_or_images(lambda: Cifar10Binary(path, "data.test"))


def picture(fmt: str, mode: str = "RGB", frames: int = 1) -> bytes:
    rng = np.random.default_rng(len(fmt) + frames)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).convert(mode) for _ in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, **({"save_all": True, "append_images": images[1:]} if frames > 1 else {}))
    return buffer.getvalue()


SEEDS = {  # suffix -> valid files of that format to mutate
    ".png": [
        picture("PNG"),
        picture("PNG", "LA"),
        picture("PNG", "P"),
        picture("PNG", "I;16"),
        picture("PNG", "1"),
        picture("PNG", frames=3),
    ],  # APNG
    ".jpg": [
        picture("JPEG"),
        picture("JPEG", "L"),
        picture("JPEG", "CMYK"),
        picture("GIF", frames=3),
    ],  # decoded by its content, whatever its name
    ".gif": [picture("GIF"), picture("GIF", frames=3)],
    ".bmp": [picture("BMP"), picture("BMP", "P")],
    ".webp": [picture("WEBP"), picture("WEBP", frames=3)],
    ".tiff": [picture("TIFF"), picture("TIFF", "I;16"), picture("TIFF", frames=3)],
}


def image_folder(scratch: Path, suffix: str, raw: bytes) -> Path:
    folder = fresh(scratch / "images")
    (folder / "cls").mkdir()
    (folder / "cls" / f"a{suffix}").write_bytes(raw)
    (folder / "cls" / f"b_1{suffix}").write_bytes(raw)
    return folder


@pytest.mark.parametrize("suffix", sorted(SEEDS))
def test_every_seed_image_decodes_to_8_bit_rgb(scratch: Path, suffix: str) -> None:
    for raw in SEEDS[suffix]:
        images = ImageFolder(image_folder(scratch, suffix, raw), "data.test")
        pictures, _ = images.read([0], BIG)
        assert pictures[0].dtype == torch.uint8 and pictures[0].shape == (6, 7, 3)
        read_all(images)


def png_with_filter(filter_type: int) -> bytes:
    """A 7 x 6 RGB PNG whose scanlines all use `filter_type` (0-4 are PNG's filters)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(bytes([filter_type]) + bytes(range(21)) for _ in range(6))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 6, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_png_with_a_bad_filter_byte_is_a_data_error_not_a_crash(scratch: Path) -> None:
    """torchvision 0.29's decode_png dies with a segmentation fault on this file ("libpng error:
    bad adaptive filter value"): the process is gone, no error boundary can catch it."""
    good = ImageFolder(image_folder(scratch, ".png", png_with_filter(0)), "data.test")
    assert good.read([0], BIG)[0][0][0, :, 0].tolist() == list(range(0, 21, 3))
    bad = ImageFolder(image_folder(scratch, ".png", png_with_filter(7)), "data.test")
    with pytest.raises(DataError, match="cannot decode image"):
        bad.read([0], BIG)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_images_are_scaled_to_8_bits_not_clipped(scratch: Path, fmt: str) -> None:
    deep = np.full((6, 7), 60000, np.uint16)
    buffer = io.BytesIO()
    PIL.Image.fromarray(deep).save(buffer, format=fmt)
    images = ImageFolder(image_folder(scratch, f".{fmt.lower()}", buffer.getvalue()), "data.test")
    assert images.read([0], BIG)[0][0].unique().tolist() == [round(60000 * 255 / 65535)]  # not 255: white


def test_float_images_of_no_stated_range_are_refused(scratch: Path) -> None:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((6, 7), 0.5, np.float32)).save(buffer, format="TIFF")
    images = ImageFolder(image_folder(scratch, ".tiff", buffer.getvalue()), "data.test")
    with pytest.raises(DataError, match="no defined range"):
        images.read([0], BIG)


def test_animated_images_are_read_as_their_first_frame(scratch: Path) -> None:
    frames = [PIL.Image.new("RGB", (7, 6), (200, 10 * i, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    images = ImageFolder(image_folder(scratch, ".gif", buffer.getvalue()), "data.test")
    first = images.read([0], BIG)[0][0]
    assert first.shape == (6, 7, 3) and abs(int(first[0, 0, 0]) - 200) <= 4 and int(first[0, 0, 1]) <= 4


@FUZZ
@given(suffix=st.sampled_from(sorted(SEEDS)), raw=st.binary(max_size=300))
def test_image_folder_on_arbitrary_bytes(scratch: Path, suffix: str, raw: bytes) -> None:
    folder = image_folder(scratch, suffix, raw)
    expect_data_error_or_images(lambda: ImageFolder(folder, "data.test"))
    expect_data_error_or_images(lambda: FlatImageFolder(folder / "cls", "data.test"))


@FUZZ
@given(data=st.data())
def test_image_folder_on_damaged_images(scratch: Path, data) -> None:
    suffix = data.draw(st.sampled_from(sorted(SEEDS)), label="suffix")
    seed = data.draw(st.sampled_from(SEEDS[suffix]), label="seed")
    folder = image_folder(scratch, suffix, mutate_bytes(data, seed))
    expect_data_error_or_images(lambda: ImageFolder(folder, "data.test"))


# --- the report envelope -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(tmp_path_factory, colour_net, colour_dataset, save_torchscript, write_npz, write_policy):
    """(key, a signed report's text) from a real `prunegate check`."""
    from prunegate.cli import main

    folder = tmp_path_factory.mktemp("signed")
    images, labels = colour_dataset(6)
    write_npz(folder / "data.npz", images, labels)
    save_torchscript(colour_net(), folder / "dense.pt")
    save_torchscript(colour_net(jitter=0.1, seed=1), folder / "pruned.pt")
    policy = write_policy(folder / "policy.yaml")
    key = keys.generate()
    (folder / "key.pem").write_bytes(keys.private_pem(key, None))
    (folder / "key.pub").write_bytes(keys.public_pem(key.public_key()))
    assert main(
        ["check", "-p", str(policy), "-o", str(folder / "report.json"), "--key", str(folder / "key.pem"), "-q"]
    ) in (0, 1)
    return key, (folder / "report.json").read_text(), folder


def envelope_outcome(text: str, public_key) -> None:
    """parse -> read -> verify: each step succeeds, or fails the way the CLI expects."""
    try:
        data = parse_envelope(text, "r.json")
    except ReportError:
        return
    try:
        read_envelope(text, "r.json")
    except ReportError:
        pass
    result = verify_envelope(data, public_key)
    assert isinstance(result, Verification)
    if result.ok:  # what `prunegate verify` then reads must be there
        statement = result.statement
        roles = {s["annotations"]["role"]: s["digest"]["sha256"] for s in statement["subject"]}
        assert set(roles) == {"dense", "pruned"}
        predicate = statement["predicate"]
        assert predicate["verdict"] in ("pass", "fail")
        assert isinstance(predicate["policy"]["name"], str) and isinstance(predicate["timing"]["started"], str)
    else:
        assert result.failure


@FUZZ
@given(text=st.text(max_size=300))
@example(text="[" * 5000 + "]" * 5000)
@example(text='{"payloadType": "x", "payload": "' + base64.b64encode(b"[" * 5000).decode() + '", "signatures": []}')
@example(text='{"payloadType": "x", "payload": "", "signatures": [], "payload": 5}')
@example(text='{"payloadType": 5, "payload": "e30=", "signatures": [{"sig": 7, "keyid": []}, null, "x"]}')
@example(text="NaN")
def test_envelope_parser_on_arbitrary_text(signed, text: str) -> None:
    envelope_outcome(text, signed[0].public_key())


@FUZZ
@given(data=st.data())
def test_envelope_parser_on_damaged_text(signed, data) -> None:
    key, text, _ = signed
    damaged = mutate_bytes(data, text.encode()).decode("utf-8", errors="replace")
    envelope_outcome(damaged, key.public_key())


@FUZZ
@given(data=st.data())
def test_envelope_parser_on_edited_envelopes(signed, data) -> None:
    key, text, _ = signed
    envelope_outcome(json.dumps(mutate(data, json.loads(text))), key.public_key())


@FUZZ
@given(data=st.data())
@example(data=None)  # replaced below by the statement itself, unedited
def test_verification_of_signed_but_malformed_statements(signed, data) -> None:
    """A payload signed by the right key is trusted only as far as it is a prunegate statement:
    the signer's own tool may have written anything."""
    key, text, _ = signed
    statement = json.loads(base64.b64decode(json.loads(text)["payload"]))
    edited = statement if data is None else mutate(data, statement)
    payload = json.dumps(edited, allow_nan=True).encode()
    envelope_outcome(json.dumps(sign(payload, key)), key.public_key())


@pytest.mark.parametrize(
    "subject",
    [
        5,
        "dp",
        [1, 2],
        [{"annotations": []}, {"annotations": {"role": ["dense"]}}],
        [
            {"annotations": {"role": "dense"}, "digest": "ab"},
            {"annotations": {"role": "pruned"}, "digest": {"sha256": 1}},
        ],
    ],
)
def test_signed_statements_with_malformed_subjects_fail_verification(signed, subject) -> None:
    key, text, _ = signed
    statement = json.loads(base64.b64decode(json.loads(text)["payload"]))
    statement["subject"] = subject
    result = verify_envelope(sign(json.dumps(statement).encode(), key), key.public_key())
    assert not result.ok and "subjects" in result.failure


@settings(FEW, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_verify_and_report_show_never_crash_on_edited_reports(signed, data, capsys) -> None:
    from prunegate.cli import main

    key, text, folder = signed
    edited = mutate(data, json.loads(text))
    if data.draw(st.booleans(), label="edit the payload"):
        statement = json.loads(base64.b64decode(json.loads(text)["payload"]))
        edited = sign(json.dumps(mutate(data, statement)).encode(), key)
    path = folder / "edited.json"
    path.write_text(json.dumps(edited))
    assert main(["verify", str(path), "--key", str(folder / "key.pub")]) in (0, 1, 2)
    assert main(["report", "show", str(path)]) in (0, 2)
    assert main(["report", "show", "--json", str(path)]) in (0, 2)
    capsys.readouterr()


# --- issue 13: JSON that repeats a key; control characters in what is printed ---------------------

from prunegate.errors import printable  # noqa: E402

HOSTILE_CHARS = [
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x07",
    "\x1b",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\x9b",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u2066",
    "[bold red]",
    "[/]",
    "error: ",
    "a",
    " ",
    "/",
    "é",
]
hostile_text = st.lists(st.sampled_from(HOSTILE_CHARS), min_size=1, max_size=6).map("".join)
UNPRINTABLE = [
    chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
]


def one_clean_line(text: str) -> bool:
    return len(text.splitlines()) <= 1 and not any(c in text for c in UNPRINTABLE)


@FUZZ
@given(text=st.one_of(st.text(max_size=40), hostile_text))
def test_printable_leaves_one_line_without_controls_and_is_idempotent(text: str) -> None:
    shown = printable(text)
    assert one_clean_line(shown) and printable(shown) == shown
    if one_clean_line(text):
        assert shown == text  # what is printable already is left alone


def objects_of(node, prefix=()) -> list[tuple]:
    """The locations of every JSON object in `node`."""
    return [p for p in paths_of(node, prefix) if isinstance(_at(node, p), dict)]


def _at(node, where: tuple):
    for part in where:
        node = node[part]
    return node


def dumps_repeating(node, where: tuple, key: str, value, first: bool, here: tuple = ()) -> str:
    """JSON of `node` in which the object at `where` names `key` twice: `value` first (a forgery
    ahead of the genuine value, which Python's json would keep) or last."""
    if isinstance(node, dict):
        pairs = [(k, dumps_repeating(v, where, key, value, first, here + (k,))) for k, v in node.items()]
        if here == where:
            extra = (key, json.dumps(value))
            if key not in node:
                pairs.append((key, json.dumps(value)))
            pairs.insert(0 if first else len(pairs), extra)
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in pairs) + "}"
    if isinstance(node, list):
        items = (dumps_repeating(v, where, key, value, first, here + (i,)) for i, v in enumerate(node))
        return "[" + ", ".join(items) + "]"
    return json.dumps(node)


json_values = st.recursive(  # what JSON can hold: no NaN or infinities (those are refused on their own)
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def repeated_key(data, document) -> tuple[str, str]:
    """(JSON text of `document` with one object repeating a key, that key)."""
    where = data.draw(st.sampled_from(objects_of(document)), label="object")
    existing = list(_at(document, where))
    key = data.draw(
        st.sampled_from(existing)
        if existing and data.draw(st.booleans(), label="existing key")
        else st.text(max_size=6),
        label="key",
    )
    text = dumps_repeating(
        document,
        where,
        key,
        data.draw(json_values, label="forged value"),
        data.draw(st.booleans(), label="forgery first"),
    )
    return text, key


@FUZZ
@given(data=st.data())
def test_an_envelope_that_repeats_a_key_is_unreadable(signed, data) -> None:
    key, text, _ = signed
    doubled, repeated = repeated_key(data, json.loads(text))
    for read in (parse_envelope, read_envelope):
        with pytest.raises(ReportError) as caught:
            read(doubled, "r.json")
        assert str(caught.value).startswith("r.json: ")
        assert printable(f"the envelope repeats the key {repeated!r}") in str(caught.value)


@settings(FEW, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_signed_payload_that_repeats_a_key_is_unreadable(signed, data, capsys) -> None:
    """The signature over such a payload is fine; what it says is not one thing: exit 2, one line."""
    from prunegate.cli import main

    key, text, folder = signed
    statement = json.loads(base64.b64decode(json.loads(text)["payload"]))
    doubled, repeated = repeated_key(data, statement)
    envelope_text = json.dumps(sign(doubled.encode(), key))
    with pytest.raises(ReportError) as caught:
        parse_envelope(envelope_text, "r.json")
    assert printable(f"the payload repeats the key {repeated!r}") in str(caught.value)
    path = folder / "doubled.json"
    path.write_text(envelope_text)
    capsys.readouterr()
    for argv in (["verify", str(path), "--key", str(folder / "key.pub")], ["report", "show", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and one_clean_line(err.rstrip("\n"))


@settings(FEW, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@example(data=None)  # the rich policy with a hostile rule name, which validates
def test_control_characters_in_policy_values_never_break_a_line(scratch: Path, data, capsys) -> None:
    """A value or a key of the policy full of control characters, line breaks, bidi overrides and
    markup: `policy validate` says so in one clean line on stderr, or validates it (exit 0 or 2)."""
    from prunegate.cli import main

    document = json.loads(json.dumps(RICH_POLICY))
    if data is None:
        document["gate"]["rules"][0]["name"] = "a\x1b[2Jb [bold red]x[/]\u202e"
    else:
        where = data.draw(st.sampled_from([p for p in paths_of(document) if p]), label="where")
        parent = _at(document, where[:-1])
        if isinstance(parent, dict) and data.draw(st.booleans(), label="as a key"):
            parent[data.draw(hostile_text, label="key")] = 1
        else:
            parent[where[-1]] = data.draw(hostile_text, label="value")
    path = scratch / "hostile.yaml"
    path.write_text(yaml.safe_dump(document))
    capsys.readouterr()
    code = main(["policy", "validate", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    assert one_clean_line(err.rstrip("\n")) and one_clean_line(out.rstrip("\n"))
    assert (code == 0) == (err == "")


# --- output paths (issue 13): every collision refused, nothing left behind ----------------------

path_parts = st.sampled_from(
    [
        "policy.yaml",
        "data",
        "data/img.png",
        "data/sub/x.json",
        "model.pt",
        "out.json",
        "out.html",
        "link",
        "link/x",
        "missing/out.json",
        "..",
        ".",
        "",
        "a\nb.json",
        "\x1b[2J.md",
        "out.json/",
    ]
)


@FUZZ
@given(
    chosen=st.dictionaries(
        st.sampled_from(["--report", "--html", "--markdown", "--junit"]), st.one_of(st.none(), path_parts), max_size=4
    )
)
def test_output_paths_are_checked_or_refused_never_crash(scratch: Path, chosen: dict) -> None:
    """Any mix of output paths over the run's inputs: accepted (each a distinct, writable file
    that is not an input) or a PrunegateError; the folder holds exactly what it held."""
    from prunegate.cli.outputs import check_outputs

    folder = fresh(scratch / "outputs")
    (folder / "policy.yaml").write_text("x")
    (folder / "model.pt").write_bytes(b"m")
    (folder / "data").mkdir()
    (folder / "data" / "img.png").write_bytes(b"p")
    (folder / "link").symlink_to(folder / "data")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    inputs = {
        "the policy": folder / "policy.yaml",
        "models.dense": folder / "model.pt",
        "data.test.path": folder / "data",
    }
    outputs = {option: (folder / part if part is not None else None) for option, part in chosen.items()}
    try:
        accepted = check_outputs(outputs, inputs)
    except PrunegateError:
        accepted = None
    if accepted is not None:
        real = [p.resolve() for p in accepted.values()]
        assert len(set(real)) == len(real)
        assert not any(r == i.resolve() or i.resolve() in r.parents for r in real for i in inputs.values())
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
