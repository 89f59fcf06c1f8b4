"""Provenance (medtrans.provenance): what makes an output current, for prepare and convert alike."""

from __future__ import annotations

from medtrans.provenance import Provenance


def test_every_kind_of_difference_is_named():
    base = Provenance({"mr": "a1", "model": "m1"}, {"format": "nifti", "strict": False}, "1.0")
    old = base.to_dict()
    assert base.stale_reason(old) is None
    assert Provenance({"mr": "a2", "model": "m1"}, base.settings, "1.0").stale_reason(old) == "the input MR changed"
    assert Provenance({"mr": "a1", "model": "m2"}, base.settings, "1.0").stale_reason(old) == "the model changed"
    assert Provenance({"mr": "a1"}, base.settings, "1.0").stale_reason(old) == "its inputs changed"
    assert Provenance(base.inputs, {"format": "mha", "strict": False}, "1.0").stale_reason(old) == \
        "option format changed (nifti -> mha)"
    assert Provenance(base.inputs, base.settings, "1.1").stale_reason(old) == "medtrans changed (1.0 -> 1.1)"
    assert "earlier medtrans" in base.stale_reason({"input_sha256": "a1"})  # a record of the old kind
    assert base.key() == Provenance(dict(base.inputs), dict(base.settings), "1.0").key() != \
        Provenance(base.inputs, base.settings, "1.1").key()


def test_files_are_hashed_by_content(tmp_path):
    (tmp_path / "a").write_bytes(b"one")
    p = Provenance.of_files({"mr": tmp_path / "a"}, {})
    (tmp_path / "a").write_bytes(b"two")
    assert Provenance.of_files({"mr": tmp_path / "a"}, {}).stale_reason(p.to_dict()) == "the input MR changed"
