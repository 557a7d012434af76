"""Omniglot from torchvision's layout (folders or zips): the 1100 / 100 / 423 character split in
sorted order, rotations as classes (pixel-exact quarter turns), learn2learn's pixels, errors."""
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch

from fixtures_omniglot_cub import BACKGROUND, EVALUATION, omniglot_characters, write_omniglot
from episodes import EpisodeSampler
from episodes.sources import load_source
from episodes.sources.omniglot import SPLIT_CHARACTERS
from episodes.transforms import Normalise, train_transform

PER_CHARACTER = 2


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("omniglot"))
    return root, write_omniglot(root, per_character=PER_CHARACTER)


@pytest.fixture(scope="module")
def splits(tree):
    root, _ = tree
    return {s: load_source("omniglot", root, s) for s in ("train", "val", "test")}


def _sorted_characters():
    """The split order written independently of the reader: background sorted, then evaluation sorted."""
    out = []
    for half, alphabets in (("images_background", BACKGROUND), ("images_evaluation", EVALUATION)):
        out += sorted((half, a, f"character{j:02d}") for a in alphabets for j in range(1, alphabets[a] + 1))
    return out


def test_split_sizes_and_rule(splits):
    chars = _sorted_characters()
    assert len(chars) == 1623
    expected = {"train": chars[:1100], "val": chars[1100:1200], "test": chars[1200:]}
    for split, src in splits.items():
        n = len(expected[split])
        assert (len(src.classes), len(src)) == (4 * n, 4 * n * PER_CHARACTER)
        assert src.data.shape[1:] == (1, 28, 28) and src.data.dtype == torch.uint8
        assert src.mean == (0.0,) and src.std == (1.0,)
        first = SPLIT_CHARACTERS[split][0]
        assert src.classes.tolist() == list(range(4 * first, 4 * (first + n)))
        names = [src.class_names[int(c)] for c in src.classes]
        assert names == [f"{a}/{c}/rot{r:03d}" for _, a, c in expected[split] for r in (0, 90, 180, 270)]
        assert set(src.class_counts.tolist()) == {PER_CHARACTER}
    # all 964 background characters and the first 236 evaluation characters are meta-training ones
    train_val = {n.rsplit("/", 1)[0] for s in ("train", "val") for n in splits[s].class_names.values()}
    assert {f"{a}/{c}" for h, a, c in chars if h == "images_background"} <= train_val
    assert {n.split("/")[0] for n in splits["test"].class_names.values()} <= set(EVALUATION)
    assert splits["test"].class_names[4 * 1200] == "Gurmukhi/character42/rot000"
    ids = [set(s.classes.tolist()) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_pixels_match_learn2learns_pipeline(tree, splits):
    """Rotation 0 is torchvision's Resize(28, LANCZOS) + ToTensor + (1 - x) of each drawing
    (learn2learn's Omniglot transform), times 255."""
    from PIL import Image
    from torchvision import transforms
    pipeline = transforms.Compose([transforms.Resize(28, interpolation=transforms.InterpolationMode.LANCZOS),
                                   transforms.ToTensor(), lambda x: 1.0 - x])
    _, written = tree
    chars = _sorted_characters()
    src = splits["val"]
    for c in (1100, 1150, 1199):
        pngs = written[chars[c]]
        got = src.data[src.indices_by_class[4 * c]].float() / 255
        import io
        ref = torch.stack([pipeline(Image.open(io.BytesIO(p)).convert("L")) for p in pngs])
        assert ref.shape == got.shape
        assert torch.allclose(got, ref, atol=1e-6), float((got - ref).abs().max())


def test_rotations_are_exact_quarter_turns(splits):
    from PIL import Image
    src = splits["test"]
    for c in (1200, 1400, 1622):
        base = src.data[src.indices_by_class[4 * c]][:, 0].numpy()
        for r in (1, 2, 3):
            rot = src.data[src.indices_by_class[4 * c + r]][:, 0].numpy()
            np.testing.assert_array_equal(rot, np.rot90(base, k=r, axes=(1, 2)))
        # counter-clockwise, as PIL's rotate(90) (ProtoNet's rotations)
        quarter = np.stack([np.asarray(Image.fromarray(b).transpose(Image.Transpose.ROTATE_90)) for b in base])
        np.testing.assert_array_equal(src.data[src.indices_by_class[4 * c + 1]][:, 0].numpy(), quarter)


def test_zips_and_root_at_omniglot_py_give_the_same_data(tree, splits, tmp_path):
    root, _ = tree
    zroot = tmp_path / "z"
    base = zroot / "omniglot-py"
    base.mkdir(parents=True)
    for half in ("images_background", "images_evaluation"):       # torchvision's zips, built from the tree
        with zipfile.ZipFile(base / f"{half}.zip", "w") as z:
            for d, _, files in os.walk(os.path.join(root, "omniglot-py", half)):
                for f in files:
                    full = os.path.join(d, f)
                    z.write(full, os.path.relpath(full, os.path.join(root, "omniglot-py")))
    for where in (zroot, base, os.path.join(root, "omniglot-py")):
        src = load_source("omniglot", where, "val")
        assert torch.equal(src.data, splits["val"].data) and torch.equal(src.labels, splits["val"].labels)
        assert src.class_names == splits["val"].class_names


def test_episodes_5_and_20_way_and_no_augmentation(splits):
    src = splits["test"]
    tf = train_transform(src)
    assert isinstance(tf, Normalise)          # no crop / flip / jitter: rotations are the protocol's augmentation
    for way in (5, 20):
        b = EpisodeSampler(src, way=way, shot=1, query=1, episodes_per_batch=2, seed=0, transform="train").sample(0, 0)
        assert b.support.shape == (2, way, 1, 28, 28) and b.query.shape == (2, way, 1, 28, 28)
        raw = src.data[b.support_index[0]].float() / 255
        assert torch.allclose(b.support[0], raw, atol=1e-6, rtol=0)
    again = EpisodeSampler(src, way=20, shot=1, query=1, episodes_per_batch=2, seed=0).sample(0, 0)
    assert torch.equal(again.class_ids, EpisodeSampler(src, 20, 1, 1, 2, 0).sample(0, 0).class_ids)


def test_errors_name_the_file(tree, tmp_path):
    root, _ = tree
    with pytest.raises(FileNotFoundError, match=r"omniglot: no Omniglot under .*expected omniglot-py/images_background/"):
        load_source("omniglot", tmp_path, "train")
    half = tmp_path / "half"
    write_omniglot(str(half), per_character=1, halves=("images_background",))
    with pytest.raises(FileNotFoundError, match=r"holds only one of images_background / images_evaluation"):
        load_source("omniglot", half, "test")

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    evaluation = copy / "omniglot-py" / "images_evaluation"
    bad = evaluation / "Tibetan" / "character03"
    png = sorted(bad.iterdir())[0]
    png.write_bytes(png.read_bytes()[:40])                     # truncated drawing
    with pytest.raises(ValueError, match=rf"^{png}: not a readable PNG image") as e:
        load_source("omniglot", copy, "test")
    assert "\n" not in str(e.value)
    load_source("omniglot", copy, "val")                       # another split's file is never read
    shutil.rmtree(evaluation / "ULOG" / "character26")
    with pytest.raises(ValueError, match=r"images_evaluation: 658 character folders, expected the 659 of "
                                         r"Omniglot's images_evaluation"):
        load_source("omniglot", copy, "train")
    empty = evaluation / "ULOG" / "character26"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{empty}: no \.png drawings"):
        load_source("omniglot", copy, "train")


def test_zip_errors_name_the_member(tmp_path):
    root = tmp_path / "r"
    write_omniglot(str(root), per_character=1, layout="zip")
    zpath = root / "omniglot-py" / "images_evaluation.zip"
    with zipfile.ZipFile(zpath) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    victim = "images_evaluation/Oriya/character07/" + next(
        n.rsplit("/", 1)[1] for n in members if n.startswith("images_evaluation/Oriya/character07/"))
    members[victim] = b"\x89PNG\r\n\x1a\n" + b"\0" * 30                  # a PNG signature, then garbage
    with zipfile.ZipFile(zpath, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match=rf"^{zpath}:{victim}: not a readable PNG image"):
        load_source("omniglot", root, "test")
    zpath.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=rf"{zpath}: not a readable zip archive"):
        load_source("omniglot", root, "val")


def test_listing_order_is_not_the_split_order():
    """The fixture writes alphabets and characters in reverse order: the reader sorts."""
    listed = omniglot_characters()
    assert listed != sorted(listed[:964]) + sorted(listed[964:])
    assert sorted(listed[:964]) + sorted(listed[964:]) == _sorted_characters()
