"""`install(progress=…)`: download, probe, hash and copy steps reported in order, bytes rising
to the totals; a failure in the middle of the copy leaves nothing; the CLI's bar."""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

import loraworks.models.install as copying
from loraworks.models import InstallProgress
from tests.models.lora_files import kohya_sd1_tensors, write, write_lcm_folder

CHUNK = 4096


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """4 KiB chunks: a test LoRA (~50 KB) takes a dozen steps to fetch, hash and copy."""
    for module in ("hashing", "install", "remote"):
        monkeypatch.setattr(f"loraworks.models.{module}.CHUNK_BYTES", CHUNK)


def _stages(events: list[InstallProgress]) -> list[str]:
    return list(dict.fromkeys(e.stage for e in events))


def _assert_counts_up_to(events: list[InstallProgress], stage: str, total: int) -> None:
    steps = [e for e in events if e.stage == stage]
    assert len(steps) >= total // CHUNK
    assert {e.total for e in steps} == {total}
    done = [e.done for e in steps]
    assert done == sorted(done) and done[-1] == total


@pytest.mark.parametrize("copier", ["_by_kernel", "_through_python"])
def test_a_file_install_reports_probe_hash_and_copy(mm, tmp_path, monkeypatch, copier):
    """Both ways of copying: sendfile (Linux) and through Python (elsewhere)."""
    monkeypatch.setattr(copying, "_copy_chunk", getattr(copying, copier))
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())
    preview = tmp_path / "owl.png"
    preview.write_bytes(b"\x89PNG\r\n\x1a\n" * 100)
    size = src.stat().st_size
    events: list[InstallProgress] = []
    record = mm.install(src, progress=events.append)
    assert _stages(events) == ["probe", "hash", "copy"]
    assert events[0] == InstallProgress("probe", 0, None, "owl.safetensors")
    _assert_counts_up_to(events, "hash", size)
    _assert_counts_up_to(events, "copy", size + preview.stat().st_size)  # the preview too
    assert {e.name for e in events if e.stage != "copy"} == {"owl.safetensors"}
    assert [e.name for e in events if e.stage == "copy"][-1] == "owl.png"
    assert record.path.read_bytes() == src.read_bytes()


def test_a_folder_copy_counts_every_file(mm, tmp_path):
    folder = write_lcm_folder(tmp_path / "LCM_LoRA_SD15")
    weights = folder / "pytorch_lora_weights.safetensors"
    (folder / "README.md").write_text("an LCM-LoRA\n")
    events: list[InstallProgress] = []
    mm.install(folder, progress=events.append)
    _assert_counts_up_to(events, "hash", weights.stat().st_size)  # the content hash: weights
    everything = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    _assert_counts_up_to(events, "copy", everything)
    assert {e.name for e in events if e.stage == "copy"} == {weights.name, "README.md"}


def test_in_place_and_known_content_copy_nothing(mm, tmp_path):
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())
    for attempt in ({"copy": False}, {}):  # registered in place, then already installed
        events: list[InstallProgress] = []
        mm.install(src, progress=events.append, **attempt)
        assert _stages(events) == ["probe", "hash"]


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[str, object]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


def test_a_download_reports_its_bytes_first(mm, http_root):
    url, served = http_root
    src = write(served / "owl.safetensors", kohya_sd1_tensors())
    events: list[InstallProgress] = []
    record = mm.install(f"{url}/owl.safetensors", progress=events.append)
    assert _stages(events) == ["download", "probe", "hash", "copy"]
    _assert_counts_up_to(events, "download", src.stat().st_size)
    assert record.path.read_bytes() == src.read_bytes()


def test_a_failure_in_the_middle_of_the_copy_leaves_no_file_and_no_record(mm, tmp_path):
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())

    def disk_full_after_the_first_chunk(event: InstallProgress) -> None:
        if event.stage == "copy":
            assert 0 < event.done < event.total
            assert list(mm.paths.models.glob(".tmp-*/owl.safetensors"))  # the partial copy
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        mm.install(src, progress=disk_full_after_the_first_chunk)
    assert mm.list() == []
    assert list(mm.paths.models.iterdir()) == []
    assert mm.install(src).path.read_bytes() == src.read_bytes()  # nothing in the way


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """stderr as a terminal, so that the CLI draws its bar (into this buffer)."""
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    monkeypatch.setattr("loraworks.cli.install_bar.err", console)
    return screen


def test_cli_draws_a_bar_on_a_terminal_and_keeps_its_result_line(cli, tmp_path, terminal):
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())
    result = cli("install", str(src))
    assert "installed lora 'owl' (sd1, kohya)" in result.stdout
    assert "copy" in terminal.getvalue() and "owl.safetensors" in terminal.getvalue()


def test_cli_json_draws_no_bar(cli, tmp_path, terminal):
    src = write(tmp_path / "owl.safetensors", kohya_sd1_tensors())
    assert cli.json("install", str(src))["name"] == "owl"
    assert terminal.getvalue() == ""


def test_cli_draws_no_bar_when_stderr_is_not_a_terminal(cli, tmp_path):
    result = cli("install", str(write(tmp_path / "owl.safetensors", kohya_sd1_tensors())))
    assert result.stdout.strip().startswith("installed lora 'owl'")
    assert result.stderr == ""
    assert json.loads(cli("list", "--json").stdout)[0]["name"] == "owl"
