"""Class-name files as users save them: a BOM from a Windows editor, or not UTF-8 at all."""

from pathlib import Path

import pytest

from ovss.data.folder import read_classes
from ovss.text.bank import parse_classes, read_class_file


def test_bom_is_not_part_of_the_first_class(tmp_path):
    p = tmp_path / "cls.txt"
    p.write_bytes("\ufeffcat\nsofa, couch\n".encode("utf-8"))
    assert parse_classes(Path(p)).synonyms == (("cat",), ("sofa", "couch"))
    assert read_class_file(p)[0] == ["cat"]
    assert read_classes(p)[0] == ["cat"]


@pytest.mark.parametrize("reader", [read_class_file, read_classes, lambda p: parse_classes(Path(p))])
def test_non_utf8_file_is_named(tmp_path, reader):
    p = tmp_path / "klassen.txt"
    p.write_bytes("katze\nk\xe4fer\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"klassen.txt is not UTF-8 text: byte 0xe4 on line 2") as e:
        reader(p)
    assert not isinstance(e.value, UnicodeDecodeError)
