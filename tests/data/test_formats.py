"""One owner of the image suffixes: dataset readers and the site's images folder."""

from fedpoint.data import formats as F


def test_split_suffix_takes_the_longest_ending_case_insensitively():
    assert F.split_suffix("chest-01.nii.gz") == ("chest-01", ".nii.gz")
    assert F.split_suffix("Chest.NII") == ("Chest", ".nii")
    assert F.split_suffix("a.npy") == ("a", ".npy")
    assert F.split_suffix("a.npy", F.DATASET_SUFFIXES) is None
    assert F.split_suffix(".png") is None and F.split_suffix("notes.txt") is None


def test_the_lists_differ_only_where_they_should():
    assert F.SITE_IMAGE_SUFFIXES == F.DATASET_SUFFIXES + (".npy",)
    assert F.DATASET_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".png")
    assert F.RESULT_SUFFIXES == F.MEDICAL == (".nii.gz", ".nii", ".nrrd")
    assert F.has_suffix("x.JPG", F.PICTURES) and not F.has_suffix("x.nrrd", F.PICTURES)


def test_every_label_file_suffix_has_a_decoder():
    from fedpoint.client.service.uploads import READERS

    assert set(READERS) == set(F.LABEL_FILE_SUFFIXES)


def test_a_dataset_folder_ignores_npy_the_site_folder_serves_it(tmp_path):
    from fedpoint.client.service.images import ImageFolder
    from fedpoint.data.readers import _image_files

    for name in ("a.nii.gz", "b.png", "c.npy", "d.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in _image_files(tmp_path)] == ["a.nii.gz", "b.png"]
    assert sorted(ImageFolder(tmp_path, "CT", 1).ids()) == ["a", "b", "c"]
