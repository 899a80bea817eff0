"""The drop folder end to end through `loraworks models …` (issue 4, first acceptance line)."""

from __future__ import annotations

import shutil

from loraworks.models import ModelManager
from tests.models.lora_files import (
    kohya_metadata,
    kohya_sd1_tensors,
    kohya_sdxl_tensors,
    write,
    write_lcm_folder,
)

CORRUPT = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"


def _drop_four(root):
    lora = root / "autoimport" / "lora"
    write(lora / "star.safetensors", kohya_sd1_tensors(), kohya_metadata({"zkstar": 10}))
    write(lora / "xl" / "detail-xl.safetensors", kohya_sdxl_tensors())
    write_lcm_folder(lora / "lcm-sd15")
    (lora / "broken.safetensors").write_bytes(CORRUPT)
    return lora


def test_drop_folder_listing_duplicate_and_missing(root, cli):
    root.mkdir()
    (root / "autoimport").mkdir()
    lora = _drop_four(root)

    table = cli("list").output
    for name in ("star", "detail-xl", "lcm-sd15", "broken"):
        assert name in table
    records = {r["name"]: r for r in cli.json("list")}
    assert set(records) == {"star", "detail-xl", "lcm-sd15", "broken"}
    expected = {
        "star": ("sd1", "kohya", False),
        "detail-xl": ("sdxl", "kohya", False),
        "lcm-sd15": ("sd1", "diffusers", True),
    }
    for name, (base, fmt, lcm) in expected.items():
        r = records[name]
        assert (r["base"], r["format"], r["fewstep"] == "lcm", r["status"]) == (
            base,
            fmt,
            lcm,
            "ok",
        ), r
    broken = records["broken"]
    assert broken["status"] == "error"
    assert "not a valid safetensors file" in broken["error"]
    assert "error: broken.safetensors: not a valid safetensors" in table

    shutil.copy(lora / "star.safetensors", lora / "star-again.safetensors")
    out = cli("list").output
    assert "star-again.safetensors: same content as installed model 'star'" in out
    assert "star-again" not in {r["name"] for r in cli.json("list")}

    (lora / "xl" / "detail-xl.safetensors").unlink()
    out = cli("list").output
    assert "missing: 'detail-xl'" in out
    records = {r["name"]: r for r in cli.json("list")}
    assert records["detail-xl"]["status"] == "missing"
    assert records["star"]["status"] == "ok"


def test_rescan_is_incremental(root, monkeypatch):
    root.mkdir()
    _drop_four(root)
    ModelManager.open(root).close()

    def no_hashing(path):
        raise AssertionError(f"re-hashed unchanged {path}")

    monkeypatch.setattr("loraworks.models.scanning.content_hash", no_hashing)
    mm = ModelManager.open(root)
    assert mm.last_scan.unchanged == 4
    assert not mm.last_scan.changed


def test_symlinks_followed_and_loops_end(root, tmp_path):
    elsewhere = tmp_path / "library"
    write(elsewhere / "linked.safetensors", kohya_sd1_tensors(seed=7))
    lora = root / "autoimport" / "lora"
    lora.mkdir(parents=True)
    (lora / "shelf").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(lora, target_is_directory=True)
    mm = ModelManager.open(root)
    assert [r.name for r in mm.list()] == ["linked"]
    assert mm.get("linked").base == "sd1"


def test_moved_file_keeps_its_record_and_edits(root):
    lora = root / "autoimport" / "lora"
    write(lora / "a.safetensors", kohya_sd1_tensors())
    mm = ModelManager.open(root)
    key = mm.get("a").key
    mm.update(key, trigger_words=["mine"])
    (lora / "a.safetensors").rename(lora / "renamed.safetensors")
    report = mm.scan()
    assert not report.added
    record = mm.get(key)
    assert record.path == lora / "renamed.safetensors"
    assert (record.status, record.trigger_words) == ("ok", ["mine"])


def test_fixed_file_leaves_error_state(root):
    lora = root / "autoimport" / "lora"
    lora.mkdir(parents=True)
    (lora / "later.safetensors").write_bytes(CORRUPT)
    mm = ModelManager.open(root)
    assert mm.get("later").status == "error"
    write(lora / "later.safetensors", kohya_sd1_tensors())
    mm.scan()
    record = mm.get("later")
    assert (record.status, record.base, record.error) == ("ok", "sd1", None)


def test_not_a_lora_is_an_error_record(root):
    lora = root / "autoimport" / "lora"
    import torch

    write(lora / "random.safetensors", {"some.weight": torch.zeros(3, 3)})
    mm = ModelManager.open(root)
    record = mm.get("random")
    assert record.status == "error"
    assert "not a usable LoRA" in record.error


def test_watch_rescans_on_drop(mm):
    import threading

    stop, seen = threading.Event(), threading.Event()
    reports = []

    def on_scan(report):
        reports.append(report)
        seen.set()

    thread = threading.Thread(target=mm.watch, args=(stop,), kwargs={"on_scan": on_scan})
    thread.start()
    try:
        import time

        time.sleep(0.5)  # let the watcher start before the drop
        write(mm.paths.autoimport_lora / "dropped.safetensors", kohya_sd1_tensors())
        assert seen.wait(30), "no rescan after a file was dropped"
    finally:
        stop.set()
        thread.join(10)
    assert [r.name for r in reports[0].added] == ["dropped"]
    assert mm.get("dropped").status == "ok"


def test_checkpoint_in_the_lora_folder_is_explained(root):
    import torch

    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    write(root / "autoimport/lora/full.safetensors", {key: torch.zeros(32, 768)})
    record = ModelManager.open(root).get("full")
    assert record.status == "error"
    assert "a full model checkpoint, not a LoRA" in record.error


def test_two_processes_scanning_at_once_keep_one_record_per_file(root):
    import threading

    first, second = ModelManager.open(root, scan=False), ModelManager.open(root, scan=False)
    for i in range(6):
        write(root / f"autoimport/lora/l{i}.safetensors", kohya_sd1_tensors(seed=10 * i))
    errors = []

    def scan(mm):
        try:
            mm.scan()
        except Exception as exc:  # surfaced below with the assertion
            errors.append(exc)

    threads = [threading.Thread(target=scan, args=(mm,)) for mm in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    names = sorted(r.name for r in ModelManager.open(root).list())
    assert names == [f"l{i}" for i in range(6)]


def test_cli_scan_json(root, cli):
    write(root / "autoimport/lora/a.safetensors", kohya_sd1_tensors())
    report = cli.json("scan")
    assert [r["name"] for r in report["added"]] == ["a"]
    report = cli.json("scan", "--full")
    assert [r["name"] for r in report["updated"]] == ["a"]
    assert (report["added"], report["unchanged"]) == ([], 0)
