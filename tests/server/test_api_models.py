"""Models endpoints: list/filter, get, install, scan, edit, delete, preview — and their errors."""

from __future__ import annotations

import shutil

from fastapi.testclient import TestClient
from PIL import Image

from loraworks.server import create_app
from tests.server.conftest import LOCAL_URL
from tests.server.loras import write_clip_l_lora, write_kohya_lora


def _by_name(client, **params) -> dict[str, dict]:
    response = client.get("/api/models", params=params)
    assert response.status_code == 200
    return {m["name"]: m for m in response.json()}


def test_list_filters_by_type_and_base_and_leaves_out_raw_metadata(client):
    everything = _by_name(client)
    assert set(everything) == {"tiny-sd1", "ink", "glow", "xl-detail"}
    assert "metadata" not in everything["ink"]
    assert set(_by_name(client, type="lora", base="sd1")) == {"ink", "glow"}
    assert set(_by_name(client, type="main")) == {"tiny-sd1"}


def test_list_with_an_unknown_filter_value_is_a_readable_422(client):
    response = client.get("/api/models", params={"base": "sd9"})
    assert response.status_code == 422
    assert response.json()["error"].startswith("Invalid request: base:")


def test_get_by_name_or_key_has_metadata_and_trigger_words(client):
    ink = client.get("/api/models/ink").json()
    assert ink["base"] == "sd1" and ink["format"] == "kohya"
    assert ink["trigger_words"][0] == "inkstyle"
    assert ink["metadata"]["ss_network_dim"] == "2"
    assert client.get(f"/api/models/{ink['key']}").json()["name"] == "ink"


def test_get_unknown_model_is_404_with_a_message(client):
    response = client.get("/api/models/no-such-model")
    assert response.status_code == 404
    assert "no-such-model" in response.json()["error"]


def test_install_a_file_then_the_same_content_returns_the_existing_record(client, tmp_path):
    source = write_kohya_lora(tmp_path / "fresh.safetensors", "sd1", seed=9)
    response = client.post("/api/models/install", json={"source": str(source)})
    assert response.status_code == 201
    record = response.json()
    assert (record["name"], record["type"], record["base"]) == ("fresh", "lora", "sd1")
    assert record["in_place"] is False
    again = client.post("/api/models/install", json={"source": str(source)}).json()
    assert again["key"] == record["key"]


def test_install_in_place_keeps_the_file_where_it_is(client, tmp_path):
    source = write_kohya_lora(tmp_path / "kept.safetensors", "sd1", seed=10)
    record = client.post(
        "/api/models/install", json={"source": str(source), "copy_into_root": False}
    ).json()
    assert record["in_place"] is True
    assert record["path"] == str(source.resolve())


def test_install_refuses_missing_and_non_model_sources_with_reasons(client, tmp_path):
    missing = client.post(
        "/api/models/install", json={"source": str(tmp_path / "nope.safetensors")}
    )
    assert missing.status_code == 400 and missing.json()["error"]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    response = client.post("/api/models/install", json={"source": str(junk)})
    assert response.status_code == 400
    assert response.json()["error"]
    assert client.get("/api/models/junk").status_code == 404


def test_scan_reports_a_dropped_file_and_a_broken_one(client, manager, lora_sources):
    drop = manager.paths.autoimport_lora
    write_kohya_lora(drop / "dropped.safetensors", "sd1", seed=11)
    (drop / "broken.safetensors").write_bytes(b"\x00" * 16)
    shutil.copy(lora_sources["ink"], drop / "ink-copy.safetensors")
    report = client.post("/api/models/scan").json()
    assert report["added"] == ["dropped"]
    assert len(report["errors"]) == 1 and report["errors"][0].startswith("broken: ")
    assert len(report["duplicates"]) == 1 and "ink" in report["duplicates"][0]
    broken = client.get("/api/models/broken").json()
    assert broken["status"] == "error" and broken["error"]


def test_edit_trigger_words_and_default_weight(client):
    response = client.patch(
        "/api/models/glow", json={"trigger_words": ["glowing", "neon"], "default_weight": 0.6}
    )
    assert response.status_code == 200
    glow = client.get("/api/models/glow").json()
    assert glow["trigger_words"] == ["glowing", "neon"]
    assert glow["default_weight"] == 0.6


def test_edit_name_and_description(client):
    key = client.get("/api/models/glow").json()["key"]
    client.patch(f"/api/models/{key}", json={"name": "glow-v2", "description": "soft light"})
    renamed = client.get(f"/api/models/{key}").json()
    assert (renamed["name"], renamed["description"]) == ("glow-v2", "soft light")


def test_edit_rejects_unknown_fields_empty_edits_and_bad_values(client):
    unknown = client.patch("/api/models/glow", json={"path": "/etc/passwd"})
    assert unknown.status_code == 422 and "path" in unknown.json()["error"]
    empty = client.patch("/api/models/glow", json={})
    assert empty.status_code == 400 and "Nothing to change" in empty.json()["error"]
    weight = client.patch("/api/models/glow", json={"default_weight": "heavy"})
    assert weight.status_code == 422 and "default_weight" in weight.json()["error"]


def test_delete_forgets_the_model_and_deletes_its_copy(client, manager):
    glow = manager.get("glow")
    assert glow.path.exists()
    response = client.delete("/api/models/glow")
    assert response.status_code == 200 and response.json() == {"deleted": glow.key}
    assert client.get("/api/models/glow").status_code == 404
    assert not glow.path.exists()
    assert client.delete("/api/models/glow").status_code == 404


def test_preview_image_is_served_when_the_file_has_one(client, manager, tmp_path):
    source = write_kohya_lora(tmp_path / "shown.safetensors", "sd1", seed=12)
    Image.new("RGB", (4, 4), (0, 255, 0)).save(tmp_path / "shown.png")
    record = manager.install(source, copy=False)
    assert record.preview_path is not None
    listed = _by_name(client)["shown"]
    assert listed["preview_url"] == f"/api/models/{record.key}/preview"
    response = client.get(listed["preview_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (tmp_path / "shown.png").read_bytes()


def test_preview_of_a_model_without_one_is_404(client):
    response = client.get("/api/models/ink/preview")
    assert response.status_code == 404
    assert "no preview" in response.json()["error"]


def test_an_unexpected_failure_is_a_500_with_a_message_and_serving_goes_on(
    manager, fake_generate, monkeypatch
):
    def broken_list(**_):
        raise RuntimeError("database is locked")

    app = create_app(manager, generate=fake_generate)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL_URL) as client:
        monkeypatch.setattr(manager, "list", broken_list)
        response = client.get("/api/models")
        assert response.status_code == 500
        assert response.json() == {"error": "Internal error (RuntimeError); see the server log."}
        monkeypatch.undo()
        assert client.get("/api/models").status_code == 200


def test_base_filter_lists_a_lora_for_every_base_its_tensors_fit(client, tmp_path):
    source = write_clip_l_lora(tmp_path / "clip-l-only.safetensors")
    record = client.post("/api/models/install", json={"source": str(source)}).json()
    assert (record["base"], record["compatible_bases"]) == ("sdxl", ["sd1", "sdxl"])
    assert set(_by_name(client, type="lora", base="sd1")) == {"ink", "glow", "clip-l-only"}
    assert set(_by_name(client, type="lora", base="sdxl")) == {"xl-detail", "clip-l-only"}
    assert _by_name(client, type="main")["tiny-sd1"]["compatible_bases"] == ["sd1"]
