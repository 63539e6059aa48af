"""GGUF files as students: the errors a user meets before any conversion starts.

The conversion itself runs on the real SmolLM2 file in tests/train/test_real_student.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from apprentice.gguf import GGUFError, convert_gguf, package_file, resolve_model
from apprentice.train.students import StudentError, load_student


def _write_gguf(path, arch: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("x", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_is_named_with_what_is_supported(tmp_path):
    path = tmp_path / "odd.gguf"
    _write_gguf(path, "foonet")
    with pytest.raises(GGUFError, match=r"architecture 'foonet' cannot be loaded.*'llama'"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written is left behind


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"definitely not a model" * 10)
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        resolve_model(path)
    with pytest.raises(StudentError, match="not a readable GGUF file"):
        load_student(path)


def test_missing_file_and_missing_package(tmp_path):
    with pytest.raises(GGUFError, match="does not exist"):
        convert_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="no installed package 'no_such_pkg_xyz'"):
        package_file("pkg:no_such_pkg_xyz/model.gguf")
    with pytest.raises(GGUFError, match="has no file 'missing.gguf'"):
        package_file("pkg:apprentice/missing.gguf")


def test_a_users_folder_is_never_overwritten(tmp_path):
    path = tmp_path / "odd.gguf"
    _write_gguf(path, "llama")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(GGUFError, match="exists and is not empty"):
        convert_gguf(path, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_names_that_are_not_gguf_pass_through():
    assert resolve_model("some/hub-model") == "some/hub-model"
