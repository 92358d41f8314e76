"""``mergeline reproduce`` rebuilds on the kind of device the lineage records, or says why it cannot."""

from __future__ import annotations

from mergeline.commands.reproduce import rebuild_device


def test_the_recorded_device_is_the_default_and_an_explicit_one_wins() -> None:
    assert rebuild_device(None, None, cuda_available=False) == ("cpu", None)  # lineages without the field
    assert rebuild_device(None, "cpu", cuda_available=True) == ("cpu", None)
    assert rebuild_device(None, "cuda", cuda_available=True) == ("cuda", None)
    assert rebuild_device("cpu", "cuda", cuda_available=False) == ("cpu", None)
    assert rebuild_device("cuda:1", "cpu", cuda_available=True) == ("cuda:1", None)


def test_a_cuda_merge_on_a_machine_without_cuda_is_one_line_naming_the_way_out() -> None:
    device, refusal = rebuild_device(None, "cuda", cuda_available=False)
    assert device == "cuda" and refusal is not None
    assert "\n" not in refusal and "--device cpu" in refusal and "CUDA" in refusal
