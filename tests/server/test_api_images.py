"""Gallery endpoints: paged list (newest first), PNG, recipe, delete; ids cannot escape."""

from __future__ import annotations

from PIL import Image

from loraworks.server.app import WEB_DIR


def _add_images(manager, count: int) -> list[int]:
    ids = []
    for n in range(count):
        path = manager.paths.outputs / f"img-{n}.png"
        Image.new("RGB", (8, 8), (n, 0, 0)).save(path)
        ids.append(manager.images.add(path, {"prompt": f"image {n}", "seed": n}).id)
    return ids


def test_list_is_paged_newest_first(client, manager):
    ids = _add_images(manager, 5)
    first = client.get("/api/images", params={"limit": 2}).json()
    assert [i["id"] for i in first["items"]] == [ids[4], ids[3]] and first["has_more"] is True
    last = client.get("/api/images", params={"offset": 4, "limit": 2}).json()
    assert [i["id"] for i in last["items"]] == [ids[0]] and last["has_more"] is False
    assert first["items"][0]["recipe"] == {"prompt": "image 4", "seed": 4}
    assert first["items"][0]["url"] == f"/api/images/{ids[4]}"


def test_bad_paging_values_are_readable_422s(client):
    for params in ({"limit": 0}, {"offset": -1}, {"limit": "many"}):
        response = client.get("/api/images", params=params)
        assert response.status_code == 422 and response.json()["error"].startswith(
            "Invalid request"
        )


def test_get_png_and_recipe(client, manager):
    (image_id,) = _add_images(manager, 1)
    png = client.get(f"/api/images/{image_id}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == (manager.paths.outputs / "img-0.png").read_bytes()
    assert client.get(f"/api/images/{image_id}/recipe").json() == {"prompt": "image 0", "seed": 0}


def test_delete_removes_record_and_file(client, manager):
    (image_id,) = _add_images(manager, 1)
    response = client.delete(f"/api/images/{image_id}")
    assert response.status_code == 200 and response.json() == {"deleted": image_id}
    assert not (manager.paths.outputs / "img-0.png").exists()
    assert client.get(f"/api/images/{image_id}").status_code == 404
    assert client.delete(f"/api/images/{image_id}").status_code == 404


def test_ids_that_are_not_numbers_or_try_to_escape_are_refused(client):
    for bad in ("..%2F..%2Fetc%2Fpasswd", "1;rm", "abc"):
        response = client.get(f"/api/images/{bad}")
        assert response.status_code in (404, 422), bad
        assert "error" in response.json()
    assert client.get("/api/images/999").status_code == 404


def test_a_record_pointing_outside_outputs_is_not_served(client, manager, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(outside)
    record = manager.images.add(outside, {"prompt": "x"})
    response = client.get(f"/api/images/{record.id}")
    assert response.status_code == 403 and "outside the outputs folder" in response.json()["error"]


def test_ui_files_are_served_and_paths_cannot_climb_out_of_them(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="app.js"' in page.text
    for asset in WEB_DIR.iterdir():  # no CDN: nothing is fetched from another origin
        assert "://" not in asset.read_text(), asset.name
    for path in ("/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd", "/app.js/../../x"):
        response = client.get(path)
        assert response.status_code == 404 and "root:" not in response.text
        assert response.json()["error"].startswith("Nothing at")
