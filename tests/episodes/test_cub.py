"""CUB-200-2011 from the official folder or CUB_200_2011.tgz (streamed): Chen et al.'s split by
class position, their evaluation resize + centre crop, the archive equal to the folder, errors."""
import io
import os
import shutil

import numpy as np
import pytest
import torch

from fixtures_omniglot_cub import cub_class_folders, cub_tree, write_cub, write_cub_archive
from episodes import EpisodeSampler
from episodes.sources import load_source
from episodes.sources.cub import split_of_class

N_CLASSES = 16


@pytest.fixture(scope="module")
def files():
    return cub_tree(N_CLASSES)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory, files):
    root = str(tmp_path_factory.mktemp("cub"))
    write_cub(root, files)
    return root


@pytest.fixture(scope="module")
def splits(folder_root):
    return {s: load_source("cub", folder_root, s) for s in ("train", "val", "test")}


def test_chen_split_rule():
    """Chen et al.'s write_CUB_filelist.py: base i % 2 == 0, val i % 4 == 1, novel i % 4 == 3."""
    got = {s: [i for i in range(200) if split_of_class(i) == s] for s in ("train", "val", "test")}
    assert got == {"train": list(range(0, 200, 2)), "val": list(range(1, 200, 4)), "test": list(range(3, 200, 4))}
    assert [len(v) for v in got.values()] == [100, 50, 50]


def test_splits_classes_and_counts(splits, files):
    folders = cub_class_folders(N_CLASSES)
    per_class = {f: sum(1 for k in files if k.startswith(f"CUB_200_2011/images/{f}/")) for f in folders}
    rule = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "test": lambda i: i % 4 == 3}
    for split, src in splits.items():
        ids = [i for i in range(N_CLASSES) if rule[split](i)]
        assert src.classes.tolist() == ids
        assert src.class_names == {i: folders[i] for i in ids}
        assert src.class_counts.tolist() == [per_class[folders[i]] for i in ids]
        assert src.data.shape[1:] == (3, 84, 84) and src.data.dtype == torch.uint8
        assert src.mean == (0.485, 0.456, 0.406) and src.std == (0.229, 0.224, 0.225)
    assert sum(len(s) for s in splits.values()) == sum(per_class.values())


def test_pixels_match_chens_evaluation_transform(splits, files):
    """Each image is torchvision's Resize([96, 96]) + CenterCrop(84) of the RGB JPEG (Chen et
    al.'s evaluation transform), in images.txt order within its class."""
    from PIL import Image
    from torchvision import transforms
    tf = transforms.Compose([transforms.Resize([96, 96]), transforms.CenterCrop(84)])
    lines = files["CUB_200_2011/images.txt"].decode().split("\n")
    rel = {int(l.split(" ")[0]): l.split(" ")[1] for l in lines if l}
    folders = cub_class_folders(N_CLASSES)
    for split, src in splits.items():
        for c in src.classes.tolist():
            paths = [rel[i] for i in sorted(rel) if rel[i].startswith(folders[c] + "/")]
            ref = np.stack([np.asarray(tf(Image.open(io.BytesIO(files[f"CUB_200_2011/images/{p}"])).convert("RGB")))
                            for p in paths])
            got = src.data[src.indices_by_class[c]].permute(0, 2, 3, 1).numpy()
            np.testing.assert_array_equal(got, ref)
    grey = splits["val"].data[splits["val"].indices_by_class[1][0]]        # the grey JPEG of class 1
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


@pytest.mark.parametrize("metadata_first", [False, True])
def test_archive_equals_folder(splits, files, tmp_path, metadata_first):
    write_cub_archive(str(tmp_path / "CUB_200_2011.tgz"), files, metadata_first=metadata_first)
    assert not (tmp_path / "CUB_200_2011").exists()
    for split in ("train", "test"):
        src = load_source("cub", tmp_path, split)
        assert torch.equal(src.data, splits[split].data) and torch.equal(src.labels, splits[split].labels)
        assert src.class_names == splits[split].class_names
    assert sorted(os.listdir(tmp_path)) == ["CUB_200_2011.tgz"]          # nothing extracted


def test_data_root_is_the_release_folder_and_episodes(folder_root, splits):
    src = load_source("cub", os.path.join(folder_root, "CUB_200_2011"), "train")
    assert torch.equal(src.data, splits["train"].data)
    b = EpisodeSampler(src, way=5, shot=1, query=2, episodes_per_batch=2, seed=0, transform="train").sample(0, 0)
    assert b.support.shape == (2, 5, 3, 84, 84) and b.query.shape == (2, 10, 3, 84, 84)


def _copy(folder_root, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder_root, dst)
    return dst / "CUB_200_2011"


def test_folder_errors_name_the_file(folder_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^cub: no CUB-200-2011 under .*expected CUB_200_2011/ with "):
        load_source("cub", tmp_path, "train")
    cub = _copy(folder_root, tmp_path)
    image = cub / "images" / cub_class_folders(N_CLASSES)[3] / sorted(os.listdir(cub / "images" /
                                                                               cub_class_folders(N_CLASSES)[3]))[0]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 3])                      # a truncated JPEG
    with pytest.raises(ValueError, match=rf"^{image}: not a readable JPEG image") as e:
        load_source("cub", cub.parent, "test")
    assert "\n" not in str(e.value)
    load_source("cub", cub.parent, "val")                         # only the split's images are decoded
    image.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{image}: missing \(listed in {cub / 'images.txt'}\)"):
        load_source("cub", cub.parent, "test")
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{cub / 'image_class_labels.txt'}: missing"):
        load_source("cub", cub.parent, "train")


@pytest.mark.parametrize("name,text,match", [
    ("classes.txt", "1 001.Black_footed_Albatross\n2\n", r"classes.txt: line 2 is '2'; expected '<id> <class folder>'"),
    ("image_class_labels.txt", "1 1\n2 999\n", r"image_class_labels.txt: image 2 has class '999', not a class id"),
    ("images.txt", "1 001.Black_footed_Albatross/a.jpg\n1 001.Black_footed_Albatross/b.jpg\n",
     r"images.txt: id 1 appears on two lines"),
])
def test_bad_metadata(folder_root, tmp_path, name, text, match):
    cub = _copy(folder_root, tmp_path)
    (cub / name).write_text(text)
    with pytest.raises(ValueError, match=match):
        load_source("cub", cub.parent, "train")


def test_labels_that_contradict_the_folders(folder_root, tmp_path):
    cub = _copy(folder_root, tmp_path)
    labels = (cub / "image_class_labels.txt").read_text().splitlines()
    labels[0] = "1 2"                                            # image 1 lies in the folder of class 1
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    with pytest.raises(ValueError, match=r"images.txt: image 1 \(001.Black_footed_Albatross/.*\) lies outside its "
                                         r"class folder 002.Laysan_Albatross/"):
        load_source("cub", cub.parent, "train")


def test_archive_errors(files, tmp_path):
    path = tmp_path / "CUB_200_2011.tgz"
    missing = sorted(k for k in files if "/images/" + cub_class_folders(N_CLASSES)[2] + "/" in k)[0]
    write_cub_archive(str(path), files, skip=[missing])
    with pytest.raises(ValueError, match=rf"^{path}: member {missing} is missing \(1 of the listed images are\)"):
        load_source("cub", tmp_path, "train")
    load_source("cub", tmp_path, "val")                        # the missing image is a train image
    write_cub_archive(str(path), files, skip=["CUB_200_2011/classes.txt"])
    with pytest.raises(ValueError, match=r"missing member\(s\) \['CUB_200_2011/classes.txt'\]"):
        load_source("cub", tmp_path, "test")
    write_cub_archive(str(path), files)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                   # a truncated download
    with pytest.raises(ValueError, match=rf"^{path}: truncated or corrupt archive .*download CUB_200_2011.tgz again"):
        load_source("cub", tmp_path, "train")
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=rf"^{path}: not a readable tar archive"):
        load_source("cub", tmp_path, "train")
