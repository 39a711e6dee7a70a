"""Hostile and malformed input: one clear error, exit 2, nothing written, no traceback.

Part 2 of the "Reliability and security" issue. Three layers:

* Property tests (hypothesis) drive the loaders in-process with generated
  input: :meth:`TrainConfig.from_dict`, :meth:`TrainConfig.from_yaml`, the
  search-space loader, and ``load_dataset`` for ``npz:`` and ``folder:``.
  Whatever comes in, only :class:`~caetune.InputError` (or a valid result)
  comes out; an accepted input must also be usable (a config round-trips, a
  space builds its Optuna distributions and every corner of it is a valid
  config, a dataset has the documented dtype and shape).
* Named hostile cases through ``caetune.cli.main``: exit 2, one stderr line
  naming the field at fault, and the working folder unchanged.
* ``caetune search`` cases and a few others in a real subprocess (slow):
  exit 2, one line, no ``Traceback``, nothing written. They pass
  ``--address`` of a closed port, so an input wrongly accepted stops there
  instead of starting Ray, and the test sees which field the error names.

A known gap would be marked ``xfail(strict=True)`` with what to change, so
that it flips to a failure (XPASS) once fixed; none is open in this file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from caetune import InputError
from caetune.cli import main
from caetune.models import TrainConfig, load_dataset
from caetune.models._config import MAX_SEED
from caetune.search._space import space_from_dict

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
# Function-scoped tmp_path is fine here: every example writes its own files before reading them.
PROPERTY = dict(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


# --- strategies -----------------------------------------------------------------------------------

HOSTILE_NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=300),  # the region where valid values live
    st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30)]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e-3, 1e308, -0.0, float("nan"), float("inf")]),
)
HOSTILE_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    HOSTILE_NUMBERS,
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "model1",
            "relu",
            "cpu",
            "mnist-10k",
            "../../etc/passwd",
            "/abs/x",
            "npz:",
            "folder:",
            "a\nb",
            "nan",
            "1e999",
            "\0",
        ]
    ),
    st.binary(max_size=6),
)
HOSTILE_VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD_KEYS = st.sampled_from(FIELDS) | st.text(max_size=10)


@st.composite
def near_valid_configs(draw) -> dict:
    """A sound config with a few fields replaced by hostile values (and maybe a stray key)."""
    values = TrainConfig(subset=100).to_dict()
    for name in draw(
        st.lists(st.sampled_from(FIELDS), max_size=draw(st.sampled_from([0, 1, 1, 2])), unique=True)
    ):
        values[name] = draw(HOSTILE_VALUES)
    if draw(st.integers(0, 9)) == 0:
        values[draw(st.text(max_size=8))] = draw(HOSTILE_SCALARS)
    return values


CONFIG_MAPPINGS = st.dictionaries(FIELD_KEYS, HOSTILE_VALUES, max_size=8) | near_valid_configs()


def yaml_documents() -> st.SearchStrategy[bytes]:
    """Whole YAML files: well-formed ones of hostile values, and text barely YAML or not at all."""
    mappings = CONFIG_MAPPINGS
    valid = yaml.safe_dump(TrainConfig(subset=100).to_dict()).encode()
    return st.one_of(
        mappings.map(lambda d: yaml.safe_dump(d).encode()),
        HOSTILE_VALUES.map(lambda v: yaml.safe_dump(v).encode()),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),  # a config cut short
        st.integers(1, 1500).map(
            lambda n: b"n_neurons: " + b"[" * n + b"1" + b"]" * n
        ),  # nested too deeply
        st.sampled_from(
            [
                b"!!python/object/apply:os.system ['touch PWNED']",
                b"a: &a [*a]",
                b"a: &x 1\nb: *y",
                b"? [1, 2]\n: 3",
                b"n_neurons: 1.0e+400",
                b"\xff\xfe\x00garbage",
                b"- 1\n- 2",
                b"n_neurons: !!binary aGk=",
                b"dataset: 2020-01-01",
                b"%YAML 9.9\n---\na: 1",
                b"export: 5",
                b"{" * 10,
            ]
        ),
        st.text(max_size=60).map(str.encode),
        st.binary(max_size=60),
    )


def space_documents() -> st.SearchStrategy[object]:
    """Search spaces: the right shape with hostile contents, and the wrong shape."""
    range_spec = st.fixed_dictionaries(
        {"low": HOSTILE_NUMBERS, "high": HOSTILE_NUMBERS},
        optional={
            "log": HOSTILE_VALUES | st.booleans(),
            "step": HOSTILE_NUMBERS,
            "spread": HOSTILE_VALUES,
        },
    )
    param = st.one_of(range_spec, st.lists(HOSTILE_SCALARS, min_size=0, max_size=4), HOSTILE_VALUES)
    searchable = st.sampled_from(
        ["n_neurons", "n_maps", "n_epochs", "lr", "batch_size", "model", "activation"]
    )
    space = st.fixed_dictionaries(
        {},
        optional={
            "description": HOSTILE_VALUES,
            "fixed": st.dictionaries(FIELD_KEYS, HOSTILE_VALUES, max_size=3) | HOSTILE_VALUES,
            "params": st.dictionaries(searchable | FIELD_KEYS, param, max_size=3) | HOSTILE_VALUES,
            "start": st.lists(
                st.dictionaries(searchable, HOSTILE_NUMBERS | HOSTILE_SCALARS, max_size=3),
                max_size=2,
            ),
            "extra": HOSTILE_VALUES,
        },
    )
    # Mostly sound, with a user's boundary mistakes (low 0, low > high, a fractional or zero step).
    int_range = st.fixed_dictionaries(
        {
            "low": st.integers(1, 40) | st.integers(1, 40) | st.integers(-2, 0),
            "high": st.integers(40, 5000) | st.integers(40, 5000) | st.integers(-2, 39),
        },
        optional={
            "log": st.booleans(),
            "step": st.sampled_from([1, 2, 3.0, 1, 0.5, 0, -1, float("nan")]),
        },
    )
    float_range = st.fixed_dictionaries(
        {"low": st.floats(-1e-3, 0.1), "high": st.floats(1e-4, 1.0)},
        optional={"log": st.booleans(), "step": st.sampled_from([1e-3, 0.5, 0, float("inf")])},
    )
    sound = st.fixed_dictionaries(
        {
            "params": st.fixed_dictionaries(
                {"n_neurons": int_range},
                optional={
                    "n_maps": int_range,
                    "n_epochs": int_range,
                    "lr": float_range,
                    "model": st.lists(
                        st.sampled_from(["model1", "model2", "model3"]), min_size=1, max_size=2
                    ),
                    "activation": st.lists(
                        st.sampled_from(["relu", "tanh", "gelu"]), min_size=1, max_size=2
                    ),
                },
            )
        },
        optional={
            "fixed": st.fixed_dictionaries(
                {},
                optional={
                    "dataset": st.sampled_from(["mnist-10k", "", "npz:x.npz"]),
                    "batch_size": st.integers(-1, 64),
                },
            ),
            "start": st.lists(st.fixed_dictionaries({"n_neurons": st.integers(0, 60)}), max_size=2),
            "description": st.text(max_size=10),
        },
    )
    return space | sound | sound | HOSTILE_VALUES


# --- in-process properties ------------------------------------------------------------------------


def accepted_or_input_error(build):
    """``build()``, or ``None`` when it raised :class:`InputError`; hypothesis counts each kind."""
    try:
        value = build()
    except InputError:
        event("InputError")
        return None
    event("accepted")
    return value


def check_config(config: TrainConfig) -> None:
    """What an accepted config promises: typed, in range, and the same after a YAML round trip."""
    for name in ("n_neurons", "n_maps", "n_epochs", "batch_size"):
        value = getattr(config, name)
        assert type(value) is int and value >= 1, (name, value)
    for name in ("seed", "split_seed"):
        assert type(getattr(config, name)) is int and 0 <= getattr(config, name) <= MAX_SEED
    assert 0 < config.val_fraction < 1 and 0 < config.lr < float("inf")
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


@settings(max_examples=400, **PROPERTY)
@given(values=CONFIG_MAPPINGS)
def test_config_from_any_mapping_is_valid_or_an_input_error(values):
    config = accepted_or_input_error(lambda: TrainConfig.from_dict(values))
    if config is not None:
        check_config(config)


@settings(max_examples=200, **PROPERTY)
@given(document=yaml_documents())
def test_config_from_any_yaml_file_is_valid_or_an_input_error(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_bytes(document)
    config = accepted_or_input_error(lambda: TrainConfig.from_yaml(path))
    if config is not None:
        check_config(config)


@settings(max_examples=400, **PROPERTY)
@given(document=space_documents())
def test_space_from_any_document_is_usable_or_an_input_error(document):
    space = accepted_or_input_error(
        lambda: space_from_dict(document, name="hostile", source="hostile.yaml")
    )
    if space is None:
        return
    # "A space can only propose configs that train": Optuna accepts it, and every corner and start
    # point is valid.
    space.distributions()
    corners = {}
    for name, param in space.params.items():
        corners[name] = (
            list(param.choices) if param.kind == "categorical" else [param.low, param.high]
        )
    for pick in (0, -1):
        check_config(space.train_config({name: values[pick] for name, values in corners.items()}))
    for point in space.start:
        check_config(space.train_config(point))
    again = space_from_dict(space.to_dict(), name="hostile", source="again")
    assert again.params == space.params
    try:
        space.capped(1)
    except InputError:
        pass


@settings(max_examples=100, **PROPERTY)
@given(document=yaml_documents() | space_documents().map(lambda d: yaml.safe_dump(d).encode()))
def test_space_from_any_yaml_file_is_usable_or_an_input_error(tmp_path, document):
    from caetune.search._space import load_space

    path = tmp_path / "space.yaml"
    path.write_bytes(document)
    accepted_or_input_error(lambda: load_space(str(path)).distributions())


NPZ_DTYPES = st.sampled_from(["u1", ">u1", "i1", "u2", "i8", "f4", "f8", "?", "c8", "U1"])


@st.composite
def npz_files(draw) -> bytes:
    """An .npz as bytes: arrays of any dtype and shape (NaN included), or a damaged archive."""
    layout = draw(st.sampled_from(["documented", "edges", "any"]))
    if layout == "documented":  # what load_dataset promises to read: it must load
        shape = (draw(st.integers(2, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        shape += draw(st.sampled_from([(), (1,), (3,)]))
        dtype = "u1"
    elif layout == "edges":
        shape = (draw(st.integers(0, 6)), draw(st.integers(0, 6)), draw(st.integers(0, 6)))
        shape += draw(st.sampled_from([(), (1,), (2,), (3,), (4,)]))
        dtype = draw(st.sampled_from(["u1", "u1", "f4"]))
    else:
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))
        dtype = draw(NPZ_DTYPES)
    images = draw(hnp.arrays(dtype, shape))
    if layout == "documented":
        arrays = {"images": images}
        if draw(st.booleans()):
            arrays["labels"] = draw(
                hnp.arrays(draw(st.sampled_from(["i8", "u1", "i4"])), shape[:1])
            )
        np.savez(buffer := io.BytesIO(), **arrays)
        return buffer.getvalue()
    arrays = {draw(st.sampled_from(["images", "images", "images", "image", "labels"])): images}
    if draw(st.booleans()):
        label_shape = draw(st.sampled_from([shape[:1], (), (7,), shape]))
        arrays["labels"] = draw(hnp.arrays(draw(NPZ_DTYPES), label_shape))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    elif damage == "garbage":
        data = draw(st.binary(max_size=200))
    return data


@settings(max_examples=250, **PROPERTY)
@given(data=npz_files())
def test_npz_of_any_content_loads_as_documented_or_is_an_input_error(tmp_path, data):
    path = tmp_path / "data.npz"
    path.write_bytes(data)
    loaded = accepted_or_input_error(lambda: load_dataset(f"npz:{path}", val_fraction=0.5))
    if loaded is None:
        return
    with np.load(path) as archive:
        images = archive["images"]
    assert images.dtype == np.uint8 and not np.isnan(images.astype(float)).any()
    for split in (loaded.train, loaded.val):
        assert str(split.dtype) == "torch.uint8"
        assert split.ndim == 4 and split.shape[1] in (1, 3) and split.is_contiguous()
    assert len(loaded.train) + len(loaded.val) == images.shape[0]


def _image_bytes(fmt: str, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_IMAGES = {
    suffix: _image_bytes(fmt, i)
    for i, (suffix, fmt) in enumerate(
        [(".png", "PNG"), (".jpg", "JPEG"), (".bmp", "BMP"), (".gif", "GIF"), (".webp", "WEBP")]
    )
}
# Entries that can never decode: each must make the whole load an InputError.
NEVER_IMAGES = ("empty", "text.txt", "fifo", "dangling-link")
ENTRY_KINDS = ("valid",) * 8 + ("truncated", "random", "hidden", "folder.png", *NEVER_IMAGES)


@st.composite
def image_folders(draw) -> list[tuple[str, str, bytes]]:
    """A folder's entries: (kind, relative name, bytes): valid, damaged and impossible 'images'."""
    entries = []
    for index in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(ENTRY_KINDS))
        suffix = draw(st.sampled_from(sorted(VALID_IMAGES)))
        data = VALID_IMAGES[suffix]
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "random":
            data = draw(st.binary(max_size=64))
        elif kind == "empty":
            data = b""
        label = draw(st.sampled_from(["", "cats/", "dogs/"]))
        name = {"text.txt": f"notes{index}.txt", "hidden": f".hidden{index}{suffix}"}.get(
            kind, f"img{index}{suffix}"
        )
        entries.append((kind, label + name, data))
    return entries


@pytest.mark.timeout(120)  # a FIFO once made the reader wait forever
@settings(max_examples=120, **PROPERTY)
@given(entries=image_folders())
def test_folder_of_any_files_loads_or_is_an_input_error(tmp_path, entries):
    root = Path(tempfile.mkdtemp(dir=tmp_path))  # tmp_path is shared by the examples
    for kind, name, data in entries:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dangling-link":
            path.symlink_to(root / "nowhere.png")
        elif kind == "folder.png":
            path.mkdir()
        else:
            path.write_bytes(data)
    loaded = accepted_or_input_error(
        lambda: load_dataset(f"folder:{root}", image_size=8, val_fraction=0.5)
    )
    if loaded is None:
        return
    assert not {kind for kind, _, _ in entries} & set(NEVER_IMAGES)
    assert (
        loaded.train.shape[1:] in ((1, 8, 8), (3, 8, 8))
        and str(loaded.train.dtype) == "torch.uint8"
    )


# --- named cases through the command line, in-process ---------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its type, size and mtime: any write shows."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(folder))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def error_field(line: str, command: str) -> str:
    """The field part of ``caetune CMD: error: FIELD: expected``."""
    prefix = f"caetune {command}: error: "
    assert line.startswith(prefix), line
    return line[len(prefix) :].split(": ", 1)[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder as the cwd, and a folder of hostile inputs beside it."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return cwd, inputs


def hostile_inputs(inputs: Path) -> None:
    """Writes every hostile file the named cases refer to."""
    (inputs / "malformed.yaml").write_text("n_neurons: [1,\n")
    (inputs / "deep.yaml").write_text("n_neurons: " + "[" * 5000)
    (inputs / "types.yaml").write_text("n_neurons: many\n")
    (inputs / "unknown.yaml").write_text("n_nurons: 4\n")
    (inputs / "list.yaml").write_text("- 1\n- 2\n")
    (inputs / "tag.yaml").write_text("n_neurons: !!python/object/apply:os.system ['touch PWNED']\n")
    (inputs / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    os.mkfifo(inputs / "fifo.yaml")
    np.savez(inputs / "nan.npz", images=np.full((20, 8, 8), np.nan, np.float32))
    np.savez(inputs / "shape.npz", images=np.zeros((20, 8, 8, 2), np.uint8))
    np.savez(inputs / "tiny.npz", images=np.zeros((20, 2, 2), np.uint8))
    np.savez(
        inputs / "labels.npz", images=np.zeros((20, 8, 8), np.uint8), labels=np.zeros(3, np.int64)
    )
    (inputs / "notzip.npz").write_bytes(b"PK\x03\x04 not really")
    images = inputs / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(VALID_IMAGES[".png"])
    (images / "4.png").write_bytes(VALID_IMAGES[".png"][:60])  # header intact, pixels cut off
    text = inputs / "text-images"
    text.mkdir()
    (text / "a.png").write_bytes(VALID_IMAGES[".png"])
    (text / "b.png").write_text("not an image")
    (inputs / "a-file").write_text("x")


TINY = [
    "--subset",
    "100",
    "--n-epochs",
    "1",
    "--n-neurons",
    "4",
    "--n-maps",
    "2",
    "--batch-size",
    "50",
]

# (case, argv after "train", the field the one error line must name). "{in}" is the inputs folder.
TRAIN_CASES = [
    ("malformed yaml", ["--config", "{in}/malformed.yaml"], "config"),
    ("deeply nested yaml", ["--config", "{in}/deep.yaml"], "config"),
    ("wrong type", ["--config", "{in}/types.yaml"], "n_neurons"),
    ("unknown key", ["--config", "{in}/unknown.yaml"], "n_nurons"),
    ("a list, not a mapping", ["--config", "{in}/list.yaml"], "config"),
    ("python tag", ["--config", "{in}/tag.yaml"], "config"),
    ("not utf-8", ["--config", "{in}/binary.yaml"], "config"),
    ("a fifo as config", ["--config", "{in}/fifo.yaml"], "config"),
    ("/dev/zero as config", ["--config", "/dev/zero"], "config"),
    ("a folder as config", ["--config", "{in}"], "config"),
    ("missing config", ["--config", "{in}/../../nope.yaml"], "config"),
    ("negative n_neurons", ["--n-neurons", "-5"], "n_neurons"),
    ("zero n_maps", ["--n-maps", "0"], "n_maps"),
    ("negative seed", ["--seed", "-1"], "seed"),
    ("seed beyond 64 bits", [*TINY, "--seed", str(2**64)], "seed"),
    ("split_seed beyond 64 bits", [*TINY, "--split-seed", str(2**70)], "split_seed"),
    ("nan lr", ["--lr", "nan"], "lr"),
    ("infinite lr", ["--lr", "inf"], "lr"),
    ("val_fraction 1", ["--val-fraction", "1"], "val_fraction"),
    (
        "huge n_neurons",
        ["--subset", "100", "--n-epochs", "1", "--n-neurons", str(10**11)],
        "n_neurons",
    ),
    ("huge n_maps", ["--subset", "100", "--n-epochs", "1", "--n-maps", str(10**8)], "n_maps"),
    ("huge image_size", [*TINY, "--image-size", str(10**6)], "image_size"),
    ("subset beyond the data", ["--subset", str(10**12)], "subset"),
    ("npz with NaN floats", [*TINY[2:], "--dataset", "npz:{in}/nan.npz"], "dataset"),
    ("npz with 2 channels", [*TINY[2:], "--dataset", "npz:{in}/shape.npz"], "dataset"),
    ("npz of 2x2 images", [*TINY[2:], "--dataset", "npz:{in}/tiny.npz"], "image_size"),
    ("npz labels of another length", [*TINY[2:], "--dataset", "npz:{in}/labels.npz"], "dataset"),
    ("npz not a zip", [*TINY[2:], "--dataset", "npz:{in}/notzip.npz"], "dataset"),
    ("npz path traversal", [*TINY[2:], "--dataset", "npz:{in}/../../../../etc/passwd"], "dataset"),
    ("folder with a truncated image", [*TINY[2:], "--dataset", "folder:{in}/images"], "dataset"),
    (
        "folder with a text file as .png",
        [*TINY[2:], "--dataset", "folder:{in}/text-images"],
        "dataset",
    ),
    ("folder that is /dev", [*TINY[2:], "--dataset", "folder:/dev"], "dataset"),
    ("unknown dataset", ["--dataset", "../../etc"], "dataset"),
    ("--out under a file", [*TINY, "--out", "{in}/a-file/run"], "--out"),
]


@pytest.mark.parametrize(
    "argv,field", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_refuses_hostile_input(work, capsys, argv, field):
    cwd, inputs = work
    hostile_inputs(inputs)
    before_inputs = snapshot(inputs)
    code = main(["train", *[a.replace("{in}", str(inputs)) for a in argv]])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert field in error_field(one_line(err), "train")
    assert snapshot(inputs) == before_inputs
    assert snapshot(cwd) == {}, "nothing may be written"
    assert not (cwd / "PWNED").exists()


def test_a_diverging_lr_ends_with_one_error_line_naming_lr(work, capsys):
    """Found mid-run, not up front: the progress line comes first, and what was written stays."""
    cwd, _ = work
    code = main(["train", *TINY, "--n-epochs", "3", "--lr", "1e30", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert error_field(last, "train") == "lr" and "try a smaller lr" in last
    assert {p.name for p in (cwd / "run").iterdir()} <= {"config.yaml", "metrics.json", "model.pt"}


def test_a_newline_in_a_file_name_still_gives_one_error_line(work, capsys):
    _, inputs = work
    code = main(["train", "--config", str(inputs / "no such\nconfig.yaml")])
    assert code == 2
    one_line(capsys.readouterr().err)


# --- hostile run folders for report and export ----------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[bytes, str]:
    """A real one-epoch Trainer checkpoint and its config.yaml, trained once for the module."""
    from caetune.models import Trainer, load_data

    config = TrainConfig(
        subset=100, image_size=12, n_neurons=4, n_maps=2, n_epochs=1, batch_size=50, device="cpu"
    )
    trainer = Trainer(config, load_data(config))
    trainer.fit()
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    trainer.save_checkpoint(path)
    return path.read_bytes(), config.to_yaml()


def make_run(
    root: Path,
    checkpoint: tuple[bytes, str],
    *,
    trial_id: str = "t0000",
    folder: Path | None = None,
) -> Path:
    """``root/runs/exp`` as a search lays it out, one complete trial (its files at ``folder``)."""
    run = root / "runs" / "exp"
    trial = folder or run / "trials" / trial_id
    trial.mkdir(parents=True)
    (trial / "model.pt").write_bytes(checkpoint[0])
    (trial / "config.yaml").write_text(checkpoint[1])
    run.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        [{"trial_id": trial_id, "status": "complete", "objective": 0.1, "val_mse": 0.1}]
    ).to_csv(run / "results.csv", index=False)
    return run


class _RunsCode:
    """Pickled into a checkpoint: unpickling it runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poison(run: Path, marker: Path, trial_id: str = "t0000") -> None:
    import torch

    path = run / "trials" / trial_id / "model.pt"
    state = torch.load(path, weights_only=False)  # the test's own file
    state["history"] = _RunsCode(marker)
    torch.save(state, path)


def test_report_of_a_sound_run_works(tmp_path, checkpoint, capsys):
    """The control for the hostile runs below: the same run, untouched, reports fine."""
    run = make_run(tmp_path, checkpoint)
    assert main(["report", str(run), "--top-k", "1", "--out", str(tmp_path / "report")]) == 0, (
        capsys.readouterr().err
    )
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("trial_id", ["../../evil", "/ABS/evil"])
def test_trial_ids_that_leave_the_run_are_refused(tmp_path, checkpoint, capsys, command, trial_id):
    outside = tmp_path / "outside"
    trial_id = trial_id.replace("/ABS", str(outside))
    # The trial's files exist where the id points, so only the id check can stop it.
    target = (
        (tmp_path / "runs" / "exp" / "trials" / trial_id)
        if not trial_id.startswith("/")
        else Path(trial_id)
    )
    run = make_run(tmp_path, checkpoint, trial_id=trial_id, folder=Path(os.path.normpath(target)))
    before = snapshot(tmp_path)
    flag = "--out" if command == "report" else "--to"
    code = main([command, str(run), "--top-k", "1", flag, str(tmp_path / "dest")])
    assert code == 2
    assert "not a folder name" in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_report_never_unpickles_code_from_a_run(tmp_path, checkpoint, capsys):
    run = make_run(tmp_path, checkpoint)
    marker = tmp_path / "PWNED"
    poison(run, marker)
    before = snapshot(tmp_path)
    code = main(["report", str(run), "--top-k", "1", "--out", str(tmp_path / "report")])
    assert code == 2
    assert "refused" in one_line(capsys.readouterr().err)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert snapshot(tmp_path) == before


def test_export_never_unpickles_code_from_a_run(tmp_path, checkpoint, capsys):
    run = make_run(tmp_path, checkpoint)
    marker = tmp_path / "PWNED"
    poison(run, marker)
    main(["export", str(run), "--top-k", "1", "--to", str(tmp_path / "dest")])
    capsys.readouterr()
    assert not marker.exists(), "the checkpoint's pickle ran code"


# --- caetune search and the real command line, in subprocesses ------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(argv: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "caetune.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SPACE = {
    "fixed": {"dataset": "mnist-10k", "subset": 120, "image_size": 12},
    "params": {"n_neurons": {"low": 4, "high": 16, "log": True}, "n_epochs": {"low": 1, "high": 1}},
}


# argv after "search" ({space}: a sound tiny space, {in}: the inputs folder), the field named.
SEARCH_CASES = [
    pytest.param(["--space", "{in}/malformed.yaml"], "--space", id="malformed space"),
    pytest.param(["--space", "{in}/deep.yaml"], "--space", id="deeply nested space"),
    pytest.param(["--space", "{in}/fifo.yaml"], "--space", id="a fifo as space"),
    pytest.param(["--space", "{in}/step.yaml"], "step", id="fractional step on an int"),
    pytest.param(["--space", "{space}", "--name", "../../etc"], "--name", id="name climbs out"),
    pytest.param(["--space", "{space}", "--name", "/tmp/x"], "--name", id="absolute name"),
    pytest.param(["--space", "{space}", "--name", "a/b"], "--name", id="name with a slash"),
    pytest.param(["--space", "{space}", "--resume", "../x"], "--name", id="resume climbs out"),
    pytest.param(
        ["--space", "{space}", "--run-root", "s3://bucket-a/runs/../x"],
        "--run-root",
        id="s3 key climbs out",
    ),
    pytest.param(
        ["--space", "{space}", "--run-root", "s3://AKIAFAKE:s3cr/et@bucket-a/x"],
        "--run-root",
        id="secret in s3 url",
    ),
    # The control: sound input gets as far as the closed --address; the cases above fail on theirs.
    pytest.param(["--space", "{space}"], "--address", id="sound input (control)"),
    pytest.param(
        ["--space", "{space}", "--name", "run\n"], "--name", id="name ending in a newline"
    ),
    pytest.param(["--space", "{in}/..yaml"], "--name", id="space file named ..yaml"),
    pytest.param(
        ["--space", "{space}", "--seed", str(2**40)], "--seed", id="seed beyond numpy's 32 bits"
    ),
    pytest.param(
        ["--space", "{space}", "--study-storage", "garbage"],
        "--study-storage",
        id="study storage that is no URL",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("argv,field", SEARCH_CASES)
def test_search_refuses_hostile_input_in_a_real_process(tmp_path, argv, field):
    cwd, inputs, home = tmp_path / "work", tmp_path / "inputs", tmp_path / "home"
    for folder in (cwd, inputs, home):
        folder.mkdir()
    hostile_inputs(inputs)
    (inputs / "step.yaml").write_text(
        yaml.safe_dump({"params": {"n_neurons": {"low": 4, "high": 16, "step": 0.5}}})
    )
    (inputs / "..yaml").write_text(yaml.safe_dump(SPACE))
    (inputs / "space.yaml").write_text(yaml.safe_dump(SPACE))
    argv = [
        a.replace("{in}", str(inputs)).replace("{space}", str(inputs / "space.yaml")) for a in argv
    ]
    if "--study-storage" not in argv:
        argv += [
            "--address",
            f"127.0.0.1:{closed_port()}",
        ]  # input wrongly accepted stops here, before Ray
    if "--run-root" not in argv:
        argv += ["--run-root", "runs"]
    before = snapshot(tmp_path)
    done = run_cli(["search", *argv], cwd, home)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert field in error_field(one_line(done.stderr), "search")
    assert "s3cr" not in done.stderr  # a secret given in a URL is never echoed
    assert snapshot(tmp_path) == before, "nothing may be written"


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,field",
    [
        (["train", "--config", "{in}/deep.yaml"], "config"),
        (["train", "--subset", "100", "--n-neurons", str(10**11)], "n_neurons"),
        (["train", *TINY, "--seed", str(2**64)], "seed"),
        (["train", *TINY[2:], "--dataset", "folder:{in}/images"], "dataset"),
        (["export", "{in}", "--to", "{in}/../dest"], "RUN"),
        (["report", "{in}/../../..", "--out", "x"], "RUN"),
    ],
    ids=[
        "deep yaml",
        "huge model",
        "huge seed",
        "truncated image",
        "export of no run",
        "report of no run",
    ],
)
def test_other_commands_in_a_real_process(tmp_path, argv, field):
    cwd, inputs, home = tmp_path / "work", tmp_path / "inputs", tmp_path / "home"
    for folder in (cwd, inputs, home):
        folder.mkdir()
    hostile_inputs(inputs)
    before = snapshot(tmp_path)
    done = run_cli([a.replace("{in}", str(inputs)) for a in argv], cwd, home)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert field in error_field(one_line(done.stderr), argv[0])
    assert snapshot(tmp_path) == before
