"""The CSM client end to end against the loopback stand-in (tests/fakes/csm_server.py): real HTTP, real GLBs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from fakes.csm_server import FakeCsm, FakeCsmConfig, Fault, tiny_png
from gen3deval.errors import ConfigError
from gen3deval.mesh.io import load_mesh
from gen3deval.remote.errors import FinalError, RemoteError, RetryableError
from gen3deval.remote.policy import RemotePolicy
from gen3deval.systems.csm import (
    CSM_CONFIGS,
    DEFAULT_BASE_URL,
    CsmClient,
    JobHandle,
    PollResult,
    load_csm_key,
    resolve_base_url,
)

T = TypeVar("T")

# Tiny waits so that the whole file runs in a few seconds; retries as in production (3 after the first try).
POLICY = RemotePolicy(
    concurrency=8,
    rps=1000.0,
    retries=3,
    backoff_s=0.01,
    backoff_max_s=0.05,
    request_timeout_s=2.0,
    poll_interval_s=0.02,
    poll_max_s=0.05,
    timeout_min=0.5,
)
TURBO = CSM_CONFIGS["csm-turbo"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "chair.png"
    p.write_bytes(tiny_png())
    return p


@pytest.fixture
def server() -> Iterator[FakeCsm]:
    with FakeCsm() as s:
        yield s


def make_server(**kw: Any) -> FakeCsm:
    return FakeCsm(FakeCsmConfig(**kw))


def client_for(server: FakeCsm, policy: RemotePolicy = POLICY, key: str | None = None) -> CsmClient:
    return CsmClient(api_key=key or server.config.api_key, base_url=server.base_url, policy=policy)


async def job(
    server: FakeCsm, image: Path, dest: Path, config: dict[str, Any] = TURBO, **kw: Any
) -> tuple[PollResult, list[Path]]:
    async with client_for(server, **kw) as c:
        return await c.run_job(config["job_type"], image, config, dest)


# -- each job type end to end -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CSM_CONFIGS))
def test_every_csm_all_configuration_runs_end_to_end(name: str, server: FakeCsm, image: Path, tmp_path: Path):
    cfg = CSM_CONFIGS[name]
    result, paths = run(job(server, image, tmp_path / name, cfg))
    assert result.status == "done", result.message
    assert paths and all(p.is_file() for p in paths)
    mesh = load_mesh(paths[0])
    # The stand-in serves a box (12 faces) for base geometry, an icosphere (80) for turbo, 3 boxes for a kit.
    expected = {"csm-base": 12, "csm-kit": 36}.get(name, 80)
    assert mesh.n_faces == expected
    first = server.submissions[0]
    assert first["type"] == cfg["job_type"]
    if cfg["job_type"] == "image_to_3d":
        assert first["input"]["settings"] == {
            "geometry_model": cfg["geometry_model"],
            "texture_model": cfg["texture_model"],
            "resolution": 200_000,
        }
    assert result.cost is not None and result.cost > 0


def test_csm_all_has_the_six_configurations_at_200k():
    assert set(CSM_CONFIGS) == {
        "csm-base",
        "csm-turbo",
        "csm-turbo-baked",
        "csm-turbo-pbr",
        "csm-kit",
        "csm-chat",
    }
    assert all(c["resolution"] == 200_000 for c in CSM_CONFIGS.values())
    assert CSM_CONFIGS["csm-kit"] | {} == {
        "job_type": "image_to_kit",
        "decomposition_model": "pro",
        "geometry_model": "turbo",
        "texture_model": "baked",
        "resolution": 200_000,
    }
    assert (CSM_CONFIGS["csm-chat"]["geometry_model"], CSM_CONFIGS["csm-chat"]["texture_model"]) == (
        "turbo",
        "pbr",
    )


def test_handle_is_json_and_carries_the_asset_id(server: FakeCsm, image: Path):
    async def go() -> dict[str, Any]:
        async with client_for(server) as c:
            return await c.submit("image_to_3d", image, TURBO)

    handle = run(go())
    assert json.loads(json.dumps(handle)) == handle
    assert handle["asset_id"] in server.assets and server.assets[handle["asset_id"]] == "upload"
    assert handle["sessions"] == [next(iter(server.sessions))]
    assert server.submissions[0]["input"]["image"].startswith("data:image/png;base64,")
    assert JobHandle.from_dict(handle).to_dict() == handle
    with pytest.raises(ConfigError, match="not a CSM job handle"):
        JobHandle.from_dict({"type": "image_to_3d"})


def test_asset_id_reused_for_a_second_job_of_the_same_image(server: FakeCsm, image: Path, tmp_path: Path):
    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with client_for(server) as c:
            first = await c.submit("image_to_3d", image, TURBO)
            second = await c.submit("image_to_kit", image, CSM_CONFIGS["csm-kit"], asset_id=first["asset_id"])
            return first, second

    first, second = run(go())
    assert server.data_uploads == 1
    assert second["asset_id"] == first["asset_id"]
    assert server.submissions[1]["input"]["image"] == first["asset_id"]
    sizes = [r.body_size for r in server.requests if r.kind == "submit"]
    assert sizes[1] < sizes[0]  # no image bytes the second time


def test_unknown_asset_id_is_final_with_the_servers_message(server: FakeCsm, image: Path):
    async def go() -> None:
        async with client_for(server) as c:
            await c.submit("image_to_3d", image, TURBO, asset_id="ASSET_NOPE")

    with pytest.raises(FinalError, match="ASSET_NOPE not found") as ei:
        run(go())
    assert ei.value.status == 404
    assert server.count("submit") == 1


def test_chat_is_one_job_with_two_steps(server: FakeCsm, image: Path, tmp_path: Path):
    handles: list[dict[str, Any]] = []

    async def go() -> tuple[PollResult, list[Path]]:
        async with client_for(server) as c:
            cfg = CSM_CONFIGS["csm-chat"]
            return await c.run_job("chat_to_3d", image, cfg, tmp_path / "chat", on_handle=handles.append)

    result, paths = run(go())
    assert result.status == "done"
    assert len(handles) == 2 and len(handles[0]["sessions"]) == 1
    final = result.handle
    assert final["step"] == 2 and final["sessions"][0] == handles[0]["sessions"][0]
    assert [server.sessions[s].type for s in final["sessions"]] == ["chat_to_3d", "image_to_3d"]
    chat_asset = final["chat_asset_id"]
    assert server.assets[chat_asset] == "chat" and chat_asset != final["asset_id"]
    step2 = server.submissions[1]
    assert step2["input"]["image"] == chat_asset
    assert step2["input"]["settings"] == {
        "geometry_model": "turbo",
        "texture_model": "pbr",
        "resolution": 200_000,
    }
    assert server.data_uploads == 1 and len(server.submissions) == 2
    assert result.cost == 5.0 + 10.0  # the stand-in's credits: chat + image_to_3d
    assert load_mesh(paths[0]).n_faces == 80


def test_kit_keeps_every_part_and_scores_the_assembly(server: FakeCsm, image: Path, tmp_path: Path):
    result, paths = run(job(server, image, tmp_path / "kit", CSM_CONFIGS["csm-kit"]))
    assert len(result.parts) == 3
    assembly, parts = paths[0], [p for p in paths if p.name.startswith("part_")]
    assert assembly.name == "assembly.glb" and len(parts) == 3
    part_meshes = [load_mesh(p) for p in parts]
    whole = load_mesh(assembly)
    assert whole.n_faces == sum(m.n_faces for m in part_meshes)
    assert whole.n_vertices == sum(m.n_vertices for m in part_meshes)
    # As placed: part i is a box of size 0.2 (i + 1) at x = 1.5 i, so the assembly spans [-0.1, 3.3] in x.
    assert whole.bounds[0][0] == pytest.approx(-0.1) and whole.bounds[1][0] == pytest.approx(3.3)


# -- failures and retries -----------------------------------------------------------------------------


def test_failed_session_keeps_the_servers_message(image: Path, tmp_path: Path):
    with make_server(faults=[Fault("fail", "submit", count=1, message="no object found in the image")]) as s:
        result, paths = run(job(s, image, tmp_path))
    assert result.status == "failed" and paths == []
    assert "no object found in the image" in (result.message or "")
    assert s.count("download") == 0 and len(s.submissions) == 1


def test_429_5xx_and_dropped_connections_are_retried(image: Path, tmp_path: Path):
    faults = [
        Fault("429", "submit", count=1, retry_after=0.2),
        Fault("drop", "submit", count=1),
        Fault("500", "poll", count=1),
        Fault("503", "poll", count=1),
        Fault("drop", "poll", count=1),
        Fault("drop", "download", count=1),
    ]
    with make_server(faults=faults) as s:
        result, paths = run(job(s, image, tmp_path))
    assert result.status == "done" and load_mesh(paths[0]).n_faces == 80
    assert s.count("submit") == 3 and len(s.submissions) == 1  # 429, dropped, accepted: one session
    assert s.count("submit", 429) == 1 and s.count("poll", 500) == 1 and s.count("poll", 503) == 1
    assert s.count("download") == 2
    submits = [r for r in s.requests if r.kind == "submit"]
    assert submits[1].time - submits[0].time >= 0.2 * 0.95  # Retry-After honoured over the 10 ms backoff


def test_retries_stop_after_the_policy_count(image: Path):
    with make_server(faults=[Fault("503", "poll", count=100)]) as s:

        async def go() -> None:
            async with client_for(s) as c:
                handle = await c.submit("image_to_3d", image, TURBO)
                await c.poll(handle)

        with pytest.raises(RetryableError) as ei:
            run(go())
    assert ei.value.status == 503
    assert s.count("poll") == POLICY.retries + 1


def test_slow_response_times_out_and_is_retried(image: Path, tmp_path: Path):
    policy = RemotePolicy(**{**POLICY.__dict__, "request_timeout_s": 0.3})
    with make_server(faults=[Fault("slow", "poll", count=1, delay_s=0.8)]) as s:
        result, _ = run(job(s, image, tmp_path, policy=policy))
    assert result.status == "done"
    assert s.faults_applied("slow") == 1 and s.count("poll") >= 2


def test_job_past_timeout_min_is_given_up(image: Path, tmp_path: Path):
    policy = RemotePolicy(**{**POLICY.__dict__, "timeout_min": 0.2 / 60})  # 0.2 s
    with make_server(durations={"image_to_3d": 30.0}) as s, pytest.raises(FinalError, match="timed out"):
        run(job(s, image, tmp_path, policy=policy))
    assert len(s.submissions) == 1 and s.count("download") == 0


def test_malformed_json_is_final_and_not_retried(image: Path):
    with make_server(faults=[Fault("malformed", "poll", count=1)]) as s:

        async def go() -> None:
            async with client_for(s) as c:
                handle = await c.submit("image_to_3d", image, TURBO)
                await c.poll(handle)

        with pytest.raises(FinalError):
            run(go())
    assert s.count("poll") == 1


def test_rejected_settings_are_final_with_the_servers_message(server: FakeCsm, image: Path):
    async def go() -> None:
        async with client_for(server) as c:
            await c.submit("image_to_3d", image, {**TURBO, "geometry_model": "huge"})

    with pytest.raises(FinalError, match="geometry_model must be one of") as ei:
        run(go())
    assert ei.value.status == 422 and server.count("submit") == 1 and not server.sessions


def test_truncated_glb_is_downloaded_again(image: Path, tmp_path: Path):
    with make_server(faults=[Fault("truncate", "download", count=1)]) as s:
        result, paths = run(job(s, image, tmp_path))
    assert result.status == "done" and load_mesh(paths[0]).n_faces == 80
    assert s.count("download") == 2 and s.faults_applied("truncate") == 1


def test_expired_url_repolls_once_for_fresh_urls(image: Path, tmp_path: Path):
    with make_server(faults=[Fault("expire", "download", count=1)]) as s:
        _, paths = run(job(s, image, tmp_path))
        polls = [r for r in s.requests if r.kind == "poll"]
    assert load_mesh(paths[0]).n_faces == 80
    assert s.count("download", 403) == 1 and s.count("download", 200) == 1
    # The last poll came after the refused download (the re-poll).
    refused = next(r for r in s.requests if r.kind == "download")
    assert polls[-1].time > refused.time


def test_urls_that_stay_expired_are_final_after_one_repoll(image: Path, tmp_path: Path):
    # Every signed URL is born expired.
    with make_server(url_ttl_s=-1.0) as s, pytest.raises(FinalError) as ei:
        run(job(s, image, tmp_path))
    assert ei.value.status == 403
    assert s.count("download") == 2


# -- the key ------------------------------------------------------------------------------------------


def test_key_never_in_errors_nor_sent_to_the_download_host(image: Path, tmp_path: Path):
    key = "csm-test-key-0123456789abcdef"
    faults = [Fault("fail", "submit", count=1, message=f"quota exceeded for key {key}")]
    with make_server(api_key=key, faults=faults) as s:
        failed, _ = run(job(s, image, tmp_path / "a"))
        done, _ = run(job(s, image, tmp_path / "b"))
        with pytest.raises(RemoteError) as wrong:
            run(job(s, image, tmp_path / "c", key=key + "-wrong"))
    assert failed.status == "failed" and key not in (failed.message or "") and "***" in (failed.message or "")
    assert done.status == "done"
    assert wrong.value.status == 401 and key not in str(wrong.value) and key not in repr(wrong.value)
    downloads = [r for r in s.requests if r.kind == "download"]
    assert downloads and all("x-api-key" not in r.headers for r in downloads)
    assert all(key not in json.dumps(r.headers) for r in downloads)
    assert all(
        r.headers.get("x-api-key") == key for r in s.requests if r.kind == "submit" and r.status == 200
    )


# -- configuration ------------------------------------------------------------------------------------


def test_base_url_setting_then_env_then_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CSM_BASE_URL", raising=False)
    assert resolve_base_url() == DEFAULT_BASE_URL == "https://api.csm.ai/v3"
    monkeypatch.setenv("CSM_BASE_URL", "http://127.0.0.1:9/v3/")
    assert resolve_base_url() == "http://127.0.0.1:9/v3"
    assert resolve_base_url("https://example.test/v3") == "https://example.test/v3"
    with pytest.raises(ConfigError, match="base_url"):
        resolve_base_url("ftp://nowhere")


def test_key_from_env_then_config_file_then_legacy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CSM_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="CSM_API_KEY"):
        load_csm_key(interactive=False)
    legacy = tmp_path / ".csm_config"
    legacy.write_text(json.dumps({"api_key": "legacy-key-123456"}))
    legacy.chmod(0o600)
    assert load_csm_key(interactive=False) == "legacy-key-123456"
    cfg = tmp_path / "home" / ".config" / "gen3deval" / "csm.key"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("file-key-123456\n")
    cfg.chmod(0o600)
    assert load_csm_key(interactive=False) == "file-key-123456"
    monkeypatch.setenv("CSM_API_KEY", "env-key-123456")
    assert load_csm_key(interactive=False) == "env-key-123456"


def test_unsupported_or_missing_image_names_the_file(server: FakeCsm, tmp_path: Path):
    async def go(p: Path) -> None:
        async with client_for(server) as c:
            await c.submit("image_to_3d", p, TURBO)

    gif = tmp_path / "x.gif"
    gif.write_bytes(b"GIF89a")
    with pytest.raises(ConfigError, match=r"x\.gif"):
        run(go(gif))
    with pytest.raises(ConfigError, match=r"missing\.png"):
        run(go(tmp_path / "missing.png"))
    assert server.count("submit") == 0


# -- many jobs at once, random faults -----------------------------------------------------------------


def test_csm_all_concurrently_through_random_transient_faults(image: Path, tmp_path: Path):
    """Six configurations in flight at once; ~10 % of requests of every kind fail transiently; all complete."""
    faults = [
        Fault(kind, on, probability=0.03, retry_after=0.01)
        for on in ("submit", "poll", "download")
        for kind in ("429", "503", "drop")
    ] + [Fault("truncate", "download", probability=0.05), Fault("503", "poll", count=2)]
    # More retries than the default so that a run of random faults on one request cannot fail the test.
    policy = RemotePolicy(**{**POLICY.__dict__, "retries": 8})
    with make_server(faults=faults, latency_s=(0.0, 0.02), seed=7) as s:

        async def go() -> list[tuple[PollResult, list[Path]]]:
            async with client_for(s, policy) as c:
                first = await c.submit("image_to_3d", image, TURBO)
                return await asyncio.gather(
                    *(
                        c.run_job(cfg["job_type"], image, cfg, tmp_path / name, asset_id=first["asset_id"])
                        for name, cfg in CSM_CONFIGS.items()
                    )
                )

        results = run(go())
    assert [r.status for r, _ in results] == ["done"] * 6
    assert all(load_mesh(paths[0]).n_faces > 0 for _, paths in results)
    assert s.data_uploads == 1
    # One accepted submission per job (+1 for the first submit, +1 for the chat's second step).
    assert len(s.submissions) == 6 + 2
    assert sum(s.faults_applied(k) for k in ("429", "503", "drop", "truncate")) >= 2


def test_real_jpeg_goes_as_a_jpeg_data_url(shared_data: Path, tmp_path: Path):
    photo = sorted((shared_data / "byo_images").glob("*.jpg"))[0]
    with make_server() as s:
        result, paths = run(job(s, photo, tmp_path))
    assert result.status == "done" and paths
    assert s.submissions[0]["input"]["image"].startswith("data:image/jpeg;base64,")


# -- the stand-in itself validates as the real API would ----------------------------------------------


def test_stand_in_rejects_bad_requests(server: FakeCsm):
    key = {"x-api-key": server.config.api_key}
    url = f"{server.base_url}/sessions/"
    good = {"type": "image_to_3d", "input": {"image": "data:image/png;base64,iVBORw0K", "model": "sculpt"}}
    assert httpx.post(url, json=good).status_code == 401
    assert httpx.post(url, json=good, headers={"x-api-key": "nope"}).status_code == 401
    assert httpx.post(url, content=b"{not json", headers=key).status_code == 400
    bad = [
        {"type": "text_to_3d"},
        {"type": "image_to_3d"},
        {"type": "image_to_3d", "input": {"image": "http://example.com/a.png"}},
        {"type": "image_to_3d", "input": {"image": "data:image/png;base64,@@@"}},
        {"type": "image_to_3d", "input": {**good["input"], "settings": {"resolution": 10}}},
        {"type": "image_to_3d", "input": {**good["input"], "settings": {"texture_model": "gold"}}},
        {"type": "image_to_kit", "input": {**good["input"], "settings": {"resolution": 200_000}}},
        {"type": "chat_to_3d", "messages": []},
        {"type": "chat_to_3d", "messages": [{"type": "user_prompt", "message": "x", "images": []}]},
    ]
    for body in bad:
        r = httpx.post(url, json=body, headers=key)
        assert r.status_code == 422 and r.json()["message"], body
    assert httpx.get(f"{server.base_url}/sessions/SESSION_NOPE", headers=key).status_code == 404
    assert not server.sessions and server.data_uploads == 0
    r = httpx.post(url, json=good, headers=key)
    assert r.status_code == 200 and r.json()["status"] == "incomplete"
    assert r.json()["input"]["image"]["_id"].startswith("ASSET_")
    assert r.json()["_id"].startswith("SESSION_")
